"""The generated demo corpus: manifest contract, determinism, and that fusion beats every single modality."""

import collections
import json
import re

import numpy as np
import pytest

from data_prep import acoustic_features
from data_prep.corpora import common, demo
from memobert_jax.data import folds


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A reduced corpus (800 labelled, 200 unlabelled): large enough for stable linear probes."""
  directory = tmp_path_factory.mktemp('demo')
  info = demo.generate(directory, demo.DemoConfig(num_labelled=800, num_unlabelled=200, seed=0))
  return directory, info


def _records(directory, name):
  return common.read_manifest(directory / name)


def test_manifest_contract_and_files(corpus):
  directory, info = corpus
  labelled, unlabelled = _records(directory, 'labelled.jsonl'), _records(directory, 'unlabelled.jsonl')
  assert len(labelled) == info['num_labelled'] == 800 and len(unlabelled) == info['num_unlabelled'] == 200
  assert len({r['id'] for r in labelled + unlabelled}) == 1000
  acoustic_dim = acoustic_features.feature_dim(demo.ACOUSTIC_CONFIG)
  assert info['acoustic_dim'] == acoustic_dim and info['visual_dim'] == 342
  no_face = 0
  for record in labelled + unlabelled:
    assert list(record) == list(common.MANIFEST_KEYS)
    visual = np.load(directory / record['visual'])
    soft = np.load(directory / record['visual_soft_labels'])
    acoustic = np.load(directory / record['acoustic'])
    assert visual.shape[1] == 342 and soft.shape == (len(visual), 8) and soft.dtype == np.float32
    assert 1 <= len(visual) <= 30 and 1 <= len(acoustic) <= 64 and acoustic.shape[1] == acoustic_dim
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert soft.min() >= 0 and np.isfinite(acoustic).all() and np.isfinite(visual).all()
    if not visual.any():  # no face: one zero frame, neutral soft label (spec section 2)
      no_face += 1
      assert visual.shape == (1, 342) and soft.tolist() == [[1.0] + [0.0] * 7]
    assert record['wav'] is None
  assert 0 < no_face < 0.1 * 1000
  assert {r['label'] for r in labelled} == set(demo.EMOTIONS)
  assert all(r['label'] is None and r['session'] is None and r['split'] == 'train' for r in unlabelled)
  speakers = collections.Counter(r['speaker'] for r in labelled)
  assert sorted(speakers) == sorted(f'{s}{g}' for s in range(1, 6) for g in 'FM')
  assert all(r['speaker'].startswith(r['session']) for r in labelled)
  assert not set(speakers) & {r['speaker'] for r in unlabelled}


def test_iemocap_folds_apply_and_the_given_split_is_fold_9(corpus):
  directory, _ = corpus
  labelled = _records(directory, 'labelled.jsonl')
  all_folds = folds.make_folds('iemocap', labelled)
  assert len(all_folds) == 10
  given = folds.split_ids(folds.make_folds('given', labelled)[0], labelled)
  assert given == folds.split_ids(all_folds[8], labelled)


def test_text_names_emotions_sometimes_with_a_small_vocabulary(corpus):
  directory, _ = corpus
  for name, lower, upper in (('labelled.jsonl', 0.3, 0.5), ('unlabelled.jsonl', 0.38, 0.62)):
    texts = [r['text'] for r in _records(directory, name)]
    explicit = np.mean([any(cue in t for cues in demo._CUES.values() for cue in cues) for t in texts])
    assert lower < explicit < upper, (name, explicit)
  texts = [r['text'] for r in _records(directory, 'labelled.jsonl') + _records(directory, 'unlabelled.jsonl')]
  words = collections.Counter(w for t in texts for w in re.findall(r'[a-z]+', t))
  assert 150 < len(words) < 600
  for label_word in ('anger', 'happy', 'neutral', 'sad', 'angry', 'sadly'):
    assert words[label_word] >= 3, label_word


@pytest.mark.slow
def test_fusion_beats_every_single_modality(corpus):
  """Linear probes (leave-one-session-out); the default corpus gives text 0.53, visual 0.68, acoustic 0.68 -> 0.92."""
  directory, _ = corpus
  accuracy = demo.probe_accuracies(directory)
  singles = [accuracy[m] for m in ('text', 'visual', 'acoustic')]
  assert all(0.35 <= a <= 0.8 for a in singles), accuracy
  assert accuracy['fusion'] >= 0.8, accuracy
  assert accuracy['fusion'] >= max(singles) + 0.1, accuracy


def _snapshot(directory):
  records = _records(directory, 'labelled.jsonl') + _records(directory, 'unlabelled.jsonl')
  arrays = [np.load(directory / r[k]).tobytes() for r in records for k in ('visual', 'visual_soft_labels', 'acoustic')]
  return records, arrays


@pytest.mark.slow
def test_seeded_and_independent_of_workers(tmp_path):
  config = demo.DemoConfig(num_labelled=12, num_unlabelled=6, seed=5)
  demo.generate(tmp_path / 'a', config, workers=1)
  demo.generate(tmp_path / 'b', config, workers=2)
  demo.generate(tmp_path / 'c', demo.DemoConfig(num_labelled=12, num_unlabelled=6, seed=6), workers=1)
  assert _snapshot(tmp_path / 'a') == _snapshot(tmp_path / 'b')
  assert _snapshot(tmp_path / 'a')[0] != _snapshot(tmp_path / 'c')[0]


def test_acoustic_frames_come_from_the_written_audio(tmp_path):
  demo.generate(tmp_path, demo.DemoConfig(num_labelled=10, num_unlabelled=0, write_wavs=True))
  for record in _records(tmp_path, 'labelled.jsonl'):
    stored = np.load(tmp_path / record['acoustic']).astype(np.float32)
    recomputed = acoustic_features.extract_from_wav(tmp_path / record['wav'], demo.ACOUSTIC_CONFIG)
    assert recomputed.shape == stored.shape
    # float16 storage and 16-bit PCM: close on the energy and mel bands that carry speech
    assert np.median(np.abs(recomputed - stored)) < 0.01


def test_cli(tmp_path, capsys):
  demo.main(['--output', str(tmp_path), '--num_labelled', '20', '--num_unlabelled', '10', '--seed', '1',
             '--workers', '1', '--probe'])
  out = capsys.readouterr().out
  assert 'wrote 20 labelled and 10 unlabelled utterances' in out and 'fusion' in out
  info = json.loads((tmp_path / 'demo_info.json').read_text())
  assert info['config']['seed'] == 1 and info['bytes'] > 0
