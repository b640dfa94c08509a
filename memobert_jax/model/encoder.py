"""The post-LayerNorm BERT encoder, shared by all modalities."""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax.model.layers import Dense, Dropout, LayerNorm, gelu
from memobert_jax import sharding

HIDDEN_AXES = ('batch', 'length', 'activation_embed')

ATTENTION_IMPLEMENTATIONS = ('xla', 'cudnn')
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    # Keeps matmul outputs, recomputes the cheap elementwise work (softmax, GELU, LayerNorm).
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class SelfAttention(nnx.Module):

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    if cfg.hidden_size % cfg.num_heads:
      raise ValueError(f'hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}')
    if cfg.attention_impl not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f'attention_impl {cfg.attention_impl!r} is not one of {ATTENTION_IMPLEMENTATIONS}')
    head_dim = cfg.hidden_size // cfg.num_heads
    dense = dict(init_std=cfg.init_std, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                 rngs=rngs)
    # One fused projection for query, key and value: one matmul instead of three.
    self.qkv = Dense(cfg.hidden_size, (3, cfg.num_heads, head_dim), ('embed', 'qkv', 'heads', 'kv'), **dense)
    self.out = Dense((cfg.num_heads, head_dim), cfg.hidden_size, ('heads', 'kv', 'embed'), **dense)
    self.implementation = cfg.attention_impl
    self.dropout = Dropout(cfg.attention_dropout_rate)

  def __call__(self, x: jax.Array, valid: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """x: [B, L, H]; valid: [B, L] bool, False at padding (never attended to)."""
    q, k, v = (t[:, :, 0] for t in jnp.split(self.qkv(x), 3, axis=2))
    if self.implementation == 'xla':
      scale = q.shape[-1] ** -0.5
      logits = jnp.einsum('bqnd,bknd->bnqk', q, k, preferred_element_type=jnp.float32) * scale
      logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(logits, axis=-1)
      probs = self.dropout(probs, deterministic=deterministic, rngs=rngs).astype(v.dtype)
      context = jnp.einsum('bnqk,bknd->bqnd', probs, v)
    else:
      if not deterministic and self.dropout.rate > 0:
        raise ValueError('attention_impl="cudnn" has no attention dropout: set model.attention_dropout_rate=0')
      context = jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :], implementation='cudnn')
    return self.out(context)


class TransformerLayer(nnx.Module):
  """BERT layer: post-LN attention block, then post-LN feed-forward block."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    dtypes = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.attention_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **dtypes)
    self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, ('embed', 'mlp'), init_std=cfg.init_std,
                              rngs=rngs, **dtypes)
    self.output = Dense(cfg.intermediate_size, cfg.hidden_size, ('mlp', 'embed'), init_std=cfg.init_std,
                        rngs=rngs, **dtypes)
    self.output_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **dtypes)
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(self, x: jax.Array, valid: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    x = self.attention_norm(x + drop(self.attention(x, valid, deterministic=deterministic, rngs=rngs)))
    x = sharding.constrain(x, HIDDEN_AXES)
    return sharding.constrain(self.output_norm(x + drop(self.output(gelu(self.intermediate(x))))), HIDDEN_AXES)


class Encoder(nnx.Module):

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    if cfg.remat not in REMAT_POLICIES:
      raise ValueError(f'remat {cfg.remat!r} is not one of {sorted(REMAT_POLICIES)}')
    self.layers = nnx.List([TransformerLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.remat = cfg.remat

  def __call__(self, x: jax.Array, valid: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    for layer in self.layers:
      if self.remat == 'none':
        x = layer(x, valid, deterministic=deterministic, rngs=rngs)
      else:
        call = nnx.remat(lambda lyr, h, m, r: lyr(h, m, deterministic=deterministic, rngs=r),
                         policy=REMAT_POLICIES[self.remat])
        x = call(layer, x, valid, rngs)
    return x
