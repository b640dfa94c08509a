"""wav2vec 2.0 / HuBERT encoders in Flax NNX from Hugging Face checkpoints (no torch), and the paper's acoustic frames.

The paper's acoustic features (spec section 2) are wav2vec 2.0 base last hidden states
(768-d, 50 Hz) of 16 kHz mono audio cut to 10 s, mean-pooled over groups of 3 frames
(60 ms), the first 64 kept. `Wav2Vec2Features` computes them from any Hugging Face
Wav2Vec2Model / HubertModel folder (or one of their task models: ForPreTraining, ForCTC).

The model is transformers' Wav2Vec2Model / HubertModel in inference mode:

- Feature encoder: 1-D convolutions (`conv_dim`, `conv_kernel`, `conv_stride`, `conv_bias`),
  each followed by `feat_extract_activation`; `feat_extract_norm` 'group' puts a GroupNorm
  with one group per channel (each channel normalised over time) after the first only (base
  models), 'layer' a LayerNorm over channels after every one (large / lv60).
- Feature projection: LayerNorm (HuBERT: only if `feat_proj_layer_norm`) and a Linear.
- Positional convolution: a grouped Conv1d of `num_conv_pos_embeddings` taps padded by half
  of that on both sides (the extra last frame of an even kernel dropped), then the activation,
  added to its input. Its weight is weight-normalised over dim 2 (w = g v / |v|, the norm over
  output and input channels per tap), folded into one kernel on loading. HuBERT's
  `conv_pos_batch_norm` variant has a BatchNorm (running statistics) before a plain conv.
- Transformer: `do_stable_layer_norm` False (base): LayerNorm after adding the positional
  convolution, then post-LN layers; True (large-lv60): pre-LN layers and a final LayerNorm.
  `hidden_act` 'gelu' is the exact (erf) GELU.

Padding. `model(values, lengths)` takes per-row sample counts; the frame count of each row
follows from the convolution output-length formula, and, as transformers does with an
attention mask, padded frames are zeroed before the positional convolution and never
attended to. Two things go beyond transformers so that a padded row gives exactly what it
gives alone: the 'group' norm takes its statistics over the row's valid frames (transformers
counts the padding in, which is why it tells users not to batch these models with a mask),
and the padded frames are zeroed again after HuBERT's positional BatchNorm (BN(0) is not 0).
Without `lengths` every sample is valid, as transformers without a mask.

Hidden states: `hidden_states[0]` is the input of the first transformer layer (the feature
projection plus the positional convolution, then, base layout, the encoder LayerNorm),
`hidden_states[i]` the output of layer i. In the stable layout the last one has the final
LayerNorm applied, so `hidden_states[-1]` is `last_hidden_state` in both layouts (as in
transformers 4.x; transformers 5 returns it before the final LayerNorm there).

Checkpoint names -> parameters here (torch [out, in, taps] convolutions become [taps, in, out]
kernels, Linear [out, in] weights [in, out] kernels, LayerNorm weight -> scale):

  feature_extractor.conv_layers.{i}.conv.{weight,bias}        feature_encoder/layers/{i}/conv/{kernel,bias}
  feature_extractor.conv_layers.{i}.layer_norm.{weight,bias}  feature_encoder/layers/{i}/norm/{scale,bias}
  feature_projection.layer_norm.{weight,bias}                 feature_projection/norm/{scale,bias}
  feature_projection.projection.{weight,bias}                 feature_projection/dense/{kernel,bias}
  encoder.pos_conv_embed.conv.{weight_g,weight_v}             pos_conv/conv/kernel (folded)
    (or .parametrizations.weight.original0 / original1, the newer names; .weight with the BatchNorm)
  encoder.pos_conv_embed.conv.bias                            pos_conv/conv/bias
  encoder.pos_conv_embed.batch_norm.{weight,bias,running_mean,running_var}
                                                              pos_conv/batch_norm/{scale,bias,mean,var}
  encoder.layer_norm.{weight,bias}                            encoder_norm/{scale,bias}
  encoder.layers.{i}.attention.{q,k,v}_proj.{weight,bias}     layers/{i}/attention/qkv/{kernel,bias}
                                                              (fused: [hidden, 3, heads, head_dim])
  encoder.layers.{i}.attention.out_proj.{weight,bias}         layers/{i}/attention/out/{kernel,bias}
  encoder.layers.{i}.layer_norm.{weight,bias}                 layers/{i}/attention_norm/{scale,bias}
  encoder.layers.{i}.feed_forward.intermediate_dense.*        layers/{i}/intermediate/{kernel,bias}
  encoder.layers.{i}.feed_forward.output_dense.*              layers/{i}/output/{kernel,bias}
  encoder.layers.{i}.final_layer_norm.{weight,bias}           layers/{i}/feed_forward_norm/{scale,bias}

Keys may carry the task models' `wav2vec2.` / `hubert.` prefix. The heads that play no part
in the features are skipped: lm_head, quantizer, project_q, project_hid, masked_spec_embed
(and the BatchNorm's num_batches_tracked counter). Any other unknown key, a missing one or a
wrong shape is an error naming them. model.safetensors is read with safetensors.numpy,
pytorch_model.bin by the torch-free reader of memobert_jax/hf_import.py.
"""

