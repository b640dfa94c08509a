"""MEmoBERT: one single-stream transformer over [CLS] text [SEP] | visual frames | acoustic frames.

A batch is a dict of arrays (B = batch, Lt/Lv/La = padded lengths):
  text_ids [B, Lt] int32, text_mask [B, Lt] bool
  visual [B, Lv, Dv], visual_mask [B, Lv] bool, visual_masked [B, Lv] bool (optional)
  acoustic [B, La, Da], acoustic_mask [B, La] bool, acoustic_masked [B, La] bool (optional)
`*_mask` marks valid (non-padding) positions; `*_masked` marks frames replaced by the
mask vector. A missing modality (its keys absent, or Lv = 0) is simply not attended to.
A modality of dimension 0 in the config (a corpus without it) has no parameters at all.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax import sharding

from memobert_jax.model.embeddings import FrameEmbeddings, TextEmbeddings
from memobert_jax.model.encoder import HIDDEN_AXES, Encoder
from memobert_jax.model.heads import ClassificationHead, FrameRegressionHead, MLMHead, Pooler
from memobert_jax.model.layers import Dense, normal_param

class Encoded(NamedTuple):
  hidden: jax.Array  # [B, Lt + Lv + La, H]
  valid: jax.Array  # [B, Lt + Lv + La] bool
  text_len: int
  visual_len: int

  @property
  def text(self) -> jax.Array:
    return self.hidden[:, :self.text_len]

  @property
  def visual(self) -> jax.Array:
    return self.hidden[:, self.text_len:self.text_len + self.visual_len]

  @property
  def acoustic(self) -> jax.Array:
    return self.hidden[:, self.text_len + self.visual_len:]


def _frames(batch: dict, name: str, feature_dim: int, batch_size: int, dtype) -> tuple[jax.Array, ...]:
  if name not in batch:
    empty = jnp.zeros((batch_size, 0), bool)
    return jnp.zeros((batch_size, 0, feature_dim), dtype), empty, empty
  frames = batch[name]
  if frames.shape[-1] != feature_dim:
    raise ValueError(f'{name} features have dimension {frames.shape[-1]}, the model expects {feature_dim} '
                     f'(model.{name}_dim)')
  if feature_dim == 0 and frames.shape[1]:
    raise ValueError(f'{frames.shape[1]} {name} frames given to a model without {name} inputs (model.{name}_dim=0)')
  mask = batch[f'{name}_mask']
  return frames, mask, batch.get(f'{name}_masked', jnp.zeros_like(mask))


# The parameters that exist only for a modality (absent from a model whose dimension for it is 0).
MODALITY_MODULES = {
    'visual': ('visual_embeddings/', 'visual_regression_head/', 'visual_classification_head/'),
    'acoustic': ('acoustic_embeddings/', 'acoustic_type', 'acoustic_regression_head/'),
}


def absent_modality_parameters(cfg) -> tuple[str, ...]:
  """Path prefixes of the parameters this config's model lacks (a full checkpoint loads into it without them)."""
  return tuple(p for m, prefixes in MODALITY_MODULES.items() if not cfg[f'{m}_dim'] for p in prefixes)


