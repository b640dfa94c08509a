"""Output heads: pooler, MLM, frame regression / classification, [CLS] classifier."""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax.model.layers import Dense, Embed, LayerNorm, constant_param, gelu


def _dtypes(cfg: ConfigDict) -> dict:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class Pooler(nnx.Module):
  """tanh(W h_CLS + b)."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.dense = Dense(cfg.hidden_size, cfg.hidden_size, ('embed', 'mlp'), init_std=cfg.init_std, rngs=rngs,
                       **_dtypes(cfg))

  def __call__(self, cls_hidden: jax.Array) -> jax.Array:
    return jnp.tanh(self.dense(cls_hidden))


class Transform(nnx.Module):
  """LN(GELU(W h + b)): the shared first stage of the MLM and frame heads."""

  def __init__(self, cfg: ConfigDict, size: int, *, rngs: nnx.Rngs):
    self.dense = Dense(cfg.hidden_size, size, ('embed', 'mlp'), init_std=cfg.init_std, rngs=rngs, **_dtypes(cfg))
    self.norm = LayerNorm(size, eps=cfg.layer_norm_eps, **_dtypes(cfg))

  def __call__(self, h: jax.Array) -> jax.Array:
    return self.norm(gelu(self.dense(h)))


class MLMHead(nnx.Module):
  """BERT's prediction head; the decoder is the word-embedding table (tied), plus a bias."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.transform = Transform(cfg, cfg.hidden_size, rngs=rngs)
    self.bias = constant_param(0.0, (cfg.vocab_size,), ('vocab',), jnp.dtype(cfg.param_dtype))

  def __call__(self, h: jax.Array, word_embeddings: Embed) -> jax.Array:
    logits = word_embeddings.attend(self.transform(h))
    return logits.astype(jnp.float32) + self.bias[...]


class FrameRegressionHead(nnx.Module):
  """g(h) W^T + b with W the modality's input projection (tied), predicting the original frame."""

  def __init__(self, cfg: ConfigDict, feature_dim: int, *, rngs: nnx.Rngs):
    self.transform = Transform(cfg, cfg.hidden_size, rngs=rngs)
    self.bias = constant_param(0.0, (feature_dim,), ('frame_features',), jnp.dtype(cfg.param_dtype))

  def __call__(self, h: jax.Array, input_projection: Dense) -> jax.Array:
    g = self.transform(h)
    kernel = input_projection.kernel[...].astype(g.dtype)  # [feature_dim, hidden]
    return jnp.einsum('...h,fh->...f', g, kernel).astype(jnp.float32) + self.bias[...]


class ClassificationHead(nnx.Module):
  """Linear -> GELU -> LN -> Linear(num_classes): the visual soft-label head and the [CLS] baseline."""

  def __init__(self, cfg: ConfigDict, inner_size: int, num_classes: int, *, rngs: nnx.Rngs):
    self.transform = Transform(cfg, inner_size, rngs=rngs)
    self.out = Dense(inner_size, num_classes, ('mlp', 'classes'), init_std=cfg.init_std, rngs=rngs,
                     **_dtypes(cfg))

  def __call__(self, h: jax.Array) -> jax.Array:
    return self.out(self.transform(h)).astype(jnp.float32)
