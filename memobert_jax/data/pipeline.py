"""The grain input pipeline: TFRecord shards -> decoded, tokenized examples -> masked, padded batches.

Shuffling: TFRecord shards are sequential files, so the order is randomised in
two stages: every epoch visits the shards in a new random order, `interleave_shards`
of them read at once, and a window of `shuffle_window` examples (at most the
host's share of the split) is shuffled on top.
(A random-access format would allow a global shuffle; TFRecord keeps the shards
streamable from any file system, and the two stages mix well when shards are many.)

Hosts: each process reads a disjoint subset of the shard files (every
process_count-th), so the union over processes is the whole split.

Determinism: the task of step s and the corruption of its examples are drawn
from generators seeded by (seed, s); together with grain's checkpointable
iterator state this makes a resumed run see exactly the batches it would have seen.
"""

import collections
import hashlib
from collections.abc import Sequence

import grain
import jax
import numpy as np
from ml_collections import ConfigDict

from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import batch as batch_lib, corruption, sources as sources_lib, window_shuffle
from memobert_jax.data.examples import Preparer


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

  def __init__(self, parent: grain.IterDataset, builder: corruption.BatchBuilder,
               schedule: tuple[list[str], np.ndarray], *,
               micro_batches: int, micro_batch_size: int, seed: int):
    super().__init__(parent)
    self.builder = builder
    self.schedule = schedule
    self.micro_batches = micro_batches
    self.micro_batch_size = micro_batch_size
    self.seed = seed

  def __iter__(self) -> _TaskBatchIterator:
    return _TaskBatchIterator(self._parent.__iter__(), self)


def example_dataset(sources: Sequence[sources_lib.Source], split: str, data_cfg: ConfigDict,
                    tokenizer: tokenizer_lib.Tokenizer, *, seed: int, shuffle: bool, repeat: bool, process_index: int,
                    process_count: int) -> grain.IterDataset:
  """Prepared examples (or None for a dropped one) from one or several datasets, mixed by weight."""
  streams = []
  for i, source in enumerate(sources):
    shards = sources_lib.shard_records(source, split, process_index, process_count)
    files = grain.MapDataset.source(shards)
    if shuffle:
      files = files.shuffle(seed=seed + i)
    if repeat:
      files = files.repeat(None)
    records = grain.experimental.InterleaveIterDataset(files, cycle_length=data_cfg.interleave_shards)
    if shuffle:
      # A window past this host's share of the split would hold repeats of it and only delay every (re)start.
      window = max(1, min(data_cfg.shuffle_window, sum(shard.num_examples for shard in shards)))
      records = window_shuffle.WindowShuffleIterDataset(records, window_size=window, seed=seed + i)
    stats = sources_lib.feature_stats(source, split, data_cfg)
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
  if process_count > 1 and any(len(config.data[f'{m}_buckets']) > 1 for m in ('text', 'visual', 'acoustic')):
    raise ValueError('with several processes every host must build the same shapes: give one bucket per modality '
                     '(data.text_buckets, data.visual_buckets, data.acoustic_buckets)')
  if config.tasks.weights.get('itm', 0) > 0 and not config.model.itm_head:
    raise ValueError('the itm task needs the matching head: set --config.model.itm_head=True')
  if micro_batch_size % process_count:
    raise ValueError(f'micro-batch of {micro_batch_size} examples does not split over {process_count} processes')
  tokenizer_lib.check_vocabulary(tokenizer, config.model)
  sources = [sources_lib.open_source(p, w, config.model) for p, w in sources_lib.parse_sources(config.data.train)]
  check_frame_tasks(config, sources)
  examples = example_dataset(sources, split, config.data, tokenizer, seed=config.seed, shuffle=True, repeat=True,
                             process_index=process_index, process_count=process_count)
  batches = TaskBatchDataset(examples, corruption.BatchBuilder(config, tokenizer),
                             task_schedule(config.tasks.weights),
                             micro_batches=micro_batches, micro_batch_size=micro_batch_size // process_count,
                             seed=config.seed)
  if config.data.prefetch_batches:
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=config.data.prefetch_batches)
  return batches


def check_frame_tasks(config: ConfigDict, sources: Sequence[sources_lib.Source]) -> None:
  """Refuses a frame task that would never see a frame: the modality left out, absent from the model or the data."""
  for task, modality in batch_lib.FRAME_TASKS.items():
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
  sources = [sources_lib.open_source(p, w, config.model) for p, w in sources_lib.parse_sources(config.data.valid)]
  tasks, _ = task_schedule(config.tasks.weights)
  builder = corruption.BatchBuilder(config, tokenizer)
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
