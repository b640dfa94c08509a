"""Emotion predictions from a finetuned model.

  python -m memobert_jax.predict --model RUN/best --manifest utterances.jsonl [--output predictions.jsonl]
  python -m memobert_jax.predict --model RUN/best --text "I can't believe it" [--visual v.npy] [--acoustic a.npy]

RUN/best is what finetuning writes. A manifest line is {"id", "text", "visual": .npy [T, Dv],
"acoustic": .npy [T, Da]} with paths relative to the manifest (features as data_prep makes
them; a missing modality is null). Each output line: id, label, and the class probabilities.
"""

import json
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict

from configs import common
from memobert_jax import init_checkpoint, tokenizer as tokenizer_lib
from memobert_jax.data import labelled, normalization
from memobert_jax.training import finetuning, partitioning, step as step_lib, train_state

_MODEL = flags.DEFINE_string('model', None, 'A finetuned model folder (a finetuning run\'s best/).')
_MANIFEST = flags.DEFINE_string('manifest', None, 'JSONL of utterances to label.')
_TEXT = flags.DEFINE_string('text', None, 'One utterance\'s transcript (instead of --manifest).')
_VISUAL = flags.DEFINE_string('visual', None, 'Its visual features (.npy [T, Dv]), with --text.')
_ACOUSTIC = flags.DEFINE_string('acoustic', None, 'Its acoustic features (.npy [T, Da]), with --text.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write JSONL here instead of printing it.')

_BATCH = 32


def _check_transcript(text: str, where: str) -> None:
  """Refuses an empty or blank transcript, as data prep does (data_prep/manifest.py: check_records)."""
  if not text.strip():
    raise ValueError(f'{where}: empty transcript')


def _load_frames(path: str | None, dim: int, what: str, example_id: str) -> np.ndarray:
  if path is None:
    return np.zeros((0, dim), np.float32)
  try:
    frames = np.load(path)
  except (OSError, ValueError) as error:
    raise ValueError(f'{example_id}: cannot read {what} features {path}: {error}') from error
  if frames.ndim != 2 or frames.shape[1] != dim:
    raise ValueError(f'{example_id}: {what} features {path} have shape {frames.shape}, the model expects [T, {dim}]')
  if not np.isfinite(frames).all():
    raise ValueError(f'{example_id}: {what} features {path} hold non-finite values')
  return frames.astype(np.float32)


