"""The grain input pipeline: TFRecord shards -> decoded, tokenized examples -> masked, padded batches.

Shuffling: TFRecord shards are sequential files, so the order is randomised in
two stages: every epoch visits the shards in a new random order, `interleave_shards`
of them read at once, and a window of `shuffle_window` examples is shuffled on top.
(A random-access format would allow a global shuffle; TFRecord keeps the shards
streamable from any file system, and the two stages mix well when shards are many.)

Hosts: each process reads a disjoint subset of the shard files (every
process_count-th), so the union over processes is the whole split.

Determinism: the task of step s and the corruption of its examples are drawn
from generators seeded by (seed, s); together with grain's checkpointable
iterator state this makes a resumed run see exactly the batches it would have seen.
"""

import collections
import dataclasses
import hashlib
import os
from collections.abc import Sequence

import grain
import jax
import numpy as np
from ml_collections import ConfigDict

from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import masking, normalization, schema, window_shuffle

FRAME_TASKS = {'visual_regression': 'visual', 'visual_kl': 'visual', 'acoustic_regression': 'acoustic'}


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


@dataclasses.dataclass
class Prepared:
  """One decoded utterance, tokenized and capped to the configured lengths."""
  id: str
  ids: np.ndarray  # int32 [T] with [CLS] ... [SEP]
  word_ids: np.ndarray
  label: int
  speaker: str
  session: str
  visual: np.ndarray  # [Tv, Dv] storage dtype
  soft_labels: np.ndarray  # float32 [Tv or 0, 8]
  acoustic: np.ndarray


class Preparer:
  """Decodes a record, tokenizes its text and applies the length caps (a modality left out of
  data.modalities gets zero frames). Text longer than the cap yields None when drop_long_text
  (the paper drops such pretraining utterances), else the words at the end are cut."""

  def __init__(self, data_cfg: ConfigDict, tokenizer: tokenizer_lib.Tokenizer, metadata: schema.DatasetMetadata,
               stats: dict[str, normalization.FeatureStats | None]):
    if 'L' not in data_cfg.modalities or set(data_cfg.modalities) - set('LVA'):
      raise ValueError(f'data.modalities {data_cfg.modalities!r} must contain L (the text) and only L, V, A')
    self.data_cfg = data_cfg
    self.tokenizer = tokenizer
    self.metadata = metadata
    self.stats = stats
    self.visual_frames = data_cfg.max_visual_frames if 'V' in data_cfg.modalities else 0
    self.acoustic_frames = data_cfg.max_acoustic_frames if 'A' in data_cfg.modalities else 0

  def __call__(self, record: bytes) -> Prepared | None:
    example = schema.decode_example(record, self.metadata)
    encoded = self.tokenizer.encode(example['text'])
    ids, word_ids = encoded.ids, encoded.word_ids
    limit = self.data_cfg.max_text_tokens + 2
    if len(ids) > limit:
      if self.data_cfg.drop_long_text:
        return None
      ids = np.concatenate([ids[:limit - 1], ids[-1:]])
      word_ids = np.concatenate([word_ids[:limit - 1], word_ids[-1:]])
    visual = self._scaled('visual', example['visual'][:self.visual_frames])
    return Prepared(example['id'], ids, word_ids, example['label'], example['speaker'], example['session'], visual,
                    example['visual_soft_labels'][:len(visual)],
                    self._scaled('acoustic', example['acoustic'][:self.acoustic_frames]))

  def _scaled(self, modality: str, frames: np.ndarray) -> np.ndarray:
    stats = self.stats.get(modality)
    return stats.apply(frames) if stats is not None and len(frames) else frames


def special_ids(tokenizer: tokenizer_lib.Tokenizer) -> masking.SpecialIds:
  return masking.SpecialIds(cls=tokenizer.cls_id, sep=tokenizer.sep_id, mask=tokenizer.mask_id, pad=tokenizer.pad_id,
                            vocab_size=tokenizer.vocab_size, others=(tokenizer.unk_id,))


