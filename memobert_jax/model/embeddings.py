"""Input embeddings of the three modalities (spec section 1)."""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax.model.layers import Dense, Dropout, Embed, LayerNorm, normal_param


def _dtypes(cfg: ConfigDict) -> dict:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class TextEmbeddings(nnx.Module):
  """LN(word[w] + text_pos[t] + type[0]); the tables are BERT's."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    init = dict(init_std=cfg.init_std, rngs=rngs, **_dtypes(cfg))
    self.word = Embed(cfg.vocab_size, cfg.hidden_size, ('vocab', 'embed'), **init)
    self.position = Embed(cfg.max_text_positions, cfg.hidden_size, ('positions', 'embed'), **init)
    # BERT's two segment rows: text uses row 0, the visual frames row 1.
    self.token_type = Embed(2, cfg.hidden_size, ('types', 'embed'), **init)
    self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **_dtypes(cfg))
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(self, ids: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    positions = jnp.arange(ids.shape[1])
    x = self.word(ids) + self.position(positions)[None] + self.token_type(jnp.zeros((), jnp.int32))
    return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)


class FrameEmbeddings(nnx.Module):
  """One modality of per-frame features (visual or acoustic).

  Frames chosen for masking are zeroed and a learned mask vector (in feature
  space) is added; then x = LN_f(W f + b) and e = LN(x + pos[j] + type).
  `W` is exposed so the frame-regression head can tie its output to W^T.
  """

  def __init__(self, cfg: ConfigDict, feature_dim: int, max_positions: int, *, rngs: nnx.Rngs):
    dtypes = _dtypes(cfg)
    self.mask_vector = normal_param(rngs, (feature_dim,), ('frame_features',), cfg.init_std, dtypes['param_dtype'])
    self.projection = Dense(feature_dim, cfg.hidden_size, ('frame_features', 'embed'), init_std=cfg.init_std,
                            rngs=rngs, **dtypes)
    self.projection_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **dtypes)
    self.position = Embed(max_positions, cfg.hidden_size, ('positions', 'embed'), init_std=cfg.init_std,
                          rngs=rngs, **dtypes)
    self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **dtypes)
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(self, frames: jax.Array, masked: jax.Array, type_embedding: jax.Array, *, deterministic: bool,
               rngs: nnx.Rngs | None) -> jax.Array:
    masked = masked[..., None]
    frames = jnp.where(masked, 0.0, frames) + masked * self.mask_vector[...]
    x = self.projection_norm(self.projection(frames))
    positions = jnp.arange(frames.shape[1])
    x = x + self.position(positions)[None] + type_embedding.astype(x.dtype)
    return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)
