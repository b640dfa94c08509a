"""A tiny model config and random batches (inputs and targets of every pretraining task) for the model tests."""

import numpy as np
from ml_collections import ConfigDict

from configs.common import model_config

MASK_ID = 3  # the [MASK] id of the test vocabulary; ids 0 (padding) to 3 are special
# Per-example valid lengths of the default batch of 8: full, partial and empty frame blocks.
TEXT_LENGTHS = (8, 5, 3, 8, 6, 4, 7, 2)
VISUAL_LENGTHS = (6, 0, 3, 6, 1, 4, 0, 5)
ACOUSTIC_LENGTHS = (5, 4, 0, 2, 5, 3, 0, 1)  # example 6 is text-only


def tiny_config(**overrides) -> ConfigDict:
  """The 'tiny' preset with a small vocabulary and small frame dimensions, all distinct from the hidden size."""
  cfg = model_config('tiny')
  cfg.update(dict(vocab_size=80, visual_dim=12, acoustic_dim=16, dtype='float32', remat='none') | overrides)
  return cfg


def _lengths_mask(lengths, padded: int) -> np.ndarray:
  return np.arange(padded)[None, :] < np.asarray(lengths)[:, None]


def _frames(rng: np.random.Generator, lengths, padded: int, dim: int, name: str) -> dict:
  """Frames (zero at padding), their mask, ~1/3 of the valid frames flagged masked, and regression targets."""
  mask = _lengths_mask(lengths, padded)
  frames = rng.normal(size=(len(lengths), padded, dim)).astype(np.float32) * mask[..., None]
  masked = mask & (rng.random(mask.shape) < 1 / 3)
  return {name: frames, f'{name}_mask': mask, f'{name}_masked': masked, f'{name}_targets': frames,
          f'{name}_target_mask': masked}


def make_batch(cfg: ConfigDict, seed: int = 0, *, text_lengths=TEXT_LENGTHS, visual_lengths=VISUAL_LENGTHS,
               acoustic_lengths=ACOUSTIC_LENGTHS, text_len: int = 8, visual_len: int | None = 6,
               acoustic_len: int | None = 5, num_predictions: int = 2) -> dict[str, np.ndarray]:
  """A batch with the inputs and the targets of every pretraining task; `*_len=None` leaves a modality out.

  Text: valid ids in [4, vocab) (0 at padding), `num_predictions` valid positions per example replaced by
  MASK_ID with the original ids as MLM targets.
  """
  rng = np.random.default_rng(seed)
  batch_size = len(text_lengths)
  text_mask = _lengths_mask(text_lengths, text_len)
  original = rng.integers(4, cfg.vocab_size, (batch_size, text_len)).astype(np.int32) * text_mask
  positions = np.stack([rng.choice(n, num_predictions, replace=n < num_predictions) for n in text_lengths])
  positions = positions.astype(np.int32)
  text_ids = original.copy()
  np.put_along_axis(text_ids, positions, MASK_ID, axis=1)
  batch = dict(text_ids=text_ids, text_mask=text_mask, mlm_positions=positions,
               mlm_targets=np.take_along_axis(original, positions, axis=1),
               mlm_weights=np.ones(positions.shape, np.float32))
  if visual_len is not None:
    batch.update(_frames(rng, visual_lengths, visual_len, cfg.visual_dim, 'visual'))
    scores = np.exp(2 * rng.normal(size=(batch_size, visual_len, cfg.num_visual_classes)))
    batch['visual_soft_labels'] = (scores / scores.sum(-1, keepdims=True)).astype(np.float32)
  if acoustic_len is not None:
    batch.update(_frames(rng, acoustic_lengths, acoustic_len, cfg.acoustic_dim, 'acoustic'))
  return batch


def model_inputs(batch: dict, *modalities: str) -> dict[str, np.ndarray]:
  """The model's inputs of `batch` for text plus the named modalities (no task targets)."""
  keys = ['text_ids', 'text_mask'] + [f'{m}{suffix}' for m in modalities for suffix in ('', '_mask', '_masked')]
  return {k: batch[k] for k in keys}
