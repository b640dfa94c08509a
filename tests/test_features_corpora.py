"""Acoustic features, corpus adapters (on tiny fake release trees) and evaluation folds."""

import csv
import json

import numpy as np
import pytest
import soundfile

from data_prep import acoustic_features as af
from data_prep.corpora import common, generic, iemocap, msp_improv
from memobert_jax.data import folds

SR = 16000


def _tone(seconds: float, f0: float = 200.0, sr: int = SR) -> np.ndarray:
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def _read(path) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


# ---- acoustic features ----


@pytest.mark.parametrize('kinds', [('logmel',), ('mfcc',), ('pitch',), ('energy',), ('logmel', 'pitch', 'energy'),
                                   ('mfcc', 'pitch', 'energy')])
def test_feature_dim_matches_extraction(kinds):
  config = af.AcousticFeatureConfig(kinds=kinds, n_mels=24)
  features = af.extract_from_signal(_tone(1.3), SR, config)
  assert features.dtype == np.float32
  assert features.shape[1] == af.feature_dim(config)
  assert np.isfinite(features).all()


def test_feature_dims_add_up_and_follow_the_config():
  parts = {k: af.feature_dim(af.AcousticFeatureConfig(kinds=(k,), n_mels=32, n_mfcc=10, mfcc_delta_order=1))
           for k in af.KINDS}
  assert parts == {'logmel': 32, 'mfcc': 20, 'pitch': 2, 'energy': 1}
  combined = af.AcousticFeatureConfig(kinds=af.KINDS, n_mels=32, n_mfcc=10, mfcc_delta_order=1)
  assert af.feature_dim(combined) == sum(parts.values())


