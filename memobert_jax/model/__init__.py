"""The MEmoBERT model: embeddings, encoder, heads."""

from memobert_jax.model.memobert import Encoded, MEmoBERT

__all__ = ['Encoded', 'MEmoBERT']
