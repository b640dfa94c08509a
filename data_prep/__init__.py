"""Offline data preparation: manifests, features, shards, tokenizer training."""
