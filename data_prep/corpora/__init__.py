"""Corpus adapters: each turns a corpus release into a manifest JSONL (see common.py).

- iemocap: IEMOCAP release layout, 4 classes, 5 sessions x 2 speakers.
- msp_improv: MSP-IMPROV evaluation file, 4 classes, 6 sessions x 2 speakers.
- generic: any CSV/JSONL listing, columns mapped by flags.
- demo: the synthetic demo corpus the project generates itself.
"""
