"""Whisper's encoder in JAX (memobert_jax/features/whisper.py): the log-mel input and every hidden state against
transformers, the CTranslate2 reader against CTranslate2's own writer, and the extractor.

The tiny checkpoints and reference outputs were written by tests/fixtures/make_whisper_reference.py; these tests
need neither torch, transformers nor ctranslate2.
"""

import pathlib
import shutil
import struct

import numpy as np
import pytest

from memobert_jax.features import wav2vec2, whisper

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
FOLDERS = ('whisper_tiny', 'whisper_tiny_ct2')
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def reference() -> dict[str, np.ndarray]:
  with np.load(FIXTURES / 'whisper_tiny' / 'reference.npz') as data:
    return dict(data)


@pytest.fixture(scope='module', params=FOLDERS)
def loaded(request):
  return whisper.load_checkpoint(FIXTURES / request.param)


def test_log_mel_matches_transformers_feature_extractor(reference, loaded):
  _, cfg = loaded
  for i in range(2):
    np.testing.assert_allclose(whisper.log_mel(reference[f'wave_{i}'], cfg), reference[f'mel_{i}'], atol=1e-4)


def test_every_hidden_state_matches_transformers(reference, loaded):
  model, cfg = loaded
  assert (cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.max_source_positions) == (24, 2, 3, 50)
  for i in range(2):
    states = np.stack([np.asarray(s[0]) for s in model(reference[f'mel_{i}'][None])])
    np.testing.assert_allclose(states, reference[f'hidden_{i}'], atol=TOLERANCE, rtol=TOLERANCE)


def test_extractor_keeps_the_clips_positions_pooled(reference):
  extractor = whisper.WhisperFeatures(FIXTURES / 'whisper_tiny_ct2', layer=1, pool=3, max_frames=None,
                                      max_seconds=None, batch_size=2)
  waves = [reference['wave_0'], reference['wave_1'], reference['wave_0'][:500]]
  frames = extractor(waves)
  for i, positions in enumerate((22, 39, 2)):  # ceil(samples / 320): the clip's positions of 20 ms
    assert frames[i].shape == (-(-positions // 3), 24)
    if i < 2:
      hidden = reference[f'hidden_{i}'][1]
      expected = np.stack([hidden[j:min(j + 3, positions)].mean(0) for j in range(0, positions, 3)])
      np.testing.assert_allclose(frames[i], expected, atol=TOLERANCE, rtol=TOLERANCE)
  # A clip's frames do not depend on the batch it is in.
  np.testing.assert_allclose(extractor([waves[1]])[0], frames[1], atol=1e-5)
  assert extractor.describe()['weights_sha256'] == extractor.describe()['weights_sha256'] != ''
  assert extractor.frame_seconds == pytest.approx(0.06)


def test_extractor_cuts_to_max_frames_and_rejects_bad_waveforms(reference):
  extractor = whisper.WhisperFeatures(FIXTURES / 'whisper_tiny', pool=2, max_frames=4, max_seconds=0.5)
  assert extractor([reference['wave_1']])[0].shape == (4, 24)
  with pytest.raises(ValueError, match='waveform 1 has shape'):
    extractor([reference['wave_0'], np.zeros((2, 100), np.float32)])
  with pytest.raises(ValueError, match='waveform 0 is int16'):
    extractor([np.zeros(100, np.int16)])
  with pytest.raises(ValueError, match='waveform 0 is empty'):
    extractor([np.zeros(0, np.float32)])
  with pytest.raises(ValueError, match="at most the model's window, 1 s"):
    whisper.WhisperFeatures(FIXTURES / 'whisper_tiny', max_seconds=2.0)


def _ct2_copy(tmp_path: pathlib.Path) -> pathlib.Path:
  folder = tmp_path / 'ct2'
  shutil.copytree(FIXTURES / 'whisper_tiny_ct2', folder)
  return folder


def test_a_truncated_or_foreign_ct2_file_is_refused_with_its_path(tmp_path):
  folder = _ct2_copy(tmp_path)
  data = (folder / whisper.CT2_FILE).read_bytes()
  (folder / whisper.CT2_FILE).write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r'model.bin ends early'):
    whisper.load_checkpoint(folder)
  # Another spec name, same length (the name is a u16 length and NUL-terminated bytes after the version).
  name_length = struct.unpack_from('<H', data, 4)[0]
  (folder / whisper.CT2_FILE).write_bytes(data[:6] + b'X' * (name_length - 1) + data[6 + name_length - 1:])
  with pytest.raises(ValueError, match='not a WhisperSpec'):
    whisper.load_checkpoint(folder)


def test_a_folder_without_weights_or_with_other_keys_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match='has no Whisper weights'):
    whisper.load_checkpoint(tmp_path)
  spec, variables = whisper.read_ct2(FIXTURES / 'whisper_tiny_ct2' / whisper.CT2_FILE)
  cfg, named = whisper._ct2_encoder(variables, 'model.bin')
  del named['layers.1.fc2.bias']
  named['layers.1.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r'unknown layers.1.extra.weight.*missing layers.1.fc2.bias'):
    whisper._check(named, cfg, 'model.bin')


def test_the_layers_are_wav2vec2s_pre_ln_layers_with_whispers_names():
  cfg = whisper.WhisperConfig(d_model=24, encoder_layers=1, encoder_attention_heads=3, encoder_ffn_dim=40)
  assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.do_stable_layer_norm) == (
      24, 3, 40, True)
  assert isinstance(whisper.WhisperEncoder(cfg, rngs=whisper.nnx.Rngs(0)).layers[0], wav2vec2.EncoderLayer)


def test_the_shard_writer_names_whisper_and_its_weights_and_refuses_other_weights(tmp_path):
  from data_prep import acoustic_features
  folder = _ct2_copy(tmp_path)
  config = acoustic_features.SpeechEncoderConfig(str(folder), model='whisper', max_seconds=1.0)
  description = acoustic_features.describe(config)
  assert description['extractor'] == 'whisper' and len(description['weights_sha256']) == 64
  assert acoustic_features.from_description(description) == config
  assert isinstance(acoustic_features.encoder_extractor(config), whisper.WhisperFeatures)
  with (folder / whisper.CT2_FILE).open('ab') as f:
    f.write(b'\0')
  acoustic_features._weights_sha256.cache_clear()
  with pytest.raises(ValueError, match='holds other weights than the features were made with'):
    acoustic_features.from_description(description)
  with pytest.raises(ValueError, match="speech encoder 'whispr' is not one of"):
    acoustic_features.SpeechEncoderConfig(str(folder), model='whispr')
