"""Datasets on disk as the training jobs read them: metadata, shard files, their records, feature statistics.

A dataset folder is what data_prep.write_shards writes (memobert_jax/data/schema.py): metadata.json and
TFRecord shards per split. Each process reads a disjoint subset of a split's shard files (every
process_count-th), so the union over processes is the whole split.
"""

import dataclasses
import os

import grain
from ml_collections import ConfigDict

from memobert_jax.data import normalization, schema


@dataclasses.dataclass(frozen=True)
class Source:
  path: str
  weight: float
  metadata: schema.DatasetMetadata


def parse_sources(spec: str) -> list[tuple[str, float]]:
  """'dir_a:2,dir_b' -> [('dir_a', 2.0), ('dir_b', 1.0)]."""
  sources = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    path, sep, weight = item.rpartition(':')
    try:
      sources.append((path, float(weight)) if sep else (item, 1.0))
    except ValueError:
      sources.append((item, 1.0))  # a ':' inside the path, not a weight
  if not sources:
    raise ValueError('no dataset given: set --config.data.train (and data.valid) to dataset folders written by '
                     'data_prep.write_shards')
  return sources


def open_source(path: str, weight: float, model_cfg: ConfigDict) -> Source:
  """Loads a dataset's metadata and checks its feature dimensions against the model config."""
  if not os.path.exists(os.path.join(path, schema.METADATA_FILE)):
    raise FileNotFoundError(f'{path} is not a dataset folder: it has no {schema.METADATA_FILE} '
                            f'(write one with python -m data_prep.write_shards)')
  metadata = schema.DatasetMetadata.load(path)
  for modality in ('visual', 'acoustic'):
    data_dim, model_dim = getattr(metadata, f'{modality}_dim'), model_cfg[f'{modality}_dim']
    if data_dim is not None and data_dim != model_dim:
      raise ValueError(f'{path} has {modality} features of dimension {data_dim}, the config says {model_dim}: '
                       f'set --config.model.{modality}_dim={data_dim}')
  return Source(path, weight, metadata)


def feature_stats(source: Source, split: str, data_cfg: ConfigDict) -> dict[str, normalization.FeatureStats | None]:
  """The statistics the frames are standardised with: the dataset's train split's, else the split's own."""
  if not data_cfg.normalize_features:
    return {}
  splits = source.metadata.splits
  recorded = (splits.get('train') or splits[split]).feature_stats
  missing = [m for m in ('visual', 'acoustic') if getattr(source.metadata, f'{m}_dim') and m not in recorded]
  if missing:
    raise ValueError(f'{source.path} records no feature statistics for {missing} (written by an older '
                     f'data_prep.write_shards?): rewrite it, or set --config.data.normalize_features=False')
  return {m: normalization.FeatureStats.from_json(raw) for m, raw in recorded.items()}


def shard_files(source: Source, split: str, process_index: int, process_count: int) -> list[str]:
  """This process's disjoint share of a split's shard files."""
  if split not in source.metadata.splits:
    raise ValueError(f'{source.path} has no split {split!r}; it has {sorted(source.metadata.splits)}')
  files = [os.path.join(source.path, f) for f in source.metadata.splits[split].files]
  if len(files) < process_count:
    raise ValueError(f'{source.path} split {split!r} has {len(files)} shards for {process_count} processes: '
                     f'rewrite it with at least {process_count} shards (a multiple of the process count)')
  return files[process_index::process_count]


_TFRECORD_FRAMING = 12 + 4  # uint64 length + uint32 CRC of it, then the data and its uint32 CRC


def _first_broken_record(path: str) -> tuple[int, int] | None:
  """(index, byte offset) of the first record whose length field runs past the end of the file, as grain reads it."""
  size, index, offset = os.path.getsize(path), 0, 0
  with open(path, 'rb') as f:
    while offset < size:
      f.seek(offset)
      end = offset + _TFRECORD_FRAMING + int.from_bytes(f.read(8), 'little')  # a short read: end > size too
      if end > size:
        return index, offset
      index, offset = index + 1, end
  return None


class _ShardRecordIterator(grain.DatasetIterator):
  """grain's TFRecord iterator (its state unchanged), whose framing errors name the file and the record."""

  def __init__(self, parent: grain.DatasetIterator, path: str):
    super().__init__(parent)
    self._path = path

  def __next__(self) -> bytes:
    try:
      return next(self._parent)
    # grain says "Not a valid TFRecord" with a hex dump of the rest of the file, or cannot allocate a corrupt length.
    except (ValueError, MemoryError, OverflowError):
      broken = _first_broken_record(self._path)
      if broken is None:
        raise
      raise ValueError(f'{self._path}: record {broken[0]} (offset {broken[1]}) runs past the end of the file '
                       f'(truncated or corrupted shard): check the dataset with python -m data_prep.verify '
                       f'{os.path.dirname(self._path)} and rewrite it') from None  # the hex dump adds nothing

  def get_state(self) -> dict:
    return self._parent.get_state()

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state)


class ShardRecords(grain.IterDataset):
  """The records of one TFRecord shard, read by grain, with errors that name the shard.

  grain checks no CRC (data_prep.verify does) and ends quietly at a record boundary, so the file size is first
  checked against metadata.json: a shard cut between two records is an error, not fewer examples.
  """

  def __init__(self, path: str, info: schema.ShardInfo):
    super().__init__()
    self.path = path
    self.num_bytes = info.num_bytes
    self.num_examples = info.num_examples

  def __iter__(self) -> _ShardRecordIterator:
    size = os.path.getsize(self.path)
    if size != self.num_bytes:
      raise ValueError(f'{self.path}: {size} bytes, metadata.json says {self.num_bytes} (truncated or replaced '
                       f'shard): check the dataset with python -m data_prep.verify {os.path.dirname(self.path)} '
                       'and rewrite it')
    return _ShardRecordIterator(grain.experimental.TFRecordIterDataset(self.path).__iter__(), self.path)


def shard_records(source: Source, split: str, process_index: int, process_count: int) -> list[ShardRecords]:
  """This process's shards of a split (`shard_files`), each read with what metadata.json records for it."""
  paths = shard_files(source, split, process_index, process_count)
  info = {os.path.join(source.path, s.file): s for s in source.metadata.splits[split].shards}
  return [ShardRecords(path, info[path]) for path in paths]
