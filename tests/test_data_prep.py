"""Manifest validation, TFRecord shard writing / resuming / verifying, and the TFDS builder."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest

from data_prep import manifest as manifest_lib
from data_prep import verify, write_shards
from memobert_jax.data import schema

REPO = Path(__file__).resolve().parents[1]
LABELS = ['anger', 'happy', 'neutral', 'sad']
VISUAL_DIM, ACOUSTIC_DIM = 7, 5  # unusual sizes: the code must take them from the data


def _soft_labels(rng: np.random.Generator, frames: int) -> np.ndarray:
  soft = rng.random((frames, 8)).astype(np.float32) + 0.01
  return soft / soft.sum(axis=1, keepdims=True)


def make_corpus(root: Path, n: int = 24, seed: int = 0, visual_dim: int = VISUAL_DIM,
                acoustic_dim: int = ACOUSTIC_DIM) -> dict[str, dict]:
  """A random corpus: manifest.jsonl plus .npy files; returns the records with their arrays, by id."""
  rng = np.random.default_rng(seed)
  (root / 'feats').mkdir(parents=True, exist_ok=True)
  corpus = {}
  with open(root / 'manifest.jsonl', 'w', encoding='utf-8') as f:
    for i in range(n):
      uid = f'utt{i:03d}'
      frames = int(rng.integers(1, 12))
      arrays = {'visual': rng.standard_normal((frames, visual_dim)).astype(np.float32),
                'visual_soft_labels': _soft_labels(rng, frames),
                'acoustic': rng.standard_normal((int(rng.integers(1, 20)), acoustic_dim)).astype(np.float32)}
      if i % 7 == 3:  # a text-only utterance: every modality may be missing
        arrays = {}
      elif i % 5 == 4:  # visual without soft labels
        del arrays['visual_soft_labels']
      record = {'id': uid, 'text': f'héllo wörld {i} ' + 'word ' * int(rng.integers(0, 5)),
                'label': LABELS[i % 4] if i % 6 else None, 'speaker': f'spk{i % 3}' if i % 4 else None,
                'session': f'Ses{i % 2}', 'split': 'test' if i % 4 == 1 else None,
                'visual': None, 'visual_soft_labels': None, 'acoustic': None, 'wav': None}
      for key, array in arrays.items():
        np.save(root / 'feats' / f'{key}_{i}.npy', array)
        record[key] = f'feats/{key}_{i}.npy'
      f.write(json.dumps(record, ensure_ascii=False) + '\n')
      corpus[uid] = record | {'arrays': arrays}
  return corpus


def read_dataset(directory: Path) -> tuple[schema.DatasetMetadata, dict[str, dict]]:
  """Every example of every split, read the way the loader will (grain's TFRecord reader)."""
  metadata = schema.DatasetMetadata.load(directory)
  examples = {}
  for split, info in metadata.splits.items():
    for file in info.files:
      for record in grain.experimental.TFRecordIterDataset(str(directory / file)):
        example = schema.decode_example(record, metadata)
        examples[example['id']] = example | {'split': split, 'shard': file}
  return metadata, examples


def assert_same_example(example: dict, record: dict, dtype: np.dtype, label_names=LABELS):
  assert example['text'] == record['text']
  assert example['label'] == (-1 if record['label'] is None else label_names.index(record['label']))
  assert example['speaker'] == (record['speaker'] or '')
  assert example['session'] == (record['session'] or '')
  assert example['split'] == (record['split'] or 'train')
  for key, stored_dtype in (('visual', dtype), ('visual_soft_labels', np.float32), ('acoustic', dtype)):
    stored = example[key]
    if key not in record['arrays']:
      assert stored.shape[0] == 0
      continue
    want = record['arrays'][key].astype(stored_dtype)
    assert stored.dtype == want.dtype and stored.shape == want.shape
    assert stored.tobytes() == want.tobytes(), key  # bit for bit


def test_round_trip_float32(tmp_path):
  corpus = make_corpus(tmp_path / 'corpus')
  summary = write_shards.write_shards(tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out', num_shards=3,
                                      progress=False)
  metadata, examples = read_dataset(tmp_path / 'out')
  assert set(examples) == set(corpus)
  for uid, record in corpus.items():
    assert_same_example(examples[uid], record, np.dtype(np.float32))
  assert metadata.visual_dim == VISUAL_DIM and metadata.acoustic_dim == ACOUSTIC_DIM
  assert metadata.label_names == LABELS and metadata.storage_dtype == 'float32'
  assert {s: i.num_examples for s, i in metadata.splits.items()} == {'test': 6, 'train': 18}
  assert all(len(i.shards) == 3 for i in metadata.splits.values())
  assert summary['splits']['test']['num_examples'] == 6 and summary['skipped'] == []
  assert summary['modalities']['visual'] == sum('visual' in r['arrays'] for r in corpus.values())
  assert json.loads((tmp_path / 'out' / 'summary.json').read_text()) == summary
  assert verify.verify_dataset(tmp_path / 'out').ok


def test_float16_caps_and_wav_extraction(tmp_path):
  soundfile = pytest.importorskip('soundfile')
  acoustic_features = pytest.importorskip('data_prep.acoustic_features')
  config = acoustic_features.AcousticFeatureConfig(kinds=('logmel', 'energy'), n_mels=8, max_frames=None)
  corpus = make_corpus(tmp_path / 'corpus', n=8, seed=1, acoustic_dim=acoustic_features.feature_dim(config))
  # One utterance with audio and no acoustic .npy: its features come from the librosa extractor.
  t = np.arange(8000) / 16000
  soundfile.write(tmp_path / 'corpus' / 'a.wav', (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
  with open(tmp_path / 'corpus' / 'manifest.jsonl', 'a', encoding='utf-8') as f:
    f.write(json.dumps({'id': 'wav1', 'text': 'from audio', 'label': 'sad', 'wav': 'a.wav'}) + '\n')

  summary = write_shards.write_shards(tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out', num_shards=2,
                                      storage_dtype='float16', max_visual_frames=4, acoustic_config=config,
                                      progress=False)
  metadata, examples = read_dataset(tmp_path / 'out')
  assert metadata.storage_dtype == 'float16' and metadata.acoustic_dim == acoustic_features.feature_dim(config)
  assert metadata.acoustic_extractor['n_mels'] == 8 and metadata.max_visual_frames == 4
  expected_wav = acoustic_features.extract_from_wav(tmp_path / 'corpus' / 'a.wav', config)
  assert examples['wav1']['acoustic'].tobytes() == expected_wav.astype(np.float16).tobytes()
  assert summary['modalities']['acoustic_from_wav'] == 1
  full_visual_frames = [len(r['arrays']['visual']) for r in corpus.values() if 'visual' in r['arrays']]
  assert summary['truncated']['visual'] == sum(n > 4 for n in full_visual_frames) > 0
  assert summary['lengths']['visual_frames']['max'] == max(full_visual_frames)  # statistics of the full lengths
  for uid, record in corpus.items():  # stored: the first 4 frames, equal to np.float16(original)
    for key in ('visual', 'visual_soft_labels'):
      if key in record['arrays']:
        record['arrays'][key] = record['arrays'][key][:4]
    assert_same_example(examples[uid], record, np.dtype(np.float16))
  assert verify.verify_dataset(tmp_path / 'out').ok


def test_metadata_dims_come_from_the_data(tmp_path):
  make_corpus(tmp_path / 'a', n=6, visual_dim=3)
  write_shards.write_shards(tmp_path / 'a' / 'manifest.jsonl', tmp_path / 'out_a', progress=False)
  assert schema.DatasetMetadata.load(tmp_path / 'out_a').visual_dim == 3
  # No example has a modality: its dimension is unknown (None), and decoding gives zero frames.
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'manifest.jsonl').write_text(json.dumps({'id': 'x', 'text': 'text only'}) + '\n')
  write_shards.write_shards(tmp_path / 'b' / 'manifest.jsonl', tmp_path / 'out_b', progress=False)
  metadata, examples = read_dataset(tmp_path / 'out_b')
  assert metadata.visual_dim is None and metadata.acoustic_dim is None and metadata.label_names == []
  assert examples['x']['visual'].shape == (0, 0) and examples['x']['label'] == -1


def _shard_hashes(directory: Path) -> dict[str, str]:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob('*.tfrecord'))}