class MEmoBERT(nnx.Module):

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = jnp.dtype(cfg.dtype)
    self.visual_dim = cfg.visual_dim
    self.acoustic_dim = cfg.acoustic_dim
    # A tuple, not a dict: module attributes that are not arrays must be hashable.
    self.max_lengths = (cfg.max_text_positions, cfg.max_visual_positions, cfg.max_acoustic_positions)
    self.text_embeddings = TextEmbeddings(cfg, rngs=rngs)
    visual, acoustic = cfg.visual_dim > 0, cfg.acoustic_dim > 0
    self.visual_embeddings = (FrameEmbeddings(cfg, cfg.visual_dim, cfg.max_visual_positions, rngs=rngs)
                              if visual else None)
    self.acoustic_embeddings = (FrameEmbeddings(cfg, cfg.acoustic_dim, cfg.max_acoustic_positions, rngs=rngs)
                                if acoustic else None)
    # The acoustic modality gets a new type embedding; the visual one reuses BERT's segment-B row.
    self.acoustic_type = (normal_param(rngs, (cfg.hidden_size,), ('embed',), cfg.init_std, jnp.dtype(cfg.param_dtype))
                          if acoustic else None)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.pooler = Pooler(cfg, rngs=rngs)
    self.mlm_head = MLMHead(cfg, rngs=rngs)
    self.visual_regression_head = FrameRegressionHead(cfg, cfg.visual_dim, rngs=rngs) if visual else None
    self.visual_classification_head = (ClassificationHead(cfg, cfg.hidden_size, cfg.num_visual_classes, rngs=rngs)
                                       if visual else None)
    self.acoustic_regression_head = FrameRegressionHead(cfg, cfg.acoustic_dim, rngs=rngs) if acoustic else None
    self.cls_head = (ClassificationHead(cfg, 2 * cfg.hidden_size, cfg.num_classes, rngs=rngs)
                     if cfg.num_classes else None)
    # Text-to-frames matching (ITM): tried by the authors and dropped; kept for ablations.
    self.itm_head = (Dense(cfg.hidden_size, 2, ('embed', 'classes'), init_std=cfg.init_std, rngs=rngs,
                           dtype=self.dtype, param_dtype=jnp.dtype(cfg.param_dtype)) if cfg.itm_head else None)

  def __call__(self, batch: dict, *, deterministic: bool = True, dropout_key: jax.Array | None = None) -> Encoded:
    """Encodes a batch; `dropout_key` is required unless `deterministic`."""
    if not deterministic and dropout_key is None:
      raise ValueError('a dropout_key is needed when deterministic=False')
    rngs = None if deterministic else nnx.Rngs(dropout=dropout_key)
    mode = dict(deterministic=deterministic, rngs=rngs)
    text_ids, text_mask = batch['text_ids'], batch['text_mask']
    batch_size = text_ids.shape[0]
    visual, visual_mask, visual_masked = _frames(batch, 'visual', self.visual_dim, batch_size, self.dtype)
    acoustic, acoustic_mask, acoustic_masked = _frames(batch, 'acoustic', self.acoustic_dim, batch_size,
                                                       self.dtype)
    lengths = (text_ids.shape[1], visual.shape[1], acoustic.shape[1])
    for name, length, limit in zip(('text', 'visual', 'acoustic'), lengths, self.max_lengths):
      # Beyond its position table a lookup would silently read NaN rows.
      if length > limit:
        raise ValueError(f'{name} length {length} exceeds model.max_{name}_positions={limit}')
    embedded = [self.text_embeddings(text_ids, **mode)]
    if self.visual_embeddings is not None:
      segment_b = self.text_embeddings.token_type(jnp.ones((), jnp.int32))
      embedded.append(self.visual_embeddings(visual, visual_masked, segment_b, **mode))
    if self.acoustic_embeddings is not None:
      embedded.append(self.acoustic_embeddings(acoustic, acoustic_masked, self.acoustic_type[...], **mode))
    x = jnp.concatenate([sharding.constrain(e, HIDDEN_AXES) for e in embedded], axis=1)
    valid = jnp.concatenate([text_mask, visual_mask, acoustic_mask], axis=1).astype(bool)
    hidden = self.encoder(x, valid, **mode)
    return Encoded(hidden, valid, text_ids.shape[1], visual.shape[1])

  def mlm_logits(self, text_hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """Vocabulary logits [B, P, V] at text `positions` [B, P] only, not at every token."""
    picked = jnp.take_along_axis(text_hidden, positions[..., None], axis=1)
    return self.mlm_head(picked, self.text_embeddings.word)

  def visual_regression(self, visual_hidden: jax.Array) -> jax.Array:
    return self.visual_regression_head(visual_hidden, self.visual_embeddings.projection)

  def acoustic_regression(self, acoustic_hidden: jax.Array) -> jax.Array:
    return self.acoustic_regression_head(acoustic_hidden, self.acoustic_embeddings.projection)

  def visual_class_logits(self, visual_hidden: jax.Array) -> jax.Array:
    return self.visual_classification_head(visual_hidden)

  def pooled(self, encoded: Encoded) -> jax.Array:
    return self.pooler(encoded.hidden[:, 0])

  def itm_logits(self, encoded: Encoded) -> jax.Array:
    if self.itm_head is None:
      raise ValueError('this model has no matching head: set model.itm_head=True for the itm task')
    return self.itm_head(self.pooled(encoded)).astype(jnp.float32)

  def cls_logits(self, encoded: Encoded) -> jax.Array:
    if self.cls_head is None:
      raise ValueError('this model has no [CLS] classification head: set model.num_classes > 0')
    return self.cls_head(self.pooled(encoded))
