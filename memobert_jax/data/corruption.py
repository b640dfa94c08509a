"""The pretraining tasks' corruption of a batch of examples (spec section 3): numpy in, padded numpy out.

Which arrays each task's batch holds is the contract in memobert_jax/data/batch.py; the per-example
corruption itself (whole-word masking, span masking) is memobert_jax/data/masking.py.
"""

import collections
from collections.abc import Sequence

import numpy as np
from ml_collections import ConfigDict

from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import batch as batch_lib, masking, schema
from memobert_jax.data.examples import Prepared


class BatchBuilder:
  """Applies a pretraining task's corruption to examples and pads them: numpy in, numpy [A, b, ...] out."""

  def __init__(self, config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer):
    self.data = config.data
    self.tasks = config.tasks
    self.special = masking.special_ids(tokenizer)
    self.pad_inputs = batch_lib.Padder(config.data, config.model, tokenizer.pad_id)

  def build(self, task: str, examples: Sequence[Prepared], micro_batches: int, rng: np.random.Generator,
            counts: collections.Counter | None = None) -> dict[str, np.ndarray]:
    """The step's [A, b, ...] arrays; `counts` (if given) adds up what the corruption had to adapt."""
    if task == 'mlm':
      batch = self._mlm(examples, rng, collections.Counter() if counts is None else counts)
    elif task == 'itm':
      batch = self._matching(examples, rng)
    elif task in batch_lib.FRAME_TASKS:
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
    modality = batch_lib.FRAME_TASKS[task]
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