@pytest.mark.slow  # spawned workers each import TensorFlow
def test_deterministic_shard_assignment(tmp_path):
  make_corpus(tmp_path / 'corpus', n=20)
  manifest = tmp_path / 'corpus' / 'manifest.jsonl'
  write_shards.write_shards(manifest, tmp_path / 'one', num_shards=4, workers=1, progress=False)
  write_shards.write_shards(manifest, tmp_path / 'two', num_shards=4, workers=2, progress=False)  # spawned workers
  assert _shard_hashes(tmp_path / 'one') == _shard_hashes(tmp_path / 'two')
  # The documented rule: within a split, order by SHA-256 of the id, example k goes to shard k mod N.
  _, examples = read_dataset(tmp_path / 'one')
  train = sorted((uid for uid, e in examples.items() if e['split'] == 'train'),
                 key=lambda uid: hashlib.sha256(uid.encode()).digest())
  for k, uid in enumerate(train):
    assert examples[uid]['shard'] == schema.shard_file_name('train', k % 4, 4)


def _flip_byte(path: Path, offset: int):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  path.write_bytes(bytes(data))


def test_verify_reports_a_flipped_byte(tmp_path, capsys):
  make_corpus(tmp_path / 'corpus', n=12)
  write_shards.write_shards(tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out', num_shards=2, progress=False)
  assert verify.main([str(tmp_path / 'out')]) == 0
  assert verify.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  shard = tmp_path / 'out' / 'train-00001-of-00002.tfrecord'
  offsets, problem = verify.scan_records(str(shard))
  assert problem is None and len(offsets) > 2
  _flip_byte(shard, offsets[2] + 12 + 5)  # inside the data of record 2
  assert verify.main([str(tmp_path / 'out')]) == 1
  out = capsys.readouterr().out
  assert f'{shard.name}: record 2 (offset {offsets[2]}): data CRC mismatch' in out
  assert 'train-00000' not in out and 'test-' not in out
  # A flipped bit in a length field is caught by the length CRC.
  _flip_byte(shard, offsets[2] + 12 + 5)
  _flip_byte(shard, offsets[1] + 3)
  result = verify.verify_dataset(tmp_path / 'out', check_sha256=False)
  assert result.problems[0] == f'{shard.name}: record 1 (offset {offsets[1]}): length field fails its CRC (corrupted)'


_CRASHING_JOB = """
import os, signal, sys
from data_prep import write_shards
real_write_shard, calls = write_shards.write_shard, []
def write_shard(plan, output_dir, *args, **kwargs):
  calls.append(plan.file)
  if len(calls) == 3:  # die like kill -9 while the third shard is half written
    with open(os.path.join(output_dir, '.' + plan.file + '.tmp-' + str(os.getpid())), 'wb') as f:
      f.write(b'partial')
    os.kill(os.getpid(), signal.SIGKILL)
  return real_write_shard(plan, output_dir, *args, **kwargs)
write_shards.write_shard = write_shard
write_shards.write_shards(sys.argv[1], sys.argv[2], num_shards=3, progress=False)
"""


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_killed_job_resumes_with_only_the_missing_shards(tmp_path):
  make_corpus(tmp_path / 'corpus', n=30)
  manifest, out = tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out'
  job = subprocess.run([sys.executable, '-c', textwrap.dedent(_CRASHING_JOB), str(manifest), str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert job.returncode == -9, job.stderr
  finished = sorted(out.glob('*.tfrecord'))
  assert len(finished) == 2 and not (out / schema.METADATA_FILE).exists()
  assert list(out.glob('.*.tmp-*'))  # the partial shard of the killed run
  before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in finished}

  summary = write_shards.write_shards(manifest, out, num_shards=3, progress=False)
  assert sorted(summary['shards']['kept']) == sorted(before)
  assert len(summary['shards']['written']) == 4  # 2 splits x 3 shards, 2 kept
  for name, stat in before.items():
    p = out / name
    assert (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) == stat
  assert not list(out.glob('.*.tmp-*'))
  assert verify.verify_dataset(out).ok
  _, examples = read_dataset(out)
  assert len(examples) == 30

  # Done: a re-run writes nothing; a different shard count replaces the old shards.
  assert write_shards.write_shards(manifest, out, num_shards=3, progress=False)['shards']['written'] == []
  summary = write_shards.write_shards(manifest, out, num_shards=2, progress=False)
  assert len(summary['shards']['removed_stale']) == 6 and len(list(out.glob('*.tfrecord'))) == 4


def _bad_corpus(root: Path) -> list[tuple[str, str, str]]:
  """A corpus where every utterance but two has one kind of problem; returns (id, file, message part)."""
  make_corpus(root, n=2, seed=3)
  rng = np.random.default_rng(0)
  feats = root / 'feats'
  good_visual = rng.standard_normal((4, VISUAL_DIM)).astype(np.float32)

  def save(name, array):
    np.save(feats / name, array)
    return f'feats/{name}'

  nan = good_visual.copy()
  nan[2, 1] = np.nan
  uneven = _soft_labels(rng, 4)
  uneven[1] *= 1.2
  (feats / 'garbage.npy').write_bytes(b'not an npy file')
  (root / 'broken.wav').write_bytes(b'RIFF\x00\x00not really audio')
  records = [
      ({'id': 'nan', 'visual': save('nan.npy', nan)}, 'nan.npy', 'non-finite'),
      ({'id': 'dim', 'visual': save('dim.npy', np.ones((4, VISUAL_DIM + 1), np.float32))}, 'dim.npy',
       f'dimension {VISUAL_DIM + 1} differs'),
      ({'id': 'soft_shape', 'visual': save('v4.npy', good_visual),
        'visual_soft_labels': save('s7.npy', np.full((4, 7), 1 / 7))}, 's7.npy', 'soft labels must be [frames, 8]'),
      ({'id': 'soft_sum', 'visual': 'feats/v4.npy', 'visual_soft_labels': save('uneven.npy', uneven)}, 'uneven.npy',
       'sum to 1'),
      ({'id': 'soft_frames', 'visual': 'feats/v4.npy', 'visual_soft_labels': save('s3.npy', _soft_labels(rng, 3))},
       's3.npy', '3 soft-label frames but 4 visual frames'),
      ({'id': 'empty_text', 'text': '  '}, 'manifest.jsonl:', 'empty transcript'),
      ({'id': 'garbage', 'acoustic': 'feats/garbage.npy'}, 'garbage.npy', 'unreadable .npy'),
      ({'id': 'missing', 'acoustic': 'feats/nowhere.npy'}, 'nowhere.npy', 'unreadable .npy'),
      ({'id': 'one_d', 'acoustic': save('one_d.npy', np.ones(5, np.float32))}, 'one_d.npy', '2-D'),
      ({'id': 'bad_wav', 'wav': 'broken.wav'}, 'broken.wav', 'unreadable wav'),
      ({'id': 'overflow', 'acoustic': save('big.npy', np.full((2, ACOUSTIC_DIM), 1e6, np.float32))}, 'big.npy',
       'overflow float16'),
      ({'id': 'bad_label', 'label': 'bored'}, 'manifest.jsonl:', "label 'bored' is not one of"),
      ({'id': 'dup'}, 'manifest.jsonl:', 'duplicate id'),
      ({'id': 'dup'}, 'manifest.jsonl:', 'duplicate id'),
  ]
  with open(root / 'manifest.jsonl', 'a', encoding='utf-8') as f:
    for record, _, _ in records:
      f.write(json.dumps({'text': 'some words', 'label': 'sad'} | record) + '\n')
    f.write('{"id": "cut", "text": \n')  # not JSON
  return [(r['id'], file, message) for r, file, message in records] + [(None, 'manifest.jsonl:', 'invalid JSON')]


def _matches(problem: dict, expected: tuple[str | None, str, str]) -> bool:
  uid, file, message = expected
  return problem['id'] == uid and file in problem['file'] and message in problem['problem']


def test_fail_mode_names_every_problem_and_writes_nothing(tmp_path):
  expected = _bad_corpus(tmp_path / 'corpus')
  with pytest.raises(manifest_lib.ManifestError) as error:
    write_shards.write_shards(tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out', labels=LABELS,
                              storage_dtype='float16', progress=False)
  problems = [p.to_dict() for p in error.value.problems]
  for item in expected:
    assert any(_matches(p, item) for p in problems), (item, problems)
  assert len(problems) == len(expected)
  assert all(str(p) in str(error.value) for p in error.value.problems)  # the message lists every problem
  assert not (tmp_path / 'out').exists()


def test_skip_mode_lists_skipped_examples_with_reasons(tmp_path):
  expected = _bad_corpus(tmp_path / 'corpus')
  summary = write_shards.write_shards(tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out', labels=LABELS,
                                      storage_dtype='float16', on_error='skip', progress=False)
  for item in expected:
    assert any(_matches(p, item) for p in summary['skipped']), item
  _, examples = read_dataset(tmp_path / 'out')
  assert sorted(examples) == ['utt000', 'utt001']
  assert summary['num_examples'] == 2
  assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['skipped'] == summary['skipped']


def test_tfds_builder_matches_the_shard_writer(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  from data_prep.tfds_builders.memobert_manifest import memobert_manifest_dataset_builder
  make_corpus(tmp_path / 'corpus', n=10, seed=4)
  write_shards.write_shards(tmp_path / 'corpus' / 'manifest.jsonl', tmp_path / 'out', progress=False)
  metadata, shard_examples = read_dataset(tmp_path / 'out')

  builder = memobert_manifest_dataset_builder.Builder(data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'corpus')))
  assert builder.info.metadata['visual_dim'] == metadata.visual_dim
  assert builder.info.metadata['label_names'] == metadata.label_names
  seen = set()
  for split in builder.info.splits:
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      uid = example['id'].decode()
      want = shard_examples[uid]
      seen.add(uid)
      assert want['split'] == split and example['label'] == want['label']
      for key in ('text', 'speaker', 'session'):
        assert example[key].decode() == want[key]
      for key in ('visual', 'visual_soft_labels', 'acoustic'):
        assert example[key].shape[0] == want[key].shape[0]
        assert example[key].tobytes() == want[key].tobytes(), (uid, key)
  assert seen == set(shard_examples)


def test_iemocap_builder_runs_the_adapter(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  soundfile = pytest.importorskip('soundfile')
  pytest.importorskip('data_prep.corpora.iemocap')
  from data_prep.tfds_builders.iemocap_memobert import iemocap_memobert_dataset_builder as iemocap_builder
  # A one-session release in the layout the adapter reads; 'fru' is not one of the 4 classes and is dropped.
  dialog = tmp_path / 'release' / 'Session1' / 'dialog'
  turns = [('Ses01F_impro01_F000', 'neu', 'Excuse me.'), ('Ses01F_impro01_M001', 'exc', 'Yes!'),
           ('Ses01F_impro01_F002', 'fru', 'No.')]
  for sub, line in (('EmoEvaluation', '[{i}.0 - {i}.5]\t{uid}\t{label}\t[2.5, 2.5, 2.5]\n'),
                    ('transcriptions', '{uid} [00{i}.0000-00{i}.5000]: {text}\n')):
    (dialog / sub).mkdir(parents=True)
    (dialog / sub / 'Ses01F_impro01.txt').write_text(
        ''.join(line.format(i=i, uid=uid, label=label, text=text) for i, (uid, label, text) in enumerate(turns)))
  wavs = tmp_path / 'release' / 'Session1' / 'sentences' / 'wav' / 'Ses01F_impro01'
  wavs.mkdir(parents=True)
  for uid, _, _ in turns:
    soundfile.write(wavs / f'{uid}.wav', (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000)

  config = iemocap_builder.IemocapConfig(name='session1', labels=iemocap_builder.EMOTIONS, sessions=(1,))
  builder = iemocap_builder.Builder(config=config, data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'release')))
  examples = {e['id'].decode(): e for e in tfds.as_numpy(builder.as_dataset(split='train'))}
  assert sorted(examples) == ['Ses01F_impro01_F000', 'Ses01F_impro01_M001']
  assert examples['Ses01F_impro01_M001']['label'] == LABELS.index('happy')  # exc is merged into happy
  assert examples['Ses01F_impro01_F000']['acoustic'].shape[1] == builder.info.metadata['acoustic_dim'] > 0
  assert examples['Ses01F_impro01_F000']['visual'].shape[0] == 0


def test_split_feature_statistics_are_those_of_the_stored_frames(tmp_path):
  from memobert_jax.data import normalization
  from tests import corpus_helpers
  shards = corpus_helpers.write_corpus(str(tmp_path), 60, num_shards=3)
  metadata = schema.DatasetMetadata.load(shards)
  frames = {'visual': [], 'acoustic': []}
  for file in metadata.splits['train'].files:
    for record in grain.experimental.TFRecordIterDataset(str(Path(shards) / file)):
      example = schema.decode_example(record, metadata)
      for name in frames:
        if len(example[name]):
          frames[name].append(example[name])
  for name, arrays in frames.items():
    stats = normalization.FeatureStats.from_json(metadata.splits['train'].feature_stats[name])
    stacked = np.concatenate(arrays).astype(np.float64)
    assert stats.frames == len(stacked)
    np.testing.assert_allclose(stats.mean, stacked.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, stacked.std(0), rtol=1e-4)
