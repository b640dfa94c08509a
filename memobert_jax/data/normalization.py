"""Per-dimension standardisation of frame features.

Precomputed features come on very different scales (log-mel in dB, wav2vec states,
ReLU'd DenseNet outputs). Unscaled, a frame-regression loss in the tens outweighs the
MLM loss in every shared Adam statistic, so the loader standardises each feature
dimension with statistics of the training data (data.normalize_features; the regression
targets are then in standard units). The shard writer records each split's statistics;
finetuning fits them on the fold's training utterances and ships them with the model.
"""

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# A dimension constant over the data has no scale: it is centred, not divided by ~0.
_MIN_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  mean: np.ndarray  # float32 [D]
  std: np.ndarray  # float32 [D]
  frames: int

  def apply(self, frames: np.ndarray) -> np.ndarray:
    return ((frames.astype(np.float32) - self.mean) / self.std).astype(np.float32)

  def to_json(self) -> dict:
    return {'mean': self.mean.tolist(), 'std': self.std.tolist(), 'frames': self.frames}

  @classmethod
  def from_json(cls, raw: Mapping) -> 'FeatureStats':
    return cls(np.asarray(raw['mean'], np.float32), np.asarray(raw['std'], np.float32), int(raw['frames']))


def moments(frames: np.ndarray) -> dict:
  """Sufficient statistics of one array of frames [T, D], to be summed over shards."""
  values = frames.astype(np.float64)
  return {'count': int(values.shape[0]), 'sum': values.sum(0).tolist(), 'sum_sq': np.square(values).sum(0).tolist()}


def merge(parts: Iterable[Mapping | None]) -> dict | None:
  parts = [p for p in parts if p and p['count']]
  if not parts:
    return None
  return {'count': sum(p['count'] for p in parts),
          'sum': np.sum([p['sum'] for p in parts], axis=0).tolist(),
          'sum_sq': np.sum([p['sum_sq'] for p in parts], axis=0).tolist()}


def from_moments(total: Mapping | None) -> FeatureStats | None:
  if not total or not total['count']:
    return None
  count = total['count']
  mean = np.asarray(total['sum']) / count
  variance = np.maximum(np.asarray(total['sum_sq']) / count - np.square(mean), 0.0)
  return FeatureStats(mean.astype(np.float32), np.maximum(np.sqrt(variance), _MIN_STD).astype(np.float32), count)


def fit(arrays: Sequence[np.ndarray]) -> FeatureStats | None:
  """Statistics over every frame of the given arrays (None when there is no frame)."""
  return from_moments(merge(moments(a) for a in arrays if len(a)))
