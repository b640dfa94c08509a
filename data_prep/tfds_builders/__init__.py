"""TensorFlow Datasets builders over corpus manifests (docs/DATA.md, "TFDS builders").

One folder per builder, in TFDS's layout (`<name>/<name>_dataset_builder.py`, class `Builder`):

- memobert_manifest: any manifest (`manifest.jsonl` in the manual dir).
- iemocap_memobert: the IEMOCAP release in the manual dir, through data_prep.corpora.iemocap.
- msp_improv_memobert: the MSP-IMPROV release in the manual dir, through data_prep.corpora.msp_improv.

All share base.ManifestBuilder: the shard writer's validation and feature loading.
"""
