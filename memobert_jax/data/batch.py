"""The batch contract: the arrays a step receives for each task, their shapes and dtypes; and padding.

Every batch holds the model inputs (memobert_jax/model/memobert.py)
  text_ids [n, Lt] int32, text_mask [n, Lt] bool
  visual [n, Lv, Dv] float32, visual_mask [n, Lv] bool, visual_masked [n, Lv] bool   (acoustic: La, Da)
and the targets of its task (TASK_TARGETS). Sizes: n examples, Lt / Lv / La the padded lengths (buckets),
Dv / Da the feature dimensions, P the target slots (data.mlm_max_predictions for mlm, the one [MASK] for
prompt), C the soft-label classes. A step's batch stacks micro-batches in front: [A, n, ...].

The pretraining corruption (data/corruption.py), the finetuning batches (data/finetuning_data.py), the
losses (training/tasks.py) and the ahead-of-time compile check (abstract batches, training/aot.py) all
follow this table; adding a task adds one line here.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from ml_collections import ConfigDict

from memobert_jax.data import schema

INPUTS = {
    'text_ids': (('Lt',), 'int32'), 'text_mask': (('Lt',), 'bool'),
    'visual': (('Lv', 'Dv'), 'float32'), 'visual_mask': (('Lv',), 'bool'), 'visual_masked': (('Lv',), 'bool'),
    'acoustic': (('La', 'Da'), 'float32'), 'acoustic_mask': (('La',), 'bool'), 'acoustic_masked': (('La',), 'bool'),
}


@dataclasses.dataclass(frozen=True)
class TaskTargets:
  """What a task adds to the inputs; `frames` is the modality whose frames it corrupts and predicts."""
  arrays: Mapping[str, tuple[tuple[str, ...], str]]
  frames: str | None = None


_WORD_TARGETS = {'mlm_positions': (('P',), 'int32'), 'mlm_targets': (('P',), 'int32'),
                 'mlm_weights': (('P',), 'float32')}
TASK_TARGETS = {
    'mlm': TaskTargets(_WORD_TARGETS),
    'visual_regression': TaskTargets({'visual_target_mask': (('Lv',), 'bool'),
                                      'visual_targets': (('Lv', 'Dv'), 'float32')}, frames='visual'),
    'visual_kl': TaskTargets({'visual_target_mask': (('Lv',), 'bool'),
                              'visual_soft_labels': (('Lv', 'C'), 'float32')}, frames='visual'),
    'acoustic_regression': TaskTargets({'acoustic_target_mask': (('La',), 'bool'),
                                        'acoustic_targets': (('La', 'Da'), 'float32')}, frames='acoustic'),
    'itm': TaskTargets({'itm_targets': ((), 'int32')}),  # 1: the frames belong to the text, 0: swapped in
    'prompt': TaskTargets(_WORD_TARGETS),  # P = 1: the gold label word at the template's [MASK]
    # K: the label words, one per class, among which the softmax is taken.
    'prompt_label_words': TaskTargets({**_WORD_TARGETS, 'label_word_ids': (('K',), 'int32')}),
    'cls': TaskTargets({'labels': ((), 'int32'), 'label_weights': ((), 'float32')}),
}
FRAME_TASKS = {task: t.frames for task, t in TASK_TARGETS.items() if t.frames}


def shapes(task: str, sizes: Mapping[str, int]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """The shape after the example axis and the dtype of every array of a `task` batch, given the sizes."""
  if task not in TASK_TARGETS:
    raise ValueError(f'unknown task {task!r}; known: {sorted(TASK_TARGETS)}')
  arrays = {**INPUTS, **TASK_TARGETS[task].arrays}
  return {key: (tuple(sizes[d] for d in dims), np.dtype(dtype)) for key, (dims, dtype) in arrays.items()}


def sizes_of(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
  """The contract's sizes as a [..., n, ...] batch has them (what `shapes` needs to check it)."""
  sizes = {'Lt': batch['text_ids'].shape[-1], 'Lv': batch['visual'].shape[-2], 'Dv': batch['visual'].shape[-1],
           'La': batch['acoustic'].shape[-2], 'Da': batch['acoustic'].shape[-1], 'C': len(schema.SOFT_LABEL_CLASSES)}
  if 'mlm_positions' in batch:
    sizes['P'] = batch['mlm_positions'].shape[-1]
  if 'label_word_ids' in batch:
    sizes['K'] = batch['label_word_ids'].shape[-1]
  return sizes


def check(batch: Mapping[str, np.ndarray], task: str, lead: int = 1) -> None:
  """Raises unless the batch holds exactly the task's arrays, with their shapes and dtypes after `lead` axes."""
  expected = shapes(task, sizes_of(batch))
  if set(batch) != set(expected):
    raise ValueError(f'a {task} batch has keys {sorted(batch)}, the contract says {sorted(expected)}')
  for key, (shape, dtype) in expected.items():
    if batch[key].shape[lead:] != shape or batch[key].dtype != dtype:
      raise ValueError(f'{task} batch array {key} is {batch[key].dtype}{list(batch[key].shape)}, the contract '
                       f'says {dtype}[{", ".join(["..."] * lead + [str(s) for s in shape])}]')


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