import dataclasses
import functools
import json
import math
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memobert_jax.data import schema
from memobert_jax import hf_import
from memobert_jax.init_checkpoint import listing
from memobert_jax.model.layers import Dense, LayerNorm, constant_param, gelu, normal_param

PREPROCESSOR_FILE = 'preprocessor_config.json'
MODEL_TYPES = ('wav2vec2', 'hubert')
ACTIVATIONS = {
    'gelu': gelu,
    'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
}
# torch's GroupNorm / LayerNorm / BatchNorm1d default, which the conv-layer and positional norms keep.
TORCH_NORM_EPS = 1e-5
# Wav2Vec2FeatureExtractor's zero-mean unit-variance normalisation.
NORMALIZE_EPS = 1e-7
F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)


# --- Config ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """What the encoder's shape depends on; field names as in transformers' config.json."""
  model_type: str = 'wav2vec2'
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  layer_norm_eps: float = 1e-5
  feat_extract_norm: str = 'group'
  feat_extract_activation: str = 'gelu'
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  do_stable_layer_norm: bool = False
  feat_proj_layer_norm: bool = True
  conv_pos_batch_norm: bool = False

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f'model_type {self.model_type!r} is not one of {MODEL_TYPES}')
    if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0:
      raise ValueError(f'conv_dim {self.conv_dim}, conv_kernel {self.conv_kernel} and conv_stride '
                       f'{self.conv_stride} must have one (and the same number of) entries per layer')
    if self.feat_extract_norm not in ('group', 'layer'):
      raise ValueError(f"feat_extract_norm {self.feat_extract_norm!r} is not 'group' or 'layer'")
    for key in ('hidden_act', 'feat_extract_activation'):
      if getattr(self, key) not in ACTIVATIONS:
        raise ValueError(f'{key} {getattr(self, key)!r} is not supported (one of {sorted(ACTIVATIONS)})')
    if self.hidden_size % self.num_attention_heads or self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_attention_heads '
                       f'{self.num_attention_heads} and num_conv_pos_embedding_groups '
                       f'{self.num_conv_pos_embedding_groups}')

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> 'Wav2Vec2Config':
    """From a config.json; absent keys take transformers' defaults, as transformers itself would."""
    model_type = hf.get('model_type')
    if model_type not in MODEL_TYPES:
      raise ValueError(f'model_type {model_type!r} is not supported: only {MODEL_TYPES} (Wav2Vec2Model, '
                       'HubertModel and their task models)')
    if hf.get('add_adapter') or hf.get('adapter_attn_dim') is not None:
      raise ValueError('checkpoints with adapters (add_adapter, adapter_attn_dim) are not supported')
    fields = {f.name: hf[f.name] for f in dataclasses.fields(cls) if f.name in hf}
    if model_type == 'wav2vec2':
      # Wav2Vec2Model always normalises the projection input and never has the positional BatchNorm.
      fields.update(feat_proj_layer_norm=True, conv_pos_batch_norm=False)
    for key in ('conv_dim', 'conv_kernel', 'conv_stride'):
      if key in fields:
        fields[key] = tuple(int(v) for v in fields[key])
    return cls(**fields)

  def frame_lengths(self, samples):
    """Frames the feature encoder makes of `samples` (an int or an integer array): (n - kernel) // stride + 1 per
    layer. Fewer samples than `min_samples` give zero or less."""
    for kernel, stride in zip(self.conv_kernel, self.conv_stride):
      samples = (samples - kernel) // stride + 1
    return samples

  @property
  def min_samples(self) -> int:
    """The fewest samples that give one frame (the receptive field: 400 for base)."""
    need = 1
    for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
      need = (need - 1) * stride + kernel
    return need

  @property
  def samples_per_frame(self) -> int:
    return math.prod(self.conv_stride)


# --- Modules -----------------------------------------------------------------------------------------------------

def _unsharded(n: int) -> tuple[None, ...]:
  # A frozen feature extractor runs replicated: no logical axis names to resolve.
  return (None,) * n


def _lengths_mask(lengths: jax.Array | None, size: int) -> jax.Array | None:
  return None if lengths is None else jnp.arange(size)[None, :] < lengths[:, None]


