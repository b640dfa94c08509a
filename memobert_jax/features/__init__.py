"""Frame features from raw media: media decoding (media.py), faces (face.py), wav2vec 2.0 / HuBERT (wav2vec2.py)."""