def test_frame_rate_pooling_and_max_frames():
  unpooled = af.AcousticFeatureConfig(kinds=('energy',), pool=1, max_frames=None)
  assert len(af.extract_from_signal(_tone(1.0), SR, unpooled)) == 1 + SR // 320  # 20 ms hop, centred frames
  pooled = af.AcousticFeatureConfig(kinds=('energy',), pool=3, max_frames=None)
  assert len(af.extract_from_signal(_tone(1.0), SR, pooled)) == -(-(1 + SR // 320) // 3)
  capped = af.AcousticFeatureConfig(kinds=('energy',))
  assert len(af.extract_from_signal(_tone(6.0), SR, capped)) == 64
  # Pooling is a plain mean over groups of frames.
  frames = af.extract_from_signal(_tone(1.0), SR, unpooled)
  np.testing.assert_allclose(af.extract_from_signal(_tone(1.0), SR, pooled)[0], frames[:3].mean(axis=0), rtol=1e-5)


def test_only_analysing_the_kept_frames_changes_nothing():
  signal = np.random.default_rng(0).normal(0, 0.1, SR * 6).astype(np.float32)
  kinds = ('logmel', 'mfcc', 'pitch', 'energy')
  every = af.extract_from_signal(signal, SR, af.AcousticFeatureConfig(kinds=kinds, max_frames=None))
  capped = af.extract_from_signal(signal, SR, af.AcousticFeatureConfig(kinds=kinds))
  mfcc_deltas = slice(64 + 13, 64 + 39)  # deltas are taken over the analysed frames only
  keep = np.ones(every.shape[1], bool)
  keep[mfcc_deltas] = False
  np.testing.assert_allclose(capped[:, keep], every[:64, keep], rtol=1e-4, atol=1e-4)


def test_max_seconds_cuts_the_audio():
  config = af.AcousticFeatureConfig(kinds=('energy',), pool=1, max_frames=None, max_seconds=2.0)
  assert len(af.extract_from_signal(_tone(5.0), SR, config)) == 1 + 2 * SR // 320


def test_pitch_of_a_tone_and_voicing_of_silence():
  config = af.AcousticFeatureConfig(kinds=('pitch',), pool=1, max_frames=None)
  signal = np.concatenate([_tone(1.0, 220.0), np.zeros(SR, np.float32)])
  features = af.extract_from_signal(signal, SR, config)
  f0 = np.exp(features[5:45, 0])
  assert np.all(np.abs(f0 - 220.0) < 5.0)
  assert features[5:45, 1].min() == 1.0  # voiced
  assert features[-20:, 1].max() == 0.0  # silence is unvoiced
  np.testing.assert_allclose(features[-20:, 0], features[45, 0], rtol=0.05)  # f0 held through the gap


def test_resampling_downmix_and_integer_input():
  config = af.AcousticFeatureConfig(kinds=('logmel', 'pitch'), n_mels=20)
  reference = af.extract_from_signal(_tone(1.0), SR, config)
  resampled = af.extract_from_signal(_tone(1.0, sr=8000), 8000, config)
  assert resampled.shape == reference.shape
  np.testing.assert_allclose(np.exp(resampled[2:-2, 20]), 200.0, rtol=0.03)
  stereo = af.extract_from_signal(np.stack([_tone(1.0), _tone(1.0)]), SR, config)
  np.testing.assert_allclose(stereo, reference, rtol=1e-4, atol=1e-4)
  pcm = (_tone(1.0) * 32767).astype(np.int16)
  np.testing.assert_allclose(af.extract_from_signal(pcm, SR, config), reference, rtol=1e-3, atol=1e-3)


def test_tiny_and_empty_signals():
  config = af.AcousticFeatureConfig(kinds=('mfcc', 'pitch', 'energy'))
  assert af.extract_from_signal(np.zeros(10, np.float32), SR, config).shape == (2, af.feature_dim(config))
  with pytest.raises(ValueError, match='empty'):
    af.extract_from_signal(np.zeros(0, np.float32), SR, config)


def test_extract_from_wav_and_clear_errors(tmp_path):
  config = af.AcousticFeatureConfig(kinds=('logmel', 'energy'), n_mels=16)
  path = tmp_path / 'a.wav'
  soundfile.write(path, _tone(1.0, sr=22050), 22050)
  from_file = af.extract_from_wav(path, config)
  assert from_file.shape == (17, 17)
  with pytest.raises(ValueError, match='missing.wav'):
    af.extract_from_wav(tmp_path / 'missing.wav', config)
  (tmp_path / 'junk.wav').write_bytes(b'not audio at all')
  with pytest.raises(ValueError, match='junk.wav'):
    af.extract_from_wav(tmp_path / 'junk.wav', config)
  soundfile.write(tmp_path / 'empty.wav', np.zeros(0, np.float32), SR)
  with pytest.raises(ValueError, match='empty.wav.*empty'):
    af.extract_from_wav(tmp_path / 'empty.wav', config)


def test_config_validation():
  with pytest.raises(ValueError, match='unknown acoustic feature kinds'):
    af.AcousticFeatureConfig(kinds=('logmel', 'wav2vec'))
  with pytest.raises(ValueError, match='repeat'):
    af.AcousticFeatureConfig(kinds=('energy', 'energy'))
  with pytest.raises(ValueError, match='n_fft'):
    af.AcousticFeatureConfig(win_ms=50.0)


def test_folder_cli(tmp_path):
  (tmp_path / 'wavs' / 'sub').mkdir(parents=True)
  soundfile.write(tmp_path / 'wavs' / 'x.wav', _tone(0.5), SR)
  soundfile.write(tmp_path / 'wavs' / 'sub' / 'y.wav', _tone(0.7), SR)
  af.main(['--input_dir', str(tmp_path / 'wavs'), '--output_dir', str(tmp_path / 'out'), '--kinds', 'mfcc,energy',
           '--mfcc_delta_order', '1'])
  y = np.load(tmp_path / 'out' / 'sub' / 'y.npy')
  assert y.shape[1] == 27 and np.load(tmp_path / 'out' / 'x.npy').shape[1] == 27


# ---- IEMOCAP ----

_IEMOCAP = {
    # session -> dialog -> [(utterance, label, transcript or None)]
    1: {'Ses01F_impro01': [('Ses01F_impro01_F000', 'neu', 'Excuse me.'), ('Ses01F_impro01_M000', 'ang', 'What?'),
                           ('Ses01F_impro01_M001', 'fru', 'I waited.'), ('Ses01F_impro01_F001', 'exc', 'Great!')],
        'Ses01M_script01_1': [('Ses01M_script01_1_F000', 'hap', 'Hello there.'),
                              ('Ses01M_script01_1_M000', 'xxx', 'Hm.')]},
    2: {'Ses02M_impro02': [('Ses02M_impro02_M000', 'sad', 'I miss her.'), ('Ses02M_impro02_F000', 'sad', 'I know.'),
                           ('Ses02M_impro02_F001', 'sur', 'Really?')]},
}


def _fake_iemocap(root, missing_transcript: str | None = None):
  for session, dialogs in _IEMOCAP.items():
    base = root / f'Session{session}'
    (base / 'dialog' / 'EmoEvaluation' / 'Categorical').mkdir(parents=True)
    (base / 'dialog' / 'transcriptions').mkdir(parents=True)
    for dialog, utterances in dialogs.items():
      evaluation = ['% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]', '']
      transcript = []
      for i, (uid, label, text) in enumerate(utterances):
        evaluation += [f'[{i + 0.5:.4f} - {i + 1.25:.4f}]\t{uid}\t{label}\t[2.5000, 2.5000, 2.5000]',
                       f'C-E1:\t{label};\t()', 'A-E1:\tval 3; act 2; dom  2;\t()', '']
        if uid != missing_transcript:
          transcript.append(f'{uid} [{i:07.4f}-{i + 1:07.4f}]: {text}')
        wav_dir = base / 'sentences' / 'wav' / dialog
        wav_dir.mkdir(parents=True, exist_ok=True)
        soundfile.write(wav_dir / f'{uid}.wav', _tone(0.6, 150 + 10 * i), SR)
      transcript.append('M: [BREATHING]')
      (base / 'dialog' / 'EmoEvaluation' / f'{dialog}.txt').write_text('\n'.join(evaluation))
      (base / 'dialog' / 'EmoEvaluation' / f'._{dialog}.txt').write_bytes(b'\x00\x05junk')
      (base / 'dialog' / 'transcriptions' / f'{dialog}.txt').write_text('\n'.join(transcript))


def test_iemocap_labels_speakers_and_counted_drops(tmp_path):
  _fake_iemocap(tmp_path / 'release')
  out = tmp_path / 'out' / 'manifest.jsonl'
  report = iemocap.build_manifest(tmp_path / 'release', out, sessions=(1, 2))
  records = {r['id']: r for r in _read(out)}
  assert set(records) == {'Ses01F_impro01_F000', 'Ses01F_impro01_M000', 'Ses01F_impro01_F001',
                          'Ses01M_script01_1_F000', 'Ses02M_impro02_M000', 'Ses02M_impro02_F000'}
  assert records['Ses01F_impro01_F001']['label'] == 'happy'  # exc merged into happy
  assert records['Ses01M_script01_1_F000']['label'] == 'happy'
  assert records['Ses01F_impro01_M000']['label'] == 'anger'
  assert records['Ses02M_impro02_F000']['label'] == 'sad'
  assert records['Ses01F_impro01_F000']['text'] == 'Excuse me.'
  # The speaker is the utterance's gender letter, not the dialog leader's.
  assert records['Ses01F_impro01_M000']['speaker'] == '1M'
  assert records['Ses01M_script01_1_F000']['speaker'] == '1F'
  assert records['Ses02M_impro02_F000']['session'] == '2' and records['Ses02M_impro02_F000']['speaker'] == '2F'
  assert report.kept == 6
  assert report.dropped == {'label fru': 1, 'label xxx': 1, 'label sur': 1}
  assert report.labels == {'anger': 1, 'happy': 2, 'neutral': 1, 'sad': 2}
  wav = out.parent / records['Ses01F_impro01_F000']['wav']
  assert wav.resolve() == (tmp_path / 'release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav')
  assert 'dropped 3' in report.summary()
  assert list(records['Ses01F_impro01_F000']) == list(common.MANIFEST_KEYS)


def test_iemocap_missing_transcript_is_an_error(tmp_path):
  _fake_iemocap(tmp_path / 'release', missing_transcript='Ses02M_impro02_M000')
  with pytest.raises(FileNotFoundError, match='Ses02M_impro02_M000'):
    iemocap.build_manifest(tmp_path / 'release', tmp_path / 'm.jsonl', sessions=(1, 2))


def test_iemocap_transcript_that_is_not_utf8_is_an_error_naming_file_and_line(tmp_path):
  _fake_iemocap(tmp_path / 'release')
  transcript = next((tmp_path / 'release' / 'Session2' / 'dialog' / 'transcriptions').glob('*.txt'))
  lines = transcript.read_bytes().split(b'\n')
  lines[1] = lines[1].replace(b':', b': caf\xe9', 1)  # latin-1, as old transcript editors wrote it
  transcript.write_bytes(b'\n'.join(lines))
  with pytest.raises(ValueError, match=f'{transcript}:2: bytes are not UTF-8 \\(0xe9'):
    iemocap.build_manifest(tmp_path / 'release', tmp_path / 'm.jsonl', sessions=(1, 2))


def test_iemocap_missing_session_is_an_error(tmp_path):
  _fake_iemocap(tmp_path / 'release')
  with pytest.raises(FileNotFoundError, match='Session3'):
    iemocap.build_manifest(tmp_path / 'release', tmp_path / 'm.jsonl')


def test_iemocap_precomputed_and_extracted_features(tmp_path):
  _fake_iemocap(tmp_path / 'release')
  visual_dir = tmp_path / 'visual'
  (visual_dir / '1').mkdir(parents=True)
  (visual_dir / '2').mkdir()
  for session, dialogs in _IEMOCAP.items():
    for utterances in dialogs.values():
      for uid, _, _ in utterances:
        np.save(visual_dir / str(session) / f'{uid}.npy', np.ones((3, 342), np.float32))
  out = tmp_path / 'out' / 'manifest.jsonl'
  config = af.AcousticFeatureConfig(kinds=('logmel', 'energy'), n_mels=8)
  options = common.FeatureOptions(visual_dir=str(visual_dir), visual_pattern='{session}/{id}.npy',
                                  extract_acoustic=config)
  iemocap.build_manifest(tmp_path / 'release', out, options, sessions=(1, 2))
  for record in _read(out):
    assert np.load(out.parent / record['visual']).shape == (3, 342)
    acoustic = np.load(out.parent / record['acoustic'])
    assert acoustic.shape[1] == af.feature_dim(config) == 9
  # A missing precomputed file is an error unless allowed, then null and counted.
  (visual_dir / '2' / 'Ses02M_impro02_F000.npy').unlink()
  options = common.FeatureOptions(visual_dir=str(visual_dir), visual_pattern='{session}/{id}.npy')
  with pytest.raises(FileNotFoundError, match='Ses02M_impro02_F000'):
    iemocap.build_manifest(tmp_path / 'release', out, options, sessions=(1, 2))
  options = common.FeatureOptions(visual_dir=str(visual_dir), visual_pattern='{session}/{id}.npy', allow_missing=True)
  report = iemocap.build_manifest(tmp_path / 'release', out, options, sessions=(1, 2))
  assert report.missing_features == {'visual': 1}
  assert {r['id']: r['visual'] for r in _read(out)}['Ses02M_impro02_F000'] is None


def test_iemocap_cli(tmp_path, capsys):
  _fake_iemocap(tmp_path / 'release')
  iemocap.main(['--root', str(tmp_path / 'release'), '--output', str(tmp_path / 'm.jsonl'), '--sessions', '1,2'])
  assert 'kept 6 utterances' in capsys.readouterr().out
  assert len(_read(tmp_path / 'm.jsonl')) == 6


def test_parse_iemocap_utterance_id():
  assert iemocap.parse_utterance_id('Ses05F_script02_2_M044') == ('5', '5M', 'Ses05F_script02_2')
  with pytest.raises(ValueError, match='not an IEMOCAP'):
    iemocap.parse_utterance_id('Ses05F_script02')


# ---- MSP-IMPROV ----

_MSP_BLOCKS = [
    ('UTD-IMPROV-S01A-F01-S-FM01', 'A'), ('UTD-IMPROV-S01A-F01-S-MF01', 'H'), ('UTD-IMPROV-S02H-M01-S-MF02', 'N'),
    ('UTD-IMPROV-S02H-M01-R-MM01', 'H'), ('UTD-IMPROV-S03S-F02-S-FM01', 'S'), ('UTD-IMPROV-S03S-M02-S-MF01', 'O'),
    ('UTD-IMPROV-S04N-M02-P-MF03', 'N'), ('UTD-IMPROV-S05A-M02-S-MF01', 'X'), ('UTD-IMPROV-S06S-F02-S-FM02', 'N'),
]


def _fake_msp(root, skip_transcript: str | None = None):
  lines = []
  for name, label in _MSP_BLOCKS:
    lines += [f'{name}.avi; {label}; A:2.8; V:3.2; D:3.0; N:3.4', 'p01-S; Angry; A:3; V:2; D:3; N:4',
              'p02-S; Angry; A:2; V:3; D:3; N:3', '']
  root.mkdir(parents=True)
  evaluation = root / 'Evalution.txt'
  evaluation.write_text('\n'.join(lines))
  for name, _ in _MSP_BLOCKS:
    uid = name.replace('UTD-', 'MSP-')
    session = int(uid.split('-')[3][1:])
    folder = root / 'Text' / f'session{session}'
    folder.mkdir(parents=True, exist_ok=True)
    if uid != skip_transcript:
      (folder / f'{uid}.txt').write_text(f'  words of {uid[-4:]}\n')
    wav_folder = root / 'Audio' / f'session{session}' / uid.split('-')[2] / uid.split('-')[4]
    wav_folder.mkdir(parents=True, exist_ok=True)
    soundfile.write(wav_folder / f'{uid}.wav', _tone(0.4), SR)
  return evaluation


def test_msp_improv_labels_types_speakers_and_transcripts(tmp_path):
  evaluation = _fake_msp(tmp_path / 'msp')
  out = tmp_path / 'out.jsonl'
  report = msp_improv.build_manifest(evaluation, out, transcript_dir=tmp_path / 'msp' / 'Text',
                                     wav_dir=tmp_path / 'msp' / 'Audio')
  records = {r['id']: r for r in _read(out)}
  assert set(records) == {'MSP-IMPROV-S01A-F01-S-FM01', 'MSP-IMPROV-S01A-F01-S-MF01', 'MSP-IMPROV-S02H-M01-S-MF02',
                          'MSP-IMPROV-S03S-F02-S-FM01', 'MSP-IMPROV-S06S-F02-S-FM02'}
  first = records['MSP-IMPROV-S01A-F01-S-FM01']
  assert (first['label'], first['session'], first['speaker']) == ('anger', '1', '1F')
  assert records['MSP-IMPROV-S01A-F01-S-MF01']['label'] == 'happy'
  assert records['MSP-IMPROV-S02H-M01-S-MF02']['speaker'] == '1M'
  assert records['MSP-IMPROV-S03S-F02-S-FM01']['label'] == 'sad'
  assert records['MSP-IMPROV-S06S-F02-S-FM02']['label'] == 'neutral'
  assert first['text'] == 'words of FM01'
  assert (out.parent / first['wav']).is_file()
  assert report.dropped == {'type R': 1, 'type P': 1, 'label O': 1, 'label X': 1}
  assert report.kept == 5


def test_msp_improv_other_types_and_no_transcripts(tmp_path):
  evaluation = _fake_msp(tmp_path / 'msp')
  report = msp_improv.build_manifest(evaluation, tmp_path / 'out.jsonl', types=('S', 'R', 'P'))
  assert report.kept == 7 and report.dropped == {'label O': 1, 'label X': 1}
  assert all(r['text'] == '' and r['wav'] is None for r in _read(tmp_path / 'out.jsonl'))


def test_msp_improv_missing_transcript(tmp_path):
  evaluation = _fake_msp(tmp_path / 'msp', skip_transcript='MSP-IMPROV-S03S-F02-S-FM01')
  with pytest.raises(FileNotFoundError, match='MSP-IMPROV-S03S-F02-S-FM01'):
    msp_improv.build_manifest(evaluation, tmp_path / 'out.jsonl', transcript_dir=tmp_path / 'msp' / 'Text')
  report = msp_improv.build_manifest(evaluation, tmp_path / 'out.jsonl', transcript_dir=tmp_path / 'msp' / 'Text',
                                     drop_missing_transcripts=True)
  assert report.dropped['no transcript'] == 1 and report.kept == 4


@pytest.mark.parametrize('text, message', [
    ('UTD-IMPROV-S01A-F01-S-FM01.avi A; A:2.8\n', 'expected'),
    ('p01-S; Angry; A:3\n\nUTD-IMPROV-S01A-F01-S-FM01.avi; A; A:2.8\n', 'outside an utterance block'),
    ('UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:2.8\n\nUTD-IMPROV-S01A-F01-S-FM01.avi; N; A:2.8\n', 'already evaluated'),
    ('nothing here\n', 'outside'),
    ('\n\n', 'no utterance blocks'),
])
def test_msp_improv_strict_parser(tmp_path, text, message):
  path = tmp_path / 'Evalution.txt'
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    msp_improv.parse_evaluation(path)


# ---- generic ----


def test_generic_csv_mapping_label_map_and_paths(tmp_path):
  data = tmp_path / 'data'
  (data / 'feats').mkdir(parents=True)
  np.save(data / 'feats' / 'u1.npy', np.zeros((2, 5), np.float32))
  soundfile.write(data / 'u2.wav', _tone(0.5), SR)
  with open(data / 'list.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['utt', 'sentence', 'emo', 'spk', 'sess', 'vis', 'audio'])
    writer.writerow(['u1', 'hello there', 'ang', 'A', 's1', 'feats/u1.npy', ''])
    writer.writerow(['u2', 'fine thanks', 'exc', 'B', 's1', '', 'u2.wav'])
    writer.writerow(['u3', 'whatever', 'fru', 'B', 's1', '', ''])
    writer.writerow(['u4', 'no label', '', 'B', 's2', '', ''])
  out = tmp_path / 'out' / 'manifest.jsonl'
  keys = dict(id='utt', text='sentence', label='emo', speaker='spk', session='sess', visual='vis', wav='audio')
  report = generic.build_manifest(data / 'list.csv', out, keys, label_map={'ang': 'anger', 'exc': 'happy'},
                                  keep_labels=common.EMOTIONS)
  records = {r['id']: r for r in _read(out)}
  assert set(records) == {'u1', 'u2', 'u4'}
  assert records['u1']['label'] == 'anger' and records['u2']['label'] == 'happy' and records['u4']['label'] is None
  assert records['u1']['speaker'] == 'A' and records['u4']['session'] == 's2'
  assert np.load(out.parent / records['u1']['visual']).shape == (2, 5)
  assert (out.parent / records['u2']['wav']).resolve() == (data / 'u2.wav').resolve()
  assert records['u1']['split'] is None
  assert report.dropped == {'label fru': 1}


def test_generic_jsonl_errors_and_extraction(tmp_path):
  soundfile.write(tmp_path / 'a.wav', _tone(0.5), SR)
  rows = [{'key': 'a', 'transcript': 'one', 'wav': 'a.wav'}, {'key': 'b', 'transcript': 'two', 'wav': 'b.wav'}]
  listing = tmp_path / 'list.jsonl'
  listing.write_text('\n'.join(json.dumps(r) for r in rows))
  keys = dict(id='key', text='transcript', wav='wav')
  with pytest.raises(FileNotFoundError, match='b.wav'):
    generic.build_manifest(listing, tmp_path / 'm.jsonl', keys)
  with pytest.raises(KeyError, match='speaker_col'):
    generic.build_manifest(listing, tmp_path / 'm.jsonl', dict(keys, speaker='speaker_col'))
  config = af.AcousticFeatureConfig(kinds=('energy',))
  report = generic.build_manifest(listing, tmp_path / 'm.jsonl', keys,
                                  features=common.FeatureOptions(extract_acoustic=config, allow_missing=True))
  records = {r['id']: r for r in _read(tmp_path / 'm.jsonl')}
  assert np.load(tmp_path / records['a']['acoustic']).shape[1] == 1
  assert records['b']['acoustic'] is None and records['b']['wav'] is None
  assert report.missing_features == {'wav': 1, 'acoustic (no audio)': 1}


def test_generic_duplicate_ids_and_cli(tmp_path, capsys):
  listing = tmp_path / 'list.jsonl'
  listing.write_text('{"i": "x", "t": "a"}\n{"i": "x", "t": "b"}\n')
  with pytest.raises(ValueError, match='duplicate'):
    generic.main(['--input', str(listing), '--output', str(tmp_path / 'm.jsonl'), '--id_key', 'i', '--text_key', 't'])
  listing.write_text('{"i": "x", "t": "a", "e": "neu"}\n{"i": "y", "t": "b", "e": "sad"}\n')
  generic.main(['--input', str(listing), '--output', str(tmp_path / 'm.jsonl'), '--id_key', 'i', '--text_key', 't',
                '--label_key', 'e', '--label_map', 'neu=neutral'])
  assert [r['label'] for r in _read(tmp_path / 'm.jsonl')] == ['neutral', 'sad']
  assert 'kept 2' in capsys.readouterr().out


# ---- folds ----


def _examples(num_sessions: int, per_speaker: int = 3) -> list[dict]:
  return [dict(id=f's{s}{g}{i}', session=str(s), speaker=f'{s}{g}')
          for s in range(1, num_sessions + 1) for g in 'FM' for i in range(per_speaker)]


@pytest.mark.parametrize('protocol, num_sessions, odd_valid_gender', [('iemocap', 5, 'F'), ('msp_improv', 6, 'M')])
def test_session_folds(protocol, num_sessions, odd_valid_gender):
  examples = _examples(num_sessions)
  all_folds = folds.make_folds(protocol, examples)
  assert len(all_folds) == 2 * num_sessions
  assert [f.index for f in all_folds] == list(range(1, 2 * num_sessions + 1))
  for fold in all_folds:
    split = folds.split_ids(fold, examples)
    ids = [i for part in split.values() for i in part]
    assert sorted(ids) == sorted(e['id'] for e in examples)  # a partition of the corpus
    speakers = {name: {e['speaker'] for e in examples if e['id'] in split[name]} for name in folds.SPLITS}
    assert speakers['valid'] == {fold.valid_speaker} and speakers['test'] == {fold.test_speaker}
    assert not speakers['train'] & (speakers['valid'] | speakers['test'])
    assert fold.held_out_session not in fold.train_sessions
    session = str((fold.index + 1) // 2)
    expected_valid = session + (odd_valid_gender if fold.index % 2 else 'FM'.replace(odd_valid_gender, ''))
    assert fold.held_out_session == session and fold.valid_speaker == expected_valid
  # Folds 2k-1 and 2k swap the two speakers of session k.
  assert all_folds[0].valid_speaker == all_folds[1].test_speaker


def test_fold_errors():
  examples = _examples(5)
  with pytest.raises(ValueError, match='needs 6 sessions'):
    folds.make_folds('msp_improv', examples)
  third = examples + [dict(id='extra', session='3', speaker='3X')]
  with pytest.raises(ValueError, match="session '3' must have exactly 2 speakers"):
    folds.make_folds('iemocap', third)
  one = [e for e in examples if e['speaker'] != '2M']
  with pytest.raises(ValueError, match="session '2'"):
    folds.make_folds('iemocap', one)
  with pytest.raises(ValueError, match='unknown fold protocol'):
    folds.make_folds('loso', examples)
  with pytest.raises(ValueError, match='needs a session and a speaker'):
    folds.make_folds('iemocap', examples + [dict(id='z', session=None, speaker='1F')])
  fold = folds.make_folds('iemocap', examples)[0]
  with pytest.raises(ValueError, match='not part of fold 1'):
    folds.split_ids(fold, [dict(id='q', session='9', speaker='9F')])


def test_sessions_protocol_given_split_and_low_resource():
  assert len(folds.make_folds('sessions', _examples(3))) == 6
  examples = [dict(id='a', split='train'), dict(id='b', split='valid'), dict(id='c', split='test'),
              dict(id='d', split=None)]
  (fold,) = folds.make_folds('given', examples)
  assert folds.split_ids(fold, examples) == {'train': ['a', 'd'], 'valid': ['b'], 'test': ['c']}
  with pytest.raises(ValueError, match='splits are'):
    folds.split_ids(fold, [dict(id='e', split='dev')])
  examples = _examples(5, per_speaker=20)
  fold = folds.make_folds('iemocap', examples)[4]
  full = folds.split_ids(fold, examples)
  small = folds.split_ids(fold, examples, train_fraction=0.1, seed=3)
  assert len(small['train']) == 16 and set(small['train']) < set(full['train'])
  assert small['valid'] == full['valid'] and small['test'] == full['test']
  assert small == folds.split_ids(fold, examples, train_fraction=0.1, seed=3)
  assert small != folds.split_ids(fold, examples, train_fraction=0.1, seed=4)