class Conv1d(nnx.Module):
  """A 1-D convolution over [batch, time, channels]; kernel [taps, in / groups, out]."""

  def __init__(self, in_size: int, out_size: int, taps: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
               use_bias: bool, rngs: nnx.Rngs):
    fan_in = in_size // groups * taps
    self.kernel = normal_param(rngs, (taps, in_size // groups, out_size), _unsharded(3), math.sqrt(2 / fan_in),
                               jnp.float32)
    self.bias = constant_param(0.0, (out_size,), _unsharded(1), jnp.float32) if use_bias else None
    self.stride, self.padding, self.groups = stride, padding, groups

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    if self.groups == 1 and self.padding == 0:
      # The feature encoder's strided convolutions as one matmul over [taps x in] patches: 1.4x faster than
      # XLA's CPU convolution for base's 512 -> 512 layers (measured); the grouped positional one is not.
      taps, frames = kernel.shape[0], (x.shape[1] - kernel.shape[0]) // self.stride + 1
      patches = jnp.stack([x[:, j:j + self.stride * (frames - 1) + 1:self.stride] for j in range(taps)], axis=2)
      y = jnp.einsum('btkc,kco->bto', patches, kernel)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride,), [(self.padding, self.padding)],
                                       dimension_numbers=('NWC', 'WIO', 'NWC'), feature_group_count=self.groups)
    return y if self.bias is None else y + self.bias[...]


class ChannelNorm(nnx.Module):
  """GroupNorm with one group per channel: each channel of each row normalised over its valid frames."""

  def __init__(self, size: int):
    self.scale = constant_param(1.0, (size,), _unsharded(1), jnp.float32)
    self.bias = constant_param(0.0, (size,), _unsharded(1), jnp.float32)

  def __call__(self, x: jax.Array, valid: jax.Array | None) -> jax.Array:
    weight = jnp.ones(x.shape[:2] + (1,), x.dtype) if valid is None else valid[..., None].astype(x.dtype)
    count = jnp.maximum(weight.sum(1, keepdims=True), 1.0)
    mean = (x * weight).sum(1, keepdims=True) / count
    var = (jnp.square(x - mean) * weight).sum(1, keepdims=True) / count
    return (x - mean) * jax.lax.rsqrt(var + TORCH_NORM_EPS) * self.scale[...] + self.bias[...]


