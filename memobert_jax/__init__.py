"""MEmoBERT in JAX/Flax NNX: multimodal emotion pretraining and prompt finetuning."""
