"""Raw media to a prediction: videos with a face and speech-like audio and their .srt files, through clip
cutting, the face and wav2vec 2.0 extractors, shards, pretraining, prompt finetuning and predict from a video."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import finetune as finetune_config
from configs import pretrain as pretrain_config
from data_prep import acoustic_features, write_shards
from data_prep.corpora import video as video_corpus
from memobert_jax import inference, predict, tokenizer as tokenizer_lib
from memobert_jax.data import schema
from memobert_jax.training import finetuning, pretraining
from tests import corpus_helpers, media_helpers, process_helpers

pytestmark = pytest.mark.slow
FPS = 10
SIZE = (300, 400)
RATE = 44100
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAV2VEC2 = os.path.join(ROOT, 'tests', 'fixtures', 'wav2vec2_tiny_base')
LINES = ('i am so happy today', 'this is not what i feel', 'we went home again', 'what a day',
         'i am really sad', 'he is angry', 'it was neutral', 'unbelievable')


def speech_like(seconds: float, seed: int) -> np.ndarray:
  """Voiced syllables: a pitch contour around 150 Hz with harmonics, amplitude-modulated at 4 Hz."""
  t = np.arange(int(seconds * RATE)) / RATE
  f0 = 150 + 30 * np.sin(2 * np.pi * (0.5 + 0.1 * seed) * t)
  phase = 2 * np.pi * np.cumsum(f0) / RATE
  voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
  return 0.3 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2


def srt(lines) -> str:
  return ''.join(f'{i + 1}\n00:00:{i:02d},100 --> 00:00:{i:02d},900\n{text}\n\n' for i, text in enumerate(lines))


@pytest.fixture(scope='module')
def media(tmp_path_factory):
  root = tmp_path_factory.mktemp('media')
  for folder in ('videos', 'subtitles'):
    (root / folder).mkdir()
  for episode in range(2):
    # The face is shown for the first 7 seconds; the 8th is blank, so its line has no face and is dropped.
    frames = media_helpers.face_frames(8 * FPS, SIZE, blank=lambda i: i >= 7 * FPS, left=lambda i: 3 * i)
    media_helpers.write_video(root / 'videos' / f'episode{episode}.mp4', frames, FPS,
                              audio=speech_like(8, episode), audio_rate=RATE)
    (root / 'subtitles' / f'episode{episode}.srt').write_text(srt(LINES))
  return root


def test_videos_and_subtitles_become_shards_a_model_and_a_prediction(media, tmp_path):
  clips = tmp_path / 'clips' / 'clips.jsonl'
  summary = video_corpus.build_corpus(str(media / 'videos'), str(media / 'subtitles'), str(clips), progress=False)
  assert summary['clips_kept'] == 14 and summary['clips_dropped'] == {'no face found': 2}
  lines = [json.loads(line) for line in clips.read_text().splitlines()]
  assert all(line['face_frames'] >= 6 for line in lines)

  # Pretraining shards: wav2vec 2.0 frames from each clip's wav (44.1 kHz audio resampled to 16 kHz).
  config = acoustic_features.SpeechEncoderConfig(WAV2VEC2, max_frames=64)
  pretrain_shards = tmp_path / 'pretrain_shards'
  shard_summary = write_shards.write_shards(clips, pretrain_shards, acoustic_config=config, progress=False)
  assert shard_summary['audio']['from_wav'] == 14
  metadata = schema.DatasetMetadata.load(pretrain_shards)
  assert metadata.acoustic_extractor['extractor'] == 'wav2vec2' and metadata.acoustic_dim == 32
  assert metadata.visual_extractor['dim'] == metadata.visual_dim == 128

  # The same clips with labels and a given split, for finetuning.
  labels = ('happy', 'sad', 'anger', 'neutral')
  labelled = tmp_path / 'clips' / 'labelled.jsonl'
  with open(labelled, 'w') as f:
    for i, line in enumerate(lines):
      split = 'train' if i < 8 else ('valid' if i < 11 else 'test')
      f.write(json.dumps({**line, 'label': labels[i % 4], 'speaker': f'{i % 2}F', 'split': split}) + '\n')
  (tmp_path / 'clips' / 'labelled.jsonl.features.json').write_text(
      (tmp_path / 'clips' / 'clips.jsonl.features.json').read_text())
  finetune_shards = tmp_path / 'finetune_shards'
  write_shards.write_shards(labelled, finetune_shards, acoustic_config=config, labels=labels, progress=False)

  vocab = corpus_helpers.write_vocab(str(tmp_path))
  model = dict(visual_dim=128, acoustic_dim=32, vocab_size=tokenizer_lib.load_tokenizer('wordpiece', vocab).vocab_size)
  pretrain = pretrain_config.get_config('tiny,mesh=cpu,steps=3')
  pretrain.data.update(train=str(pretrain_shards), valid='', text_buckets=(32,))
  pretrain.data.tokenizer.path = vocab
  pretrain.model.update(model)
  pretrain.update(batch_size=4, per_device_batch=4)
  pretrain.mesh.shape = (1, 1, 1)
  pretrain.checkpoint.async_save = False
  pretraining.pretrain(pretrain, str(tmp_path / 'pretrain'))

  finetune = finetune_config.get_config('prompt,model=tiny,mesh=cpu,steps=4,protocol=given')
  finetune.data.update(train=str(finetune_shards), text_buckets=(32,))
  finetune.data.tokenizer.path = vocab
  finetune.model.update(model)
  finetune.init.checkpoint = str(tmp_path / 'pretrain' / 'export')
  finetune.update(batch_size=4, eval_every_steps=2)
  finetune.mesh.shape = (1, 1, 1)
  results = finetuning.finetune(finetune, str(tmp_path / 'finetune'))
  assert results['sizes'] == {'train': 8, 'valid': 3, 'test': 3}

  # A new clip: the extractors recorded with the training data make its frames, with and without text.
  best = tmp_path / 'finetune' / 'best'
  predictor = inference.Predictor(str(best))
  visual, acoustic = predict.media_frames(predictor, str(media / 'videos' / 'episode1.mp4'), None)
  assert visual.shape[1] == 128 and acoustic.shape == (64, 32)
  for text, subset in (('i am so happy today', None), ('', 'VA')):
    [output] = predictor([predictor.utterance('clip', text, visual, acoustic)], subset)
    assert output['label'] in labels and abs(sum(output['probabilities'].values()) - 1) < 1e-4
  command = [sys.executable, '-m', 'memobert_jax.predict', f'--model={best}',
             f'--video={media / "videos" / "episode0.mp4"}']
  printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT,
                           env=process_helpers.one_device_env()).stdout
  assert json.loads(printed.strip().splitlines()[-1])['label'] in labels


def test_wavs_at_other_rates_are_resampled_for_wav2vec2_and_the_summary_says_so(tmp_path):
  records = []
  for i, rate in enumerate((44100, 16000, 22050)):
    media_helpers.write_wav(tmp_path / f'u{i}.wav', speech_like(1.5, i)[:int(1.5 * rate)], rate, channels=1)
    records.append({'id': f'u{i}', 'text': 'i am so happy today', 'wav': f'u{i}.wav'})
  manifest = tmp_path / 'manifest.jsonl'
  manifest.write_text(''.join(json.dumps(r) + '\n' for r in records))
  config = acoustic_features.SpeechEncoderConfig(WAV2VEC2)
  summary = write_shards.write_shards(manifest, tmp_path / 'shards', acoustic_config=config, progress=False)
  assert summary['audio'] == {'from_wav': 3, 'sample_rate': 16000, 'resampled': {'22050': 1, '44100': 1}}
  assert schema.DatasetMetadata.load(tmp_path / 'shards').acoustic_dim == 32