class BatchNorm(nnx.Module):
  """BatchNorm1d in inference form: running statistics."""

  def __init__(self, size: int):
    self.scale = constant_param(1.0, (size,), _unsharded(1), jnp.float32)
    self.bias = constant_param(0.0, (size,), _unsharded(1), jnp.float32)
    self.mean = nnx.BatchStat(jnp.zeros((size,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((size,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return (x - self.mean[...]) * jax.lax.rsqrt(self.var[...] + TORCH_NORM_EPS) * self.scale[...] + self.bias[...]


class FeatureConvLayer(nnx.Module):

  def __init__(self, cfg: Wav2Vec2Config, index: int, *, rngs: nnx.Rngs):
    in_size = cfg.conv_dim[index - 1] if index else 1
    size = cfg.conv_dim[index]
    self.conv = Conv1d(in_size, size, cfg.conv_kernel[index], stride=cfg.conv_stride[index], use_bias=cfg.conv_bias,
                       rngs=rngs)
    if cfg.feat_extract_norm == 'layer':
      self.norm = LayerNorm(size, eps=TORCH_NORM_EPS, **F32)
    else:
      self.norm = ChannelNorm(size) if index == 0 else None
    self.activation = cfg.feat_extract_activation

  def __call__(self, x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    x = self.conv(x)
    if isinstance(self.norm, ChannelNorm):
      x = self.norm(x, _lengths_mask(lengths, x.shape[1]))
    elif self.norm is not None:
      x = self.norm(x)
    return ACTIVATIONS[self.activation](x)


class FeatureEncoder(nnx.Module):

  def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
    self.layers = nnx.List([FeatureConvLayer(cfg, i, rngs=rngs) for i in range(len(cfg.conv_dim))])
    self.geometry = tuple(zip(cfg.conv_kernel, cfg.conv_stride))

  def __call__(self, values: jax.Array, lengths: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """[batch, samples] -> ([batch, frames, conv_dim[-1]], valid frames per row or None)."""
    x = values.astype(jnp.float32)[..., None]
    for layer, (kernel, stride) in zip(self.layers, self.geometry):
      lengths = None if lengths is None else (lengths - kernel) // stride + 1
      x = layer(x, lengths)
    return x, lengths


class FeatureProjection(nnx.Module):

  def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
    size = cfg.conv_dim[-1]
    self.norm = LayerNorm(size, eps=cfg.layer_norm_eps, **F32) if cfg.feat_proj_layer_norm else None
    self.dense = Dense(size, cfg.hidden_size, _unsharded(2), init_std=0.02, rngs=rngs, **F32)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dense(x if self.norm is None else self.norm(x))


class PositionalConv(nnx.Module):

  def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
    taps = cfg.num_conv_pos_embeddings
    self.batch_norm = BatchNorm(cfg.hidden_size) if cfg.conv_pos_batch_norm else None
    self.conv = Conv1d(cfg.hidden_size, cfg.hidden_size, taps, padding=taps // 2,
                       groups=cfg.num_conv_pos_embedding_groups, use_bias=True, rngs=rngs)
    self.drop_last = taps % 2 == 0
    self.activation = cfg.feat_extract_activation

  def __call__(self, x: jax.Array, valid: jax.Array | None) -> jax.Array:
    if self.batch_norm is not None:
      x = self.batch_norm(x)
      if valid is not None:
        x = jnp.where(valid[..., None], x, 0.0)
    y = self.conv(x)
    # Padding taps // 2 on both sides gives one frame too many when taps is even.
    return ACTIVATIONS[self.activation](y[:, :-1] if self.drop_last else y)


class Attention(nnx.Module):

  def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    # One fused projection for query, key and value, as in model/encoder.py.
    self.qkv = Dense(cfg.hidden_size, (3, heads, head_dim), _unsharded(4), init_std=0.02, rngs=rngs, **F32)
    self.out = Dense((heads, head_dim), cfg.hidden_size, _unsharded(3), init_std=0.02, rngs=rngs, **F32)

  def __call__(self, x: jax.Array, valid: jax.Array | None) -> jax.Array:
    q, k, v = (t[:, :, 0] for t in jnp.split(self.qkv(x), 3, axis=2))
    logits = jnp.einsum('bqnd,bknd->bnqk', q, k) * q.shape[-1] ** -0.5
    if valid is not None:
      logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    return self.out(jnp.einsum('bnqk,bknd->bqnd', jax.nn.softmax(logits, axis=-1), v))


class EncoderLayer(nnx.Module):
  """Post-LN (base) or pre-LN (stable, large-lv60) attention and feed-forward blocks."""

  def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
    h, inner = cfg.hidden_size, cfg.intermediate_size
    self.attention = Attention(cfg, rngs=rngs)
    self.attention_norm = LayerNorm(h, eps=cfg.layer_norm_eps, **F32)
    self.intermediate = Dense(h, inner, _unsharded(2), init_std=0.02, rngs=rngs, **F32)
    self.output = Dense(inner, h, _unsharded(2), init_std=0.02, rngs=rngs, **F32)
    self.feed_forward_norm = LayerNorm(h, eps=cfg.layer_norm_eps, **F32)
    self.stable = cfg.do_stable_layer_norm
    self.activation = cfg.hidden_act

  def _feed_forward(self, x: jax.Array) -> jax.Array:
    return self.output(ACTIVATIONS[self.activation](self.intermediate(x)))

  def __call__(self, x: jax.Array, valid: jax.Array | None) -> jax.Array:
    if self.stable:
      x = x + self.attention(self.attention_norm(x), valid)
      return x + self._feed_forward(self.feed_forward_norm(x))
    x = self.attention_norm(x + self.attention(x, valid))
    return self.feed_forward_norm(x + self._feed_forward(x))


class Wav2Vec2Output(NamedTuple):
  hidden_states: tuple[jax.Array, ...]  # num_hidden_layers + 1 of [batch, frames, hidden] (see the module doc)
  frame_lengths: jax.Array  # [batch] valid frames per row

  @property
  def last_hidden_state(self) -> jax.Array:
    return self.hidden_states[-1]


class Wav2Vec2Model(nnx.Module):
  """transformers' Wav2Vec2Model / HubertModel in inference mode; float32 throughout."""

  def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
    self.feature_encoder = FeatureEncoder(cfg, rngs=rngs)
    self.feature_projection = FeatureProjection(cfg, rngs=rngs)
    self.pos_conv = PositionalConv(cfg, rngs=rngs)
    self.encoder_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **F32)
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.cfg = cfg

  def __call__(self, input_values: jax.Array, lengths: jax.Array | None = None) -> Wav2Vec2Output:
    """input_values: [batch, samples] float; lengths: [batch] valid samples per row, right-padded (transformers'
    attention_mask.sum(-1); None: all valid)."""
    x, lengths = self.feature_encoder(input_values, lengths)
    valid = _lengths_mask(lengths, x.shape[1])
    x = self.feature_projection(x)
    if valid is not None:
      x = jnp.where(valid[..., None], x, 0.0)
    x = x + self.pos_conv(x, valid)
    if not self.cfg.do_stable_layer_norm:
      x = self.encoder_norm(x)
    states = [x]
    for layer in self.layers:
      states.append(layer(states[-1], valid))
    if self.cfg.do_stable_layer_norm:
      states[-1] = self.encoder_norm(states[-1])
    frame_lengths = jnp.full(x.shape[:1], x.shape[1], jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    return Wav2Vec2Output(tuple(states), frame_lengths)


# --- Loading -----------------------------------------------------------------------------------------------------

_IGNORED = re.compile(r'(lm_head|quantizer|project_q|project_hid)\..+|masked_spec_embed'
                      r'|encoder\.pos_conv_embed\.batch_norm\.num_batches_tracked')
_WEIGHT_NORM_NAMES = {'parametrizations.weight.original0': 'weight_g', 'parametrizations.weight.original1': 'weight_v'}


def checkpoint_shapes(cfg: Wav2Vec2Config) -> dict[str, tuple[int, ...]]:
  """Every checkpoint name (prefix stripped, weight_g / weight_v names) the model needs, with its torch shape."""
  h, inner = cfg.hidden_size, cfg.intermediate_size
  shapes = {}
  for i, (size, taps) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel)):
    layer = f'feature_extractor.conv_layers.{i}.'
    shapes[f'{layer}conv.weight'] = (size, cfg.conv_dim[i - 1] if i else 1, taps)
    if cfg.conv_bias:
      shapes[f'{layer}conv.bias'] = (size,)
    if cfg.feat_extract_norm == 'layer' or i == 0:
      shapes[f'{layer}layer_norm.weight'] = shapes[f'{layer}layer_norm.bias'] = (size,)
  if cfg.feat_proj_layer_norm:
    shapes['feature_projection.layer_norm.weight'] = shapes['feature_projection.layer_norm.bias'] = (cfg.conv_dim[-1],)
  shapes['feature_projection.projection.weight'] = (h, cfg.conv_dim[-1])
  shapes['feature_projection.projection.bias'] = (h,)
  pos, taps = 'encoder.pos_conv_embed.', cfg.num_conv_pos_embeddings
  kernel_shape = (h, h // cfg.num_conv_pos_embedding_groups, taps)
  if cfg.conv_pos_batch_norm:
    shapes[f'{pos}conv.weight'] = kernel_shape
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{pos}batch_norm.{name}'] = (h,)
  else:
    shapes[f'{pos}conv.weight_g'], shapes[f'{pos}conv.weight_v'] = (1, 1, taps), kernel_shape
  shapes[f'{pos}conv.bias'] = (h,)
  shapes['encoder.layer_norm.weight'] = shapes['encoder.layer_norm.bias'] = (h,)
  for i in range(cfg.num_hidden_layers):
    layer = f'encoder.layers.{i}.'
    for name, (out_size, in_size) in {'attention.q_proj': (h, h), 'attention.k_proj': (h, h),
                                      'attention.v_proj': (h, h), 'attention.out_proj': (h, h),
                                      'feed_forward.intermediate_dense': (inner, h),
                                      'feed_forward.output_dense': (h, inner)}.items():
      shapes[f'{layer}{name}.weight'], shapes[f'{layer}{name}.bias'] = (out_size, in_size), (out_size,)
    for name in ('layer_norm', 'final_layer_norm'):
      shapes[f'{layer}{name}.weight'] = shapes[f'{layer}{name}.bias'] = (h,)
  return shapes


def _normalise(tensors: Mapping[str, np.ndarray], cfg: Wav2Vec2Config) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Strips the task-model prefix, drops the skipped heads, renames the parametrization weight-norm names.

  Returns (named tensors, normalised name -> checkpoint key).
  """
  prefix = f'{cfg.model_type}.'
  named, keys = {}, {}
  for key, value in tensors.items():
    name = key[len(prefix):] if key.startswith(prefix) else key
    for new, old in _WEIGHT_NORM_NAMES.items():
      name = name.replace(new, old)
    if _IGNORED.fullmatch(name):
      continue
    if name in named:
      raise ValueError(f'the checkpoint holds {name} twice ({keys[name]} and {key})')
    named[name], keys[name] = value, key
  return named, keys


def convert_state_dict(tensors: Mapping[str, np.ndarray], cfg: Wav2Vec2Config) -> dict[str, np.ndarray]:
  """Maps a Wav2Vec2Model / HubertModel state dict onto this module's parameter paths ('a/b/0/c' -> float32)."""
  named, keys = _normalise(tensors, cfg)
  expected = checkpoint_shapes(cfg)
  unknown = sorted(keys[name] for name in set(named) - set(expected))
  if unknown:
    raise ValueError(f'the checkpoint has keys a {cfg.model_type} encoder with this config.json does not: '
                     f'{listing(unknown)}')
  missing = sorted(set(expected) - set(named))
  if missing:
    raise ValueError(f'the checkpoint lacks the keys {listing(missing)} (named without the {cfg.model_type}. '
                     'prefix; weight_g / weight_v also as parametrizations.weight.original0 / original1)')
  wrong = [f'{keys[k]} {tuple(named[k].shape)} (expected {s})' for k, s in expected.items()
           if tuple(named[k].shape) != s]
  if wrong:
    raise ValueError(f'checkpoint shapes disagree with its config.json: {listing(wrong)}')
  t = {k: np.asarray(v, np.float32) for k, v in named.items()}
  heads = cfg.num_attention_heads
  head_dim = cfg.hidden_size // heads
  params = {}

  def dense(ours: str, theirs: str, in_shape: tuple[int, ...] = ()) -> None:
    kernel = t[f'{theirs}.weight'].T
    params[f'{ours}/kernel'] = kernel.reshape(in_shape + kernel.shape[1:]) if in_shape else kernel
    params[f'{ours}/bias'] = t[f'{theirs}.bias']

  def norm(ours: str, theirs: str) -> None:
    params[f'{ours}/scale'], params[f'{ours}/bias'] = t[f'{theirs}.weight'], t[f'{theirs}.bias']

  for i in range(len(cfg.conv_dim)):
    ours, theirs = f'feature_encoder/layers/{i}', f'feature_extractor.conv_layers.{i}'
    params[f'{ours}/conv/kernel'] = t[f'{theirs}.conv.weight'].transpose(2, 1, 0)
    if cfg.conv_bias:
      params[f'{ours}/conv/bias'] = t[f'{theirs}.conv.bias']
    if f'{theirs}.layer_norm.weight' in t:
      norm(f'{ours}/norm', f'{theirs}.layer_norm')
  if cfg.feat_proj_layer_norm:
    norm('feature_projection/norm', 'feature_projection.layer_norm')
  dense('feature_projection/dense', 'feature_projection.projection')
  pos = 'encoder.pos_conv_embed.'
  if cfg.conv_pos_batch_norm:
    kernel = t[f'{pos}conv.weight']
    norm('pos_conv/batch_norm', f'{pos}batch_norm')
    params['pos_conv/batch_norm/mean'] = t[f'{pos}batch_norm.running_mean']
    params['pos_conv/batch_norm/var'] = t[f'{pos}batch_norm.running_var']
  else:
    # Weight norm over dim 2: one norm per tap, over all output and input channels.
    v = named[f'{pos}conv.weight_v'].astype(np.float64)
    g = named[f'{pos}conv.weight_g'].astype(np.float64)
    kernel = (g * v / np.sqrt(np.square(v).sum(axis=(0, 1), keepdims=True))).astype(np.float32)
  params['pos_conv/conv/kernel'] = kernel.transpose(2, 1, 0)
  params['pos_conv/conv/bias'] = t[f'{pos}conv.bias']
  norm('encoder_norm', 'encoder.layer_norm')
  for i in range(cfg.num_hidden_layers):
    ours, theirs = f'layers/{i}', f'encoder.layers.{i}'
    params[f'{ours}/attention/qkv/kernel'], params[f'{ours}/attention/qkv/bias'] = hf_import.fused_qkv(
        t, [f'{theirs}.attention.{n}_proj' for n in 'qkv'], heads, head_dim)
    dense(f'{ours}/attention/out', f'{theirs}.attention.out_proj', in_shape=(heads, head_dim))
    norm(f'{ours}/attention_norm', f'{theirs}.layer_norm')
    dense(f'{ours}/intermediate', f'{theirs}.feed_forward.intermediate_dense')
    dense(f'{ours}/output', f'{theirs}.feed_forward.output_dense')
    norm(f'{ours}/feed_forward_norm', f'{theirs}.final_layer_norm')
  return {k: np.ascontiguousarray(v) for k, v in params.items()}


def read_config(folder: str | pathlib.Path) -> Wav2Vec2Config:
  folder = pathlib.Path(folder)
  if not (folder / 'config.json').is_file():
    raise FileNotFoundError(f'{folder} has no config.json: not a Hugging Face model folder')
  return Wav2Vec2Config.from_hf(json.loads((folder / 'config.json').read_text()))


def build(cfg: Wav2Vec2Config, params: Mapping[str, np.ndarray]) -> Wav2Vec2Model:
  """The module with `params` (convert_state_dict's output) as its variables, never randomly initialised."""
  return with_params(lambda: Wav2Vec2Model(cfg, rngs=nnx.Rngs(0)), params)


def with_params(make_module: Callable[[], nnx.Module], params: Mapping[str, np.ndarray]) -> nnx.Module:
  """The module `make_module` builds, with `params` ('a/b/0/c' paths) as its variables: built abstractly, so
  nothing is randomly initialised; a missing, extra or misshapen parameter is an error naming it."""
  graphdef, abstract = nnx.split(nnx.eval_shape(make_module))
  flat = [('/'.join(map(str, path)), path, var) for path, var in nnx.to_flat_state(abstract)]
  names = {name for name, _, _ in flat}
  if names != set(params):
    raise ValueError(f'parameters do not match the module: missing {listing(sorted(names - set(params)))}; '
                     f'unexpected {listing(sorted(set(params) - names))}')
  for name, _, var in flat:
    if tuple(var.shape) != params[name].shape:
      raise ValueError(f'{name} has shape {params[name].shape}, the module {tuple(var.shape)}')
  state = nnx.from_flat_state([(path, var.replace(jnp.asarray(params[name]))) for name, path, var in flat])
  return nnx.merge(graphdef, state)


def load_checkpoint(folder: str | pathlib.Path, weights_file: str | None = None
                    ) -> tuple[Wav2Vec2Model, Wav2Vec2Config]:
  """(module, config) of a Hugging Face wav2vec 2.0 / HuBERT folder: config.json and model.safetensors or
  pytorch_model.bin (or `weights_file`)."""
  cfg = read_config(folder)
  tensors = hf_import.read_weights(hf_import.weights_path(folder, weights_file))
  return build(cfg, convert_state_dict(tensors, cfg)), cfg


# --- The extractor -----------------------------------------------------------------------------------------------

def pool_frames(frames: np.ndarray, pool: int) -> np.ndarray:
  """Means over consecutive groups of `pool` frames; a shorter last group is the mean of the frames it has.

  Keeping the partial group keeps the utterance's last up-to-(pool - 1) frames and gives ceil(T / pool)
  frames, as the built-in librosa extractor (data_prep/acoustic_features.py) does.
  """
  num_groups = -(-len(frames) // pool)
  padded = np.zeros((num_groups * pool,) + frames.shape[1:], np.float32)
  padded[:len(frames)] = frames
  counts = np.minimum(pool, len(frames) - np.arange(num_groups) * pool)
  return (padded.reshape(num_groups, pool, *frames.shape[1:]).sum(axis=1) / counts[:, None]).astype(np.float32)


def check_extractor_options(num_states: int, layer: int, pool: int, batch_size: int, max_frames: int | None) -> None:
  if not -num_states <= layer < num_states:
    raise ValueError(f'layer {layer} is out of range: the model has hidden states 0..{num_states - 1} '
                     '(negative counts from the last)')
  if pool < 1 or batch_size < 1 or (max_frames is not None and max_frames < 1):
    raise ValueError(f'pool {pool}, batch_size {batch_size} and max_frames {max_frames} must be positive')


def checked_waveform(waveform: np.ndarray, index: int, max_samples: int | None) -> np.ndarray:
  """A waveform as float32 cut to `max_samples`; not mono, not float, empty or non-finite is an error naming
  its index."""
  wave = np.asarray(waveform)
  if wave.ndim != 1:
    raise ValueError(f'waveform {index} has shape {wave.shape}: mono audio is 1-D (average the channels)')
  if not np.issubdtype(wave.dtype, np.floating):
    raise ValueError(f'waveform {index} is {wave.dtype}: pass float samples (e.g. int16 PCM / 32768)')
  wave = wave[:max_samples].astype(np.float32)
  if not len(wave):
    raise ValueError(f'waveform {index} is empty')
  if not np.isfinite(wave).all():
    raise ValueError(f'waveform {index} has non-finite samples')
  return wave


class Wav2Vec2Features:
  """Acoustic frames from a Hugging Face wav2vec 2.0 / HuBERT folder (the paper: base, last layer, 3, 64, 10 s).

  Each waveform must be float mono audio at the checkpoint's sampling rate (16 kHz for every public
  wav2vec 2.0 / HuBERT model; preprocessor_config.json's `sampling_rate`): an array carries no rate, so
  resampling is the caller's job (memobert_jax/features/media.py `read_audio` decodes at a given rate).
  Per waveform: cut to `max_seconds`; normalised to zero mean and unit variance when the checkpoint's
  preprocessor_config.json says `do_normalize` (as Wav2Vec2FeatureExtractor does, over the cut audio);
  encoded; hidden state `layer` taken (hidden_states indexing of Wav2Vec2Model above: 0 the input of the
  first transformer layer, -1 = num_hidden_layers the last hidden state); mean-pooled over groups of
  `pool` frames (see pool_frames); the first `max_frames` kept (None: all).

  Batches: waveforms are sorted by length, `batch_size` at a time, zero-padded to a multiple of
  `bucket_seconds` (at most max_seconds), so only a few shapes compile; each row's valid length goes to
  the model, whose padding handling (module doc) makes a row's frames those it gives alone, to float
  rounding. Matmuls run at 'highest' precision so the features do not depend on the device.
  """

  def __init__(self, checkpoint_dir: str | pathlib.Path, *, layer: int = -1, pool: int = 3,
               max_frames: int | None = 64, max_seconds: float | None = 10.0, batch_size: int = 8,
               normalize: bool | None = None, bucket_seconds: float = 2.0):
    self.checkpoint_dir = pathlib.Path(checkpoint_dir).resolve()
    model, self.config = load_checkpoint(self.checkpoint_dir)
    self.weights_file = hf_import.weights_path(self.checkpoint_dir)
    check_extractor_options(self.config.num_hidden_layers + 1, layer, pool, batch_size, max_frames)
    if (max_seconds is not None and max_seconds <= 0) or bucket_seconds <= 0:
      raise ValueError(f'max_seconds {max_seconds} and bucket_seconds {bucket_seconds} must be positive')
    preprocessor = self._preprocessor()
    self.sample_rate = int(preprocessor.get('sampling_rate', 16000))
    if normalize is None:
      if 'do_normalize' not in preprocessor:
        raise ValueError(f'{self.checkpoint_dir} has no {PREPROCESSOR_FILE} saying whether the model takes '
                         'normalised audio (do_normalize): pass normalize=True or False')
      normalize = bool(preprocessor['do_normalize'])
    self.layer, self.pool, self.max_frames, self.max_seconds = layer, pool, max_frames, max_seconds
    self.batch_size, self.normalize, self.bucket_seconds = batch_size, normalize, bucket_seconds
    self.max_samples = None if max_seconds is None else round(max_seconds * self.sample_rate)
    self._bucket = max(1, round(bucket_seconds * self.sample_rate))
    self._sha256 = schema.sha256_file(self.weights_file)
    graphdef, self._state = nnx.split(model)
    keep = None if max_frames is None else max_frames * pool

    def forward(state: nnx.State, values: jax.Array, lengths: jax.Array) -> jax.Array:
      # Later layers than `layer` do not reach the output: XLA drops them.
      return nnx.merge(graphdef, state)(values, lengths).hidden_states[layer][:, :keep]

    self._forward = jax.jit(forward)

  def _preprocessor(self) -> dict[str, Any]:
    path = self.checkpoint_dir / PREPROCESSOR_FILE
    if not path.is_file():
      return {}
    preprocessor = json.loads(path.read_text())
    if preprocessor.get('feature_size', 1) != 1:
      raise ValueError(f'{path}: feature_size {preprocessor["feature_size"]}, the model takes raw mono audio (1)')
    return preprocessor

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  @property
  def frame_seconds(self) -> float:
    """The hop of the output frames: pool x the encoder's hop (60 ms for the paper's 3 x 20 ms)."""
    return self.pool * self.config.samples_per_frame / self.sample_rate

  def describe(self) -> dict[str, Any]:
    """What made the features, for metadata (JSON-able)."""
    return dict(extractor='wav2vec2', checkpoint=str(self.checkpoint_dir), model_type=self.config.model_type,
                weights_file=self.weights_file.name, weights_sha256=self._sha256,
                num_hidden_layers=self.config.num_hidden_layers, layer=self.layer, pool=self.pool,
                max_frames=self.max_frames, max_seconds=self.max_seconds, sample_rate=self.sample_rate,
                normalize=self.normalize, dim=self.dim, frame_seconds=self.frame_seconds)

  def prepare(self, waveform: np.ndarray, index: int = 0) -> np.ndarray:
    """One waveform as the model gets it: checked, cut, normalised if the checkpoint wants it (index: for errors)."""
    wave = checked_waveform(waveform, index, self.max_samples)
    if len(wave) < self.config.min_samples:
      raise ValueError(f'waveform {index} has {len(wave)} samples, fewer than the {self.config.min_samples} '
                       f'({self.config.min_samples / self.sample_rate * 1000:.0f} ms) one frame needs')
    if self.normalize:
      wave64 = wave.astype(np.float64)
      wave = ((wave64 - wave64.mean()) / np.sqrt(wave64.var() + NORMALIZE_EPS)).astype(np.float32)
    return wave

  def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[T, dim] float32 frames per waveform, in order (T <= max_frames)."""
    waves = [self.prepare(w, i) for i, w in enumerate(waveforms)]
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    results: list[np.ndarray | None] = [None] * len(waves)
    for start in range(0, len(order), self.batch_size):
      rows = order[start:start + self.batch_size]
      width = -(-len(waves[rows[-1]]) // self._bucket) * self._bucket
      width = width if self.max_samples is None else min(width, self.max_samples)
      # Unused rows are full-length silence: finite everywhere and dropped below.
      values = np.zeros((self.batch_size, width), np.float32)
      lengths = np.full((self.batch_size,), width, np.int32)
      for row, i in enumerate(rows):
        values[row, :len(waves[i])], lengths[row] = waves[i], len(waves[i])
      with jax.default_matmul_precision('highest'):
        hidden = np.asarray(self._forward(self._state, values, lengths))
      for row, i in enumerate(rows):
        pooled = pool_frames(hidden[row, :self.config.frame_lengths(len(waves[i]))], self.pool)
        results[i] = pooled if self.max_frames is None else pooled[:self.max_frames]
    return results
