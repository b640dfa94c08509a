"""Emotion predictions from a finetuned model.

  python -m memobert_jax.predict --model RUN/best --manifest utterances.jsonl [--output predictions.jsonl]
  python -m memobert_jax.predict --model RUN/best --text "I can't believe it" [--visual v.npy] [--acoustic a.npy]
  python -m memobert_jax.predict --model RUN/best --video clip.mp4 [--text "..."]   (or --wav clip.wav)

RUN/best is what finetuning writes. A manifest line is {"id", "text", "visual": .npy [T, Dv],
"acoustic": .npy [T, Da]} with paths relative to the manifest (features as data_prep makes
them; a missing modality is null). From a video or a wav the features are made by the
extractors the model's training data was made with (recorded in its dataset's metadata and
carried into best/): the faces of the video's frames, the audio of the wav or of the video's
track. Without --text the prompt stands alone ("i am [MASK] ."). Each output line: id,
label, and the class probabilities.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from memobert_jax import config_utils, inference
from memobert_jax.data import finetuning_data

_MODEL = flags.DEFINE_string('model', None, 'A finetuned model folder (a finetuning run\'s best/).')
_MANIFEST = flags.DEFINE_string('manifest', None, 'JSONL of utterances to label.')
_TEXT = flags.DEFINE_string('text', None, 'One utterance\'s transcript (instead of --manifest).')
_VISUAL = flags.DEFINE_string('visual', None, 'Its visual features (.npy [T, Dv]), with --text.')
_ACOUSTIC = flags.DEFINE_string('acoustic', None, 'Its acoustic features (.npy [T, Da]), with --text.')
_VIDEO = flags.DEFINE_string('video', None, 'A clip: its faces and its audio track give the frames.')
_WAV = flags.DEFINE_string('wav', None, 'An audio file: its acoustic frames (with --text, or with --video).')
_OUTPUT = flags.DEFINE_string('output', None, 'Write JSONL here instead of printing it.')


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


def read_manifest(path: str, predictor: inference.Predictor) -> list[finetuning_data.Utterance]:
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
      inference.check_transcript(record['text'], f'{record["id"]}: {path}:{number}')
      utterances.append(predictor.utterance(
          record['id'], record['text'],
          _load_frames(resolve(record.get('visual')), dims.visual_dim, 'visual', record['id']),
          _load_frames(resolve(record.get('acoustic')), dims.acoustic_dim, 'acoustic', record['id'])))
  return utterances


def media_frames(predictor: inference.Predictor, video: str | None, wav: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Visual frames from the video's faces and acoustic frames from the wav (else the video's audio track), made
  as the model's training data was; a modality the data had no recorded extractor for is an error."""
  from data_prep import acoustic_features  # decoding and the extractors only when media are given
  from memobert_jax.features import face
  extractors = predictor.metadata.get('extractors') or {}
  dims = predictor.config.model
  visual, acoustic = np.zeros((0, dims.visual_dim), np.float32), np.zeros((0, dims.acoustic_dim), np.float32)
  if video is not None:
    if not extractors.get('visual'):
      raise ValueError(f'{predictor.model_dir} was trained on visual features made outside the project (its '
                       'dataset records no visual extractor): give --visual features.npy instead of --video')
    visual, _, _ = face.VisualFeatures.from_description(extractors['visual'])(video)
  audio = wav or video
  if audio is not None:
    if not extractors.get('acoustic'):
      raise ValueError(f'{predictor.model_dir} was trained on acoustic features made outside the project (its '
                       'dataset records no acoustic extractor): give --acoustic features.npy')
    acoustic = acoustic_features.extract_from_media(audio, acoustic_features.from_description(extractors['acoustic']))
  return visual, acoustic


def main(argv):
  config_utils.refuse_extra_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  from_media = _VIDEO.value is not None or _WAV.value is not None
  if (_MANIFEST.value is None) == (_TEXT.value is None and not from_media):
    raise app.UsageError('give exactly one of --manifest, --text or --video / --wav')
  if _TEXT.value is not None:
    try:
      inference.check_transcript(_TEXT.value, '--text')
    except ValueError as error:
      raise app.UsageError(str(error)) from None
  predictor = inference.Predictor(_MODEL.value)
  subset = None
  if _MANIFEST.value:
    utterances = read_manifest(_MANIFEST.value, predictor)
  elif from_media:
    example_id = _VIDEO.value or _WAV.value
    visual, acoustic = media_frames(predictor, _VIDEO.value, _WAV.value)
    utterances = [predictor.utterance(example_id, _TEXT.value or '', visual, acoustic)]
    if _TEXT.value is None:
      subset = predictor.config.finetune.eval_modalities.replace('L', '')
      if not subset:
        raise app.UsageError(f'{_MODEL.value} reads text only ({predictor.config.finetune.eval_modalities}): '
                             'give --text')
  else:
    dims = predictor.config.model
    utterances = [predictor.utterance('text', _TEXT.value,
                                      _load_frames(_VISUAL.value, dims.visual_dim, 'visual', 'text'),
                                      _load_frames(_ACOUSTIC.value, dims.acoustic_dim, 'acoustic', 'text'))]
  lines = [json.dumps(p) for p in predictor(utterances, subset)]
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write('\n'.join(lines) + '\n')
  else:
    print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flags_as_required(['model'])
  sys.exit(app.run(main))
