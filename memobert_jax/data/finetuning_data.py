"""The finetuning data: labelled utterances, fold splits, and batches per mode (memobert_jax/modes.py).

Emotion corpora are small (IEMOCAP: ~5.5k utterances), so a dataset is read once
into memory and batched by plain numpy code; the grain pipeline serves pretraining.

Modality subsets ('LVA', 'LA', 'V', ...): a letter present keeps that input; without L
the prompt stands alone ("[CLS] i am [MASK] . [SEP]").
"""

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
from ml_collections import ConfigDict

from memobert_jax import modes, tokenizer as tokenizer_lib
from memobert_jax.data import batch as batch_lib, folds as folds_lib, masking, normalization, prompt as prompt_lib
from memobert_jax.data import schema, sources

MODALITY_LETTERS = {'L': 'text', 'V': 'visual', 'A': 'acoustic'}


@dataclasses.dataclass(frozen=True)
class Utterance:
  id: str
  words: tuple[tuple[int, ...], ...]  # the transcript's word-pieces, grouped by word
  label: int
  speaker: str
  session: str
  split: str
  visual: np.ndarray
  acoustic: np.ndarray


def check_modalities(subset: str) -> str:
  if not subset or set(subset) - set(MODALITY_LETTERS) or len(set(subset)) != len(subset):
    raise ValueError(f'modality subset {subset!r} must be letters from L, V, A (e.g. LVA, LA, V)')
  return subset


def _decoded(record: bytes, metadata: schema.DatasetMetadata, file: str, index: int) -> dict:
  try:
    return schema.decode_example(record, metadata)
  except Exception as e:  # grain checks no CRC: a damaged record fails in any of the parser's ways
    raise ValueError(f'{file}: record {index} does not decode ({type(e).__name__}: {e}): check the dataset with '
                     f'python -m data_prep.verify {os.path.dirname(file)}') from e


def load_utterances(path: str, splits: Sequence[str], model_cfg: ConfigDict, data_cfg: ConfigDict,
                    tokenizer: tokenizer_lib.Tokenizer) -> tuple[list[Utterance], list[str]]:
  """Every labelled utterance of the given splits; returns them and the dataset's label names."""
  source = sources.open_source(path, 1.0, model_cfg)
  metadata = source.metadata
  utterances = []
  for split in splits:
    if split not in metadata.splits:
      raise ValueError(f'{path} has no split {split!r}; it has {sorted(metadata.splits)}')
    for shard in metadata.splits[split].shards:
      file = os.path.join(path, shard.file)
      for index, record in enumerate(sources.ShardRecords(file, shard)):
        example = _decoded(record, metadata, file, index)
        if example['label'] == schema.UNLABELLED:
          raise ValueError(f'{file}: utterance {example["id"]} has no label; finetuning needs labels')
        utterances.append(Utterance(
            id=example['id'], words=tuple(tuple(w) for w in tokenizer.encode_words(example['text'])),
            label=int(example['label']), speaker=example['speaker'], session=example['session'], split=split,
            visual=example['visual'][:data_cfg.max_visual_frames],
            acoustic=example['acoustic'][:data_cfg.max_acoustic_frames]))
  return utterances, list(metadata.label_names)


def fold_splits(utterances: Sequence[Utterance], protocol: str, fold: int, train_fraction: float,
                seed: int) -> dict[str, list[Utterance]]:
  """train / valid / test utterances of one fold; the training part optionally subsampled."""
  records = [dict(id=u.id, session=u.session, speaker=u.speaker, split=u.split) for u in utterances]
  all_folds = folds_lib.make_folds(protocol, records)
  if not 1 <= fold <= len(all_folds):
    raise ValueError(f'fold {fold} does not exist: protocol {protocol!r} has folds 1..{len(all_folds)}')
  ids = folds_lib.split_ids(all_folds[fold - 1], records, train_fraction=train_fraction, seed=seed)
  by_id = {u.id: u for u in utterances}
  return {split: [by_id[i] for i in members] for split, members in ids.items()}


def fit_feature_stats(train: Sequence[Utterance]) -> dict[str, normalization.FeatureStats]:
  """Frame statistics of a fold's training utterances (never of its validation or test speaker)."""
  fitted = {m: normalization.fit([getattr(u, m) for u in train]) for m in ('visual', 'acoustic')}
  return {m: stats for m, stats in fitted.items() if stats is not None}


def standardize(utterance: Utterance, stats: dict[str, normalization.FeatureStats]) -> Utterance:
  scaled = {m: stats[m].apply(getattr(utterance, m)) for m in stats if len(getattr(utterance, m))}
  return dataclasses.replace(utterance, **scaled)