class Predictor:
  """A finetuned model with its tokenizer, prompt and label words, ready to label utterances."""

  def __init__(self, model_dir: str):
    metadata = init_checkpoint.read_metadata(model_dir)
    if 'finetune' not in metadata:
      raise ValueError(f'{model_dir} is not a finetuned model (no finetune settings in its metadata): '
                       f'give the best/ folder of a finetuning run')
    model_cfg = ConfigDict(metadata['model_config'])
    data_cfg = common.data_config()
    data_cfg.update(dict(max_text_tokens=metadata['max_text_tokens'], max_visual_frames=metadata['max_visual_frames'],
                         max_acoustic_frames=metadata['max_acoustic_frames'], text_buckets=(512,),
                         visual_buckets=(metadata['max_visual_frames'],),
                         acoustic_buckets=(metadata['max_acoustic_frames'],)))
    data_cfg.tokenizer.update(metadata['tokenizer'])
    finetune = ConfigDict(metadata['finetune'])
    finetune.label_words = tuple(metadata['label_words'])
    config = ConfigDict(dict(model=model_cfg, data=data_cfg, finetune=finetune))
    self.config = config
    self.label_names = list(metadata['label_names'])
    # The frames are standardised as in finetuning, with its training data's statistics.
    self.feature_stats = {m: normalization.FeatureStats.from_json(raw) for m, raw in metadata['feature_stats'].items()}
    self.tokenizer = tokenizer_lib.load_tokenizer(data_cfg.tokenizer.kind, data_cfg.tokenizer.path,
                                                  data_cfg.tokenizer.lowercase)
    self.batcher = labelled.FinetuneBatcher(config, self.tokenizer, self.label_names)
    mesh = partitioning.make_mesh((1, 1, 1), common.MESH_AXES)
    graphdef, abstract = train_state.abstract_model(model_cfg)
    shardings = partitioning.state_shardings(abstract, mesh, common.LOGICAL_AXIS_RULES)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    self.params, loaded = init_checkpoint.restore_into(abstract, model_dir, model_cfg)
    missing = sorted(set(init_checkpoint.parameter_names(abstract)) - set(loaded))
    if missing:
      raise ValueError(f'{model_dir} lacks parameters the model needs: {init_checkpoint.listing(missing)}')
    label_ids = None if finetune.mode == 'cls' else self.batcher.verbalizer.label_ids
    self.scorer = finetuning.make_scorer(graphdef, label_ids, shardings, mesh, common.LOGICAL_AXIS_RULES)
    self.sharding = step_lib.train_batch_sharding(mesh, common.LOGICAL_AXIS_RULES)
    self.mesh = mesh

  def utterance(self, example_id: str, text: str, visual: np.ndarray, acoustic: np.ndarray) -> labelled.Utterance:
    words = tuple(tuple(w) for w in self.tokenizer.encode_words(text))
    utterance = labelled.Utterance(example_id, words, 0, '', '', '', visual[:self.config.data.max_visual_frames],
                                   acoustic[:self.config.data.max_acoustic_frames])
    return labelled.standardize(utterance, self.feature_stats)

  def __call__(self, utterances: Sequence[labelled.Utterance]) -> list[dict]:
    subset = self.config.finetune.eval_modalities
    batches = labelled.evaluation_batches(self.batcher, list(utterances), subset, _BATCH)
    with jax.set_mesh(self.mesh):
      predicted, probabilities = finetuning.predict_classes(self.scorer, self.params, batches, len(utterances),
                                                            self.sharding)
    return [{'id': u.id, 'label': self.label_names[p],
             'probabilities': {name: round(float(q), 6) for name, q in zip(self.label_names, probs)}}
            for u, p, probs in zip(utterances, predicted, probabilities)]


def read_manifest(path: str, predictor: Predictor) -> list[labelled.Utterance]:
  base = os.path.dirname(os.path.abspath(path))
  resolve = lambda p: None if p is None else os.path.join(base, p)
  dims = predictor.config.model
  utterances = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f'{path}:{number}: not valid JSON: {error}') from error
      if not isinstance(record.get('id'), str) or not isinstance(record.get('text'), str):
        raise ValueError(f'{path}:{number}: needs a string "id" and a string "text"')
      _check_transcript(record['text'], f'{record["id"]}: {path}:{number}')
      utterances.append(predictor.utterance(
          record['id'], record['text'],
          _load_frames(resolve(record.get('visual')), dims.visual_dim, 'visual', record['id']),
          _load_frames(resolve(record.get('acoustic')), dims.acoustic_dim, 'acoustic', record['id'])))
  return utterances


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if (_MANIFEST.value is None) == (_TEXT.value is None):
    raise app.UsageError('give exactly one of --manifest or --text')
  if _TEXT.value is not None:
    try:
      _check_transcript(_TEXT.value, '--text')
    except ValueError as error:
      raise app.UsageError(str(error)) from None
  predictor = Predictor(_MODEL.value)
  if _MANIFEST.value:
    utterances = read_manifest(_MANIFEST.value, predictor)
  else:
    dims = predictor.config.model
    utterances = [predictor.utterance('text', _TEXT.value,
                                      _load_frames(_VISUAL.value, dims.visual_dim, 'visual', 'text'),
                                      _load_frames(_ACOUSTIC.value, dims.acoustic_dim, 'acoustic', 'text'))]
  lines = [json.dumps(p) for p in predictor(utterances)]
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write('\n'.join(lines) + '\n')
  else:
    print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flags_as_required(['model'])
  sys.exit(app.run(main))
