"""One stored utterance made ready for batching: decoded, tokenized, capped to the configured lengths."""

import dataclasses

import numpy as np
from ml_collections import ConfigDict

from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import normalization, schema


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