class FinetuneBatcher:
  """Builds [1, b, ...] batches (one micro-batch) for a finetuning mode and a modality subset."""

  def __init__(self, config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer, label_names: Sequence[str]):
    self.mode = modes.get(config.finetune.mode)
    # Models exported before finetune.prompt_loss existed were all trained over the vocabulary.
    self.task = self.mode.training_task(config.finetune.get('prompt_loss', 'vocabulary'))
    self.special = masking.special_ids(tokenizer)
    self.max_text_len = config.data.max_text_tokens + 2
    self.pad_inputs = batch_lib.Padder(config.data, config.model, tokenizer.pad_id)
    words = list(config.finetune.label_words) or list(label_names)
    if len(words) != len(label_names):
      raise ValueError(f'finetune.label_words {words} must give one word per class {list(label_names)}')
    self.verbalizer = prompt_lib.Verbalizer.from_words(words, tokenizer.encode_words,
                                                       vocabulary=config.data.tokenizer.path)
    prompt_lib.check_template(config.finetune.template)
    self.template = prompt_lib.tokenize_template(config.finetune.template, tokenizer.encode_words)

  def _text(self, utterance: Utterance, with_text: bool) -> tuple[np.ndarray, int]:
    """Token ids and the [MASK] position (prompt modes; -1 for cls)."""
    words = utterance.words if with_text else ()
    if not self.mode.prompted:
      ids, budget = [self.special.cls], self.max_text_len - 2
      for word in words:
        if len(ids) - 1 + len(word) > budget:
          break
        ids.extend(word)
      return np.array([*ids, self.special.sep], np.int32), -1
    built = prompt_lib.build_prompt(words, self.template, self.special, max_text_len=self.max_text_len)
    return built.ids, built.mask_position

  def batch(self, items: Sequence[tuple[Utterance, str]], size: int) -> dict[str, np.ndarray]:
    """(utterance, modality subset) pairs -> a batch of `size` rows; missing rows are padding with weight 0."""
    texts, visuals, acoustics, positions, labels = [], [], [], [], []
    for utterance, subset in items:
      ids, mask_position = self._text(utterance, 'L' in subset)
      texts.append(ids)
      positions.append(mask_position)
      visuals.append(utterance.visual if 'V' in subset else utterance.visual[:0])
      acoustics.append(utterance.acoustic if 'A' in subset else utterance.acoustic[:0])
      labels.append(utterance.label)
    weights = np.zeros(size, np.float32)
    weights[:len(items)] = 1.0
    padding = size - len(items)
    texts += [np.array([self.special.cls, self.special.sep], np.int32)] * padding
    visuals += [visuals[0][:0]] * padding
    acoustics += [acoustics[0][:0]] * padding
    batch = self.pad_inputs(texts, visuals, acoustics)
    labels = np.array(labels + [0] * padding, np.int32)
    if not self.mode.prompted:
      batch.update(labels=labels, label_weights=weights)
    else:
      batch.update(mlm_positions=np.array(positions + [0] * padding, np.int32)[:, None],
                   mlm_targets=self.verbalizer.label_ids[labels][:, None], mlm_weights=weights[:, None])
      if self.task == 'prompt_label_words':
        batch['label_word_ids'] = np.tile(self.verbalizer.label_ids, (size, 1))
    return {k: v[None] for k, v in batch.items()}

  def training_items(self, utterances: Sequence[Utterance], subset: str) -> list[tuple[Utterance, str]]:
    """What one training epoch visits: each utterance with the subset, or its 7 cross-modal cases (prompt_cm)."""
    if not self.mode.cross_modal:
      return [(u, subset) for u in utterances]
    return [(u, case.name) for u in utterances
            for case in prompt_lib.cross_modal_cases(len(u.visual) > 0, len(u.acoustic) > 0)]


def training_batches(batcher: FinetuneBatcher, items: Sequence[tuple[Utterance, str]], batch_size: int,
                     seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless full batches from a stream of epochs, each in a new order; reproducible from the seed.

  A batch may span two epochs, so no item is left out and a training set smaller than a batch
  (a low-resource fraction of a small corpus) still trains.
  """
  if not items:
    raise ValueError('no training items')

  def stream() -> Iterator[int]:
    epoch = 0
    while True:
      yield from np.random.default_rng([seed, epoch]).permutation(len(items))
      epoch += 1

  order = stream()
  while True:
    yield batcher.batch([items[next(order)] for _ in range(batch_size)], batch_size)


def evaluation_batches(batcher: FinetuneBatcher, utterances: Sequence[Utterance], subset: str,
                       batch_size: int) -> list[dict[str, np.ndarray]]:
  """Every utterance once, in order; the last batch is padded with weight-0 rows."""
  return [batcher.batch([(u, subset) for u in utterances[start:start + batch_size]], batch_size)
          for start in range(0, len(utterances), batch_size)]