def bucket(length: int, buckets: Sequence[int], name: str) -> int:
  """The smallest bucket that holds `length` (0 stays 0: a modality absent from the whole batch costs nothing)."""
  if length == 0:
    return 0
  for size in sorted(buckets):
    if length <= size:
      return size
  raise ValueError(f'{name} length {length} exceeds the largest bucket {max(buckets)}: add a bucket to '
                   f'data.{name}_buckets or lower the data cap')


class Padder:
  """Pads a flat list of examples' inputs to the buckets that fit the longest one: numpy [n, ...] arrays."""

  def __init__(self, data_cfg: ConfigDict, model_cfg: ConfigDict, pad_id: int):
    self.data = data_cfg
    self.pad_id = pad_id
    self.dims = {'visual': model_cfg.visual_dim, 'acoustic': model_cfg.acoustic_dim}

  def __call__(self, texts: Sequence[np.ndarray], visuals: Sequence[np.ndarray],
               acoustics: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(texts)
    text_len = bucket(max(len(t) for t in texts), self.data.text_buckets, 'text')
    batch = {'text_ids': np.full((n, text_len), self.pad_id, np.int32), 'text_mask': np.zeros((n, text_len), bool)}
    for i, ids in enumerate(texts):
      batch['text_ids'][i, :len(ids)] = ids
      batch['text_mask'][i, :len(ids)] = True
    for name, frames in (('visual', visuals), ('acoustic', acoustics)):
      length = bucket(max(len(f) for f in frames), self.data[f'{name}_buckets'], name)
      batch[name] = np.zeros((n, length, self.dims[name]), np.float32)
      batch[f'{name}_mask'] = np.zeros((n, length), bool)
      batch[f'{name}_masked'] = np.zeros((n, length), bool)
      for i, f in enumerate(frames):
        if len(f):  # no frames may come as [0, 0] (a corpus without the modality) whatever the model's dimension
          batch[name][i, :len(f)] = f
          batch[f'{name}_mask'][i, :len(f)] = True
    return batch


class BatchBuilder:
  """Applies a pretraining task's corruption to examples and pads them: numpy in, numpy [A, b, ...] out."""

  def __init__(self, config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer):
    self.data = config.data
    self.tasks = config.tasks
    self.special = special_ids(tokenizer)
    self.pad_inputs = Padder(config.data, config.model, tokenizer.pad_id)

  def build(self, task: str, examples: Sequence[Prepared], micro_batches: int, rng: np.random.Generator,
            counts: collections.Counter | None = None) -> dict[str, np.ndarray]:
    """The step's [A, b, ...] arrays; `counts` (if given) adds up what the corruption had to adapt."""
    if task == 'mlm':
      batch = self._mlm(examples, rng, collections.Counter() if counts is None else counts)
    elif task == 'itm':
      batch = self._matching(examples, rng)
    elif task in FRAME_TASKS:
      batch = self._frames(task, examples, rng)
    else:
      raise ValueError(f'unknown pretraining task {task!r}')
    return {k: v.reshape(micro_batches, len(examples) // micro_batches, *v.shape[1:]) for k, v in batch.items()}

  def _mlm(self, examples: Sequence[Prepared], rng: np.random.Generator,
           counts: collections.Counter) -> dict[str, np.ndarray]:
    masked = [masking.mask_words(e.ids, e.word_ids, self.special, rng, max_predictions=self.data.mlm_max_predictions,
                                 mask_prob=self.tasks.mlm_probability, whole_word=self.tasks.whole_word_masking)
              for e in examples]
    counts['mlm_capped_words'] += sum(m.num_capped_words for m in masked)
    batch = self.pad_inputs([m.ids for m in masked], [e.visual for e in examples], [e.acoustic for e in examples])
    batch['mlm_positions'] = np.stack([m.positions for m in masked])
    batch['mlm_targets'] = np.stack([m.targets for m in masked])
    batch['mlm_weights'] = np.stack([m.weights for m in masked])
    return batch

  def _matching(self, examples: Sequence[Prepared], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """In-batch negatives: some examples get both frame streams of another example of the batch."""
    n = len(examples)
    donors = np.arange(n)
    swap = rng.random(n) < self.tasks.itm_negative_rate
    if n > 1:
      # A random other example: shift by 1..n-1 so no example is its own donor.
      donors = np.where(swap, (donors + rng.integers(1, n, size=n)) % n, donors)
    batch = self.pad_inputs([e.ids for e in examples], [examples[d].visual for d in donors],
                            [examples[d].acoustic for d in donors])
    batch['itm_targets'] = (donors == np.arange(n)).astype(np.int32)
    return batch

  def _frames(self, task: str, examples: Sequence[Prepared], rng: np.random.Generator) -> dict[str, np.ndarray]:
    modality = FRAME_TASKS[task]
    span, ratio = self.tasks[f'{modality}_span'], self.tasks[f'{modality}_ratio']
    corrupted = [masking.mask_frame_spans(getattr(e, modality), rng, span_len=span, ratio=ratio) for e in examples]
    frames = {'visual': [e.visual for e in examples], 'acoustic': [e.acoustic for e in examples]}
    originals = frames[modality]
    frames[modality] = [c.frames for c in corrupted]
    batch = self.pad_inputs([e.ids for e in examples], frames['visual'], frames['acoustic'])
    length = batch[modality].shape[1]
    target_mask = np.zeros((len(examples), length), bool)
    for i, c in enumerate(corrupted):
      batch[f'{modality}_masked'][i, :len(c.masked)] = c.masked
      target_mask[i, :len(c.target_mask)] = c.target_mask
    batch[f'{modality}_target_mask'] = target_mask
    if task == 'visual_kl':
      soft = np.zeros((len(examples), length, len(schema.SOFT_LABEL_CLASSES)), np.float32)
      for i, e in enumerate(examples):
        if len(e.soft_labels) == 0 and len(e.visual):
          raise ValueError(f'example {e.id} has visual frames but no soft labels, which the visual_kl task needs: '
                           f'set --config.tasks.weights.visual_kl=0 or add soft labels in data prep')
        soft[i, :len(e.soft_labels)] = e.soft_labels
      batch['visual_soft_labels'] = soft
    else:
      targets = np.zeros_like(batch[modality])
      for i, original in enumerate(originals):
        targets[i, :len(original)] = original
      batch[f'{modality}_targets'] = targets
    return batch


def task_schedule(weights: ConfigDict) -> tuple[list[str], np.ndarray]:
  """The tasks with positive weight and their sampling probabilities."""
  tasks = [t for t in weights.keys() if weights[t] > 0]
  if not tasks:
    raise ValueError('every task weight is 0: give at least one task in config.tasks.weights a positive weight')
  probabilities = np.array([weights[t] for t in tasks], np.float64)
  return tasks, probabilities / probabilities.sum()


_MAX_DROPPED_IN_A_ROW = 10_000


class _TaskBatchIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, dataset: 'TaskBatchDataset'):
    super().__init__(parent)
    self._dataset = dataset
    self._step = 0
    self.dropped_long_text = 0
    self.counts = collections.Counter()  # what the corruption adapted (see BatchBuilder.build)
    # Order-sensitive digest of every example id consumed: equal digests mean no example was skipped,
    # repeated or reordered (a resumed run is checked against an uninterrupted one this way).
    self.examples_seen = 0
    self.ids_digest = hashlib.sha256().hexdigest()

  def __next__(self) -> tuple[str, dict[str, np.ndarray]]:
    ds = self._dataset
    tasks, probabilities = ds.schedule
    task = tasks[np.random.default_rng([ds.seed, self._step, 0]).choice(len(tasks), p=probabilities)]
    examples, dropped_in_a_row = [], 0
    while len(examples) < ds.micro_batches * ds.micro_batch_size:
      example = next(self._parent)
      if example is not None:
        examples.append(example)
        dropped_in_a_row = 0
        continue
      self.dropped_long_text += 1
      dropped_in_a_row += 1
      if dropped_in_a_row > _MAX_DROPPED_IN_A_ROW:
        raise ValueError(f'{dropped_in_a_row} examples in a row are longer than data.max_text_tokens='
                         f'{ds.builder.data.max_text_tokens} word-pieces and were dropped: raise the cap')
    batch = ds.builder.build(task, examples, ds.micro_batches, np.random.default_rng([ds.seed, self._step, 1]),
                             self.counts)
    self._step += 1
    digest = hashlib.sha256(self.ids_digest.encode())
    for example in examples:
      digest.update(example.id.encode())
    self.ids_digest = digest.hexdigest()
    self.examples_seen += len(examples)
    return task, batch

  def get_state(self) -> dict:
    return {'parent': self._parent.get_state(), 'step': self._step, 'dropped_long_text': self.dropped_long_text,
            'examples_seen': self.examples_seen, 'ids_digest': self.ids_digest,
            'mlm_capped_words': self.counts['mlm_capped_words']}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state['parent'])
    self._step = state['step']
    self.dropped_long_text = state['dropped_long_text']
    self.examples_seen = state['examples_seen']
    self.ids_digest = state['ids_digest']
    self.counts = collections.Counter(mlm_capped_words=state.get('mlm_capped_words', 0))  # absent before it existed


class TaskBatchDataset(grain.IterDataset):
  """Draws one task per optimizer step and builds the step's micro-batches from the next examples."""

  def __init__(self, parent: grain.IterDataset, builder: BatchBuilder, schedule: tuple[list[str], np.ndarray], *,
               micro_batches: int, micro_batch_size: int, seed: int):
    super().__init__(parent)
    self.builder = builder
    self.schedule = schedule
    self.micro_batches = micro_batches
    self.micro_batch_size = micro_batch_size
    self.seed = seed

  def __iter__(self) -> _TaskBatchIterator:
    return _TaskBatchIterator(self._parent.__iter__(), self)


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

  def __init__(self, path: str, num_bytes: int):
    super().__init__()
    self.path = path
    self.num_bytes = num_bytes

  def __iter__(self) -> _ShardRecordIterator:
    size = os.path.getsize(self.path)
    if size != self.num_bytes:
      raise ValueError(f'{self.path}: {size} bytes, metadata.json says {self.num_bytes} (truncated or replaced '
                       f'shard): check the dataset with python -m data_prep.verify {os.path.dirname(self.path)} '
                       'and rewrite it')
    return _ShardRecordIterator(grain.experimental.TFRecordIterDataset(self.path).__iter__(), self.path)


def shard_records(source: Source, split: str, process_index: int, process_count: int) -> list[ShardRecords]:
  """This process's shards of a split (`shard_files`), each read with the size metadata.json records for it."""
  paths = shard_files(source, split, process_index, process_count)
  num_bytes = {os.path.join(source.path, s.file): s.num_bytes for s in source.metadata.splits[split].shards}
  return [ShardRecords(path, num_bytes[path]) for path in paths]


def example_dataset(sources: Sequence[Source], split: str, data_cfg: ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                    *, seed: int, shuffle: bool, repeat: bool, process_index: int,
                    process_count: int) -> grain.IterDataset:
  """Prepared examples (or None for a dropped one) from one or several datasets, mixed by weight."""
  streams = []
  for i, source in enumerate(sources):
    files = grain.MapDataset.source(shard_records(source, split, process_index, process_count))
    if shuffle:
      files = files.shuffle(seed=seed + i)
    if repeat:
      files = files.repeat(None)
    records = grain.experimental.InterleaveIterDataset(files, cycle_length=data_cfg.interleave_shards)
    if shuffle:
      records = window_shuffle.WindowShuffleIterDataset(records, window_size=data_cfg.shuffle_window, seed=seed + i)
    stats = feature_stats(source, split, data_cfg)
    streams.append(records.map(Preparer(data_cfg, tokenizer, source.metadata, stats)))
  if len(streams) == 1:
    return streams[0]
  return grain.IterDataset.mix(streams, [s.weight for s in sources])


def pretraining_dataset(config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer, *, split: str, micro_batches: int,
                        micro_batch_size: int, process_index: int | None = None,
                        process_count: int | None = None) -> grain.IterDataset:
  """Endless (task, batch) pairs for pretraining; batch arrays are this host's [A, b_local, ...] share."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  check_vocabulary(tokenizer, config.model)
  if process_count > 1 and any(len(config.data[f'{m}_buckets']) > 1 for m in ('text', 'visual', 'acoustic')):
    raise ValueError('with several processes every host must build the same shapes: give one bucket per modality '
                     '(data.text_buckets, data.visual_buckets, data.acoustic_buckets)')
  if config.tasks.weights.get('itm', 0) > 0 and not config.model.itm_head:
    raise ValueError('the itm task needs the matching head: set --config.model.itm_head=True')
  if micro_batch_size % process_count:
    raise ValueError(f'micro-batch of {micro_batch_size} examples does not split over {process_count} processes')
  sources = [open_source(p, w, config.model) for p, w in parse_sources(config.data.train)]
  check_frame_tasks(config, sources)
  examples = example_dataset(sources, split, config.data, tokenizer, seed=config.seed, shuffle=True, repeat=True,
                             process_index=process_index, process_count=process_count)
  batches = TaskBatchDataset(examples, BatchBuilder(config, tokenizer), task_schedule(config.tasks.weights),
                             micro_batches=micro_batches, micro_batch_size=micro_batch_size // process_count,
                             seed=config.seed)
  if config.data.prefetch_batches:
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=config.data.prefetch_batches)
  return batches


def check_frame_tasks(config: ConfigDict, sources: Sequence[Source]) -> None:
  """Refuses a frame task that would never see a frame: the modality left out, absent from the model or the data."""
  for task, modality in FRAME_TASKS.items():
    if config.tasks.weights[task] <= 0:
      continue
    if modality[0].upper() not in config.data.modalities:
      reason = f'data.modalities={config.data.modalities!r} leaves them out'
    elif not config.model[f'{modality}_dim']:
      reason = f'the model has none (model.{modality}_dim=0)'
    elif all(getattr(s.metadata, f'{modality}_dim') is None for s in sources):
      reason = f'no example of {config.data.train} has any'
    else:
      continue
    raise ValueError(f'task {task} needs {modality} frames and {reason}: set --config.tasks.weights.{task}=0')


def validation_batches(config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer, *,
                       micro_batch_size: int) -> list[tuple[str, dict[str, np.ndarray]]]:
  """Fixed validation batches: `eval_batches` per task with positive weight, the same at every evaluation."""
  process_index, process_count = jax.process_index(), jax.process_count()
  sources = [open_source(p, w, config.model) for p, w in parse_sources(config.data.valid)]
  tasks, _ = task_schedule(config.tasks.weights)
  builder = BatchBuilder(config, tokenizer)
  local = micro_batch_size // process_count
  batches = []
  for t, task in enumerate(tasks):
    examples = example_dataset(sources, config.data.valid_split, config.data, tokenizer, seed=config.seed,
                               shuffle=False, repeat=False, process_index=process_index,
                               process_count=process_count).filter(lambda e: e is not None).batch(local,
                                                                                                  drop_remainder=True,
                                                                                                  batch_fn=list)
    for b, chunk in zip(range(config.eval_batches), examples):
      batches.append((task, builder.build(task, chunk, 1, np.random.default_rng([config.seed, t, b]))))
  if not batches:
    raise ValueError(f'the validation split {config.data.valid_split!r} of {config.data.valid} holds fewer than '
                     f'{local} usable examples, one micro-batch')
  return batches


def with_vocabulary(config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer) -> ConfigDict:
  """A copy of the config whose model.vocab_size 0 ('take it from the tokenizer') is resolved."""
  config = ConfigDict(config.to_dict())
  if config.model.vocab_size == 0:
    config.model.vocab_size = tokenizer.vocab_size
  check_vocabulary(tokenizer, config.model)
  return config


def check_vocabulary(tokenizer: tokenizer_lib.Tokenizer, model_cfg: ConfigDict) -> None:
  if tokenizer.vocab_size != model_cfg.vocab_size:
    raise ValueError(f'the tokenizer has {tokenizer.vocab_size} tokens, the config says model.vocab_size='
                     f'{model_cfg.vocab_size}: set --config.model.vocab_size={tokenizer.vocab_size}')
