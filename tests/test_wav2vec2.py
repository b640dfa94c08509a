"""wav2vec 2.0 / HuBERT in JAX (memobert_jax/features/wav2vec2.py): parity with transformers, loading, the extractor.

The tiny checkpoints and reference outputs were written by tests/fixtures/make_wav2vec2_reference.py
(torch + transformers, in a scratch venv); these tests need neither.
"""

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from memobert_jax.features import wav2vec2
from memobert_jax import hf_import
from memobert_jax.hf_import import read_weights

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
MODELS = ('wav2vec2_tiny_base', 'wav2vec2_tiny_large', 'hubert_tiny')
TOLERANCE = 1e-4


def _reference(name: str) -> dict[str, np.ndarray]:
  with np.load(FIXTURES / name / 'reference.npz') as data:
    return dict(data)


@pytest.fixture(scope='module', params=MODELS)
def loaded(request):
  model, cfg = wav2vec2.load_checkpoint(FIXTURES / request.param)
  return request.param, model, cfg


@pytest.fixture(scope='module')
def extractors():
  """One extractor per (model, options), built once: each compiles its own shapes."""
  cache = {}

  def get(name: str, **options) -> wav2vec2.Wav2Vec2Features:
    key = (name, tuple(sorted(options.items())))
    if key not in cache:
      cache[key] = wav2vec2.Wav2Vec2Features(FIXTURES / name, **options)
    return cache[key]

  return get


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
  folder = tmp_path / name
  shutil.copytree(FIXTURES / name, folder)
  return folder


def _pooled(frames: np.ndarray, pool: int) -> np.ndarray:
  # The reference pooling, written differently from pool_frames: one mean per slice.
  return np.stack([frames[i:i + pool].mean(0) for i in range(0, len(frames), pool)])


# --- The encoder against transformers ----------------------------------------------------------------------------

def test_every_hidden_state_matches_transformers(loaded):
  name, model, cfg = loaded
  ref = _reference(name)
  for i in range(2):
    out = model(ref[f'input_{i}'][None])
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    np.testing.assert_allclose(out.last_hidden_state[0], ref[f'last_{i}'], atol=TOLERANCE, rtol=0)
    # transformers 5 records the stable layout's last hidden state before the final LayerNorm; ours has it.
    compared = cfg.num_hidden_layers if cfg.do_stable_layer_norm else cfg.num_hidden_layers + 1
    for j in range(compared):
      np.testing.assert_allclose(out.hidden_states[j][0], ref[f'hidden_{i}'][j], atol=TOLERANCE, rtol=0,
                                 err_msg=f'{name} waveform {i} hidden state {j}')
    assert int(out.frame_lengths[0]) == len(ref[f'last_{i}']) == cfg.frame_lengths(len(ref[f'input_{i}']))


def test_fixtures_cover_both_layouts_and_hubert_variants():
  configs = {name: wav2vec2.read_config(FIXTURES / name) for name in MODELS}
  base, large, hubert = (configs[n] for n in MODELS)
  assert (base.feat_extract_norm, base.do_stable_layer_norm, base.conv_bias) == ('group', False, False)
  assert (large.feat_extract_norm, large.do_stable_layer_norm, large.conv_bias) == ('layer', True, True)
  assert hubert.model_type == 'hubert' and not hubert.feat_proj_layer_norm and hubert.conv_pos_batch_norm


def test_masked_batch_matches_transformers_layer_norm_model():
  model, _ = wav2vec2.load_checkpoint(FIXTURES / 'wav2vec2_tiny_large')
  ref = _reference('wav2vec2_tiny_large')
  out = model(ref['batch_input'], ref['batch_mask'].sum(1))
  for row in range(2):
    frames = int(out.frame_lengths[row])
    assert frames == len(ref[f'last_{row}'])
    np.testing.assert_allclose(out.last_hidden_state[row, :frames], ref['batch_last'][row, :frames],
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out.last_hidden_state[row, :frames], ref[f'last_{row}'], atol=TOLERANCE, rtol=0)
    for j in range(len(out.hidden_states) - 1):
      np.testing.assert_allclose(out.hidden_states[j][row, :frames], ref['batch_hidden'][j, row, :frames],
                                 atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('name', ['wav2vec2_tiny_base', 'hubert_tiny'])
def test_padded_row_equals_its_unpadded_run_with_group_norm(name):
  """The 'group' norm's statistics and HuBERT's positional BatchNorm see only the valid frames."""
  model, _ = wav2vec2.load_checkpoint(FIXTURES / name)
  ref = _reference(name)
  short, long = ref['input_0'], ref['input_1']
  batch = np.zeros((2, len(long)), np.float32)
  batch[0, :len(short)], batch[1] = short, long
  out = model(batch, np.array([len(short), len(long)]))
  frames = len(ref['last_0'])
  np.testing.assert_allclose(out.last_hidden_state[0, :frames], ref['last_0'], atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(out.last_hidden_state[1], ref['last_1'], atol=TOLERANCE, rtol=0)
  # Without lengths the padding enters the statistics: what transformers warns about.
  unmasked = model(batch).last_hidden_state[0, :frames]
  assert np.abs(np.asarray(unmasked) - ref['last_0']).max() > 1e-2


# --- Loading -----------------------------------------------------------------------------------------------------

def test_safetensors_and_bin_give_the_same_parameters():
  """The .bin is a Wav2Vec2ForPreTraining state dict (prefix, heads, old weight-norm names), the .safetensors a
  Wav2Vec2Model's (parametrizations names)."""
  folder = FIXTURES / 'wav2vec2_tiny_base'
  cfg = wav2vec2.read_config(folder)
  from_bin = read_weights(folder / 'pytorch_model.bin')
  assert 'wav2vec2.encoder.pos_conv_embed.conv.weight_g' in from_bin and 'quantizer.codevectors' in from_bin
  a = wav2vec2.convert_state_dict(load_file(folder / 'model.safetensors'), cfg)
  b = wav2vec2.convert_state_dict(from_bin, cfg)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  model, _ = wav2vec2.load_checkpoint(folder, 'pytorch_model.bin')
  ref = _reference('wav2vec2_tiny_base')
  np.testing.assert_allclose(model(ref['input_1'][None]).last_hidden_state[0], ref['last_1'], atol=TOLERANCE,
                             rtol=0)


def test_base_config_arithmetic():
  cfg = wav2vec2.Wav2Vec2Config()  # transformers' defaults: the wav2vec2-base shapes
  assert cfg.min_samples == 400 and cfg.samples_per_frame == 320
  assert cfg.frame_lengths(160000) == 499  # 10 s at 50 Hz
  assert -(-499 // 3) == 167  # pooled by 3, then the first 64 are kept
  np.testing.assert_array_equal(cfg.frame_lengths(np.array([400, 719, 720, 16000])), [1, 1, 2, 49])


def _write_state(folder: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
  save_file(tensors, str(folder / 'model.safetensors'))


def test_unknown_missing_and_misshapen_parameters_are_named(tmp_path):
  folder = _copy('wav2vec2_tiny_base', tmp_path)
  (folder / 'pytorch_model.bin').unlink()
  tensors = load_file(folder / 'model.safetensors')

  _write_state(folder, {**tensors, 'encoder.extra.weight': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r'encoder\.extra\.weight'):
    wav2vec2.load_checkpoint(folder)

  _write_state(folder, {**tensors, 'classifier.weight': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match='classifier.weight'):
    wav2vec2.load_checkpoint(folder)

  dropped = dict(tensors)
  del dropped['encoder.layers.1.attention.k_proj.bias']
  _write_state(folder, dropped)
  with pytest.raises(ValueError, match=r'lacks the keys encoder\.layers\.1\.attention\.k_proj\.bias'):
    wav2vec2.load_checkpoint(folder)

  _write_state(folder, {**tensors, 'feature_projection.projection.bias': np.zeros(5, np.float32)})
  with pytest.raises(ValueError, match=r'feature_projection\.projection\.bias \(5,\) \(expected \(32,\)\)'):
    wav2vec2.load_checkpoint(folder)

  renamed = {k.replace('parametrizations.weight.original0', 'weight_g'): v for k, v in tensors.items()}
  _write_state(folder, {**renamed, 'encoder.pos_conv_embed.conv.parametrizations.weight.original0':
                        tensors['encoder.pos_conv_embed.conv.parametrizations.weight.original0']})
  with pytest.raises(ValueError, match='twice'):
    wav2vec2.load_checkpoint(folder)

  # The heads the features do not use are skipped, with or without the task model's prefix.
  _write_state(folder, {**{f'wav2vec2.{k}': v for k, v in tensors.items()},
                        'lm_head.weight': np.zeros((4, 32), np.float32), 'project_hid.bias': np.zeros(2, np.float32)})
  wav2vec2.load_checkpoint(folder)


def test_missing_files_and_unsupported_configs(tmp_path):
  with pytest.raises(FileNotFoundError, match='no config.json'):
    wav2vec2.load_checkpoint(tmp_path)
  folder = _copy('wav2vec2_tiny_base', tmp_path)
  for name in hf_import.WEIGHT_FILES:
    (folder / name).unlink()
  with pytest.raises(FileNotFoundError, match='model.safetensors, pytorch_model.bin'):
    wav2vec2.load_checkpoint(folder)
  config = json.loads((FIXTURES / 'wav2vec2_tiny_base' / 'config.json').read_text())
  for change, message in [({'model_type': 'wavlm'}, "model_type 'wavlm'"), ({'add_adapter': True}, 'adapters'),
                          ({'feat_extract_norm': 'batch'}, 'feat_extract_norm'),
                          ({'hidden_act': 'mish'}, "hidden_act 'mish'"),
                          ({'conv_kernel': [10, 3]}, 'one \\(and the same number of\\) entries')]:
    with pytest.raises(ValueError, match=message):
      wav2vec2.Wav2Vec2Config.from_hf({**config, **change})


# --- The extractor -----------------------------------------------------------------------------------------------

def test_pool_frames_keeps_a_partial_last_group():
  frames = np.arange(14, dtype=np.float32).reshape(7, 2)
  np.testing.assert_array_equal(wav2vec2.pool_frames(frames, 3), [[2, 3], [8, 9], [12, 13]])
  np.testing.assert_array_equal(wav2vec2.pool_frames(frames, 1), frames)
  assert wav2vec2.pool_frames(frames, 7).shape == (1, 2)


@pytest.mark.parametrize('name', MODELS)
def test_extractor_matches_pooled_transformers_states(name, extractors):
  ref = _reference(name)
  features = extractors(name, batch_size=2)
  # The input normalisation is Wav2Vec2FeatureExtractor's (or none, as preprocessor_config.json says).
  np.testing.assert_allclose(features.prepare(ref['wave_0']), ref['input_0'], atol=1e-5, rtol=0)
  out = features([ref['wave_0'], ref['wave_1']])
  for i in range(2):
    expected = _pooled(ref[f'last_{i}'], 3)
    assert out[i].shape == expected.shape and out[i].dtype == np.float32
    np.testing.assert_allclose(out[i], expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('name', MODELS)
def test_batched_equals_one_at_a_time(name, extractors):
  rng = np.random.default_rng(1)
  # Lengths across several buckets (0.05 s each here), in no order.
  waves = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (1500, 420, 3000, 811, 2222, 800)]
  batched = extractors(name, batch_size=4, bucket_seconds=0.05)(waves)
  single = extractors(name, batch_size=1, bucket_seconds=0.05)
  for i, wave in enumerate(waves):
    alone = single([wave])[0]
    assert batched[i].shape == alone.shape
    np.testing.assert_allclose(batched[i], alone, atol=TOLERANCE, rtol=0, err_msg=f'{name} waveform {i}')


def test_layer_selection(extractors):
  for name in ('wav2vec2_tiny_base', 'wav2vec2_tiny_large'):
    ref = _reference(name)
    wave = ref['wave_1']
    np.testing.assert_allclose(extractors(name, layer=0)([wave])[0], _pooled(ref['hidden_1'][0], 3),
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(extractors(name, layer=1)([wave])[0], _pooled(ref['hidden_1'][1], 3),
                               atol=TOLERANCE, rtol=0)
    # The last state is last_hidden_state in both layouts (the stable one's final LayerNorm applied).
    np.testing.assert_allclose(extractors(name, layer=2)([wave])[0], _pooled(ref['last_1'], 3),
                               atol=TOLERANCE, rtol=0)
  with pytest.raises(ValueError, match='layer 3 is out of range'):
    wav2vec2.Wav2Vec2Features(FIXTURES / 'wav2vec2_tiny_base', layer=3)
  with pytest.raises(ValueError, match='layer -4 is out of range'):
    wav2vec2.Wav2Vec2Features(FIXTURES / 'wav2vec2_tiny_base', layer=-4)


def test_cut_pool_and_max_frames(extractors):
  name = 'wav2vec2_tiny_base'
  wave = (0.2 * np.random.default_rng(2).standard_normal(2000)).astype(np.float32)
  cut = extractors(name, max_seconds=0.1, max_frames=None)  # 1600 samples
  whole = extractors(name, max_seconds=None, max_frames=None)
  cfg = cut.config
  frames = cfg.frame_lengths(1600)
  assert frames == 79
  out = cut([wave])[0]
  assert out.shape == (27, 32)  # ceil(79 / 3)
  np.testing.assert_allclose(out, whole([wave[:1600]])[0], atol=TOLERANCE, rtol=0)
  assert whole([wave])[0].shape == (-(-cfg.frame_lengths(2000) // 3), 32)
  kept = extractors(name, max_seconds=0.1, max_frames=20)([wave])[0]
  np.testing.assert_allclose(kept, out[:20], atol=TOLERANCE, rtol=0)
  pooled4 = extractors(name, max_seconds=0.1, max_frames=None, pool=4)([wave])[0]
  assert pooled4.shape == (20, 32)  # ceil(79 / 4)
  assert cut.frame_seconds == pytest.approx(3 * 20 / 16000)


def test_describe_is_json_metadata(extractors):
  features = extractors('wav2vec2_tiny_base')
  info = json.loads(json.dumps(features.describe()))
  weights = FIXTURES / 'wav2vec2_tiny_base' / 'model.safetensors'
  assert info['weights_sha256'] == hashlib.sha256(weights.read_bytes()).hexdigest()
  assert info['weights_file'] == 'model.safetensors' and info['model_type'] == 'wav2vec2'
  assert (info['layer'], info['pool'], info['max_frames'], info['max_seconds']) == (-1, 3, 64, 10.0)
  assert (info['sample_rate'], info['normalize'], info['dim'], features.dim) == (16000, True, 32, 32)
  assert info['checkpoint'] == str((FIXTURES / 'wav2vec2_tiny_base').resolve())


def test_bad_waveforms_are_refused(extractors):
  features = extractors('wav2vec2_tiny_base')
  wave = np.zeros(800, np.float32)
  with pytest.raises(ValueError, match=r'waveform 1 has shape \(2, 800\): mono'):
    features([wave, np.zeros((2, 800), np.float32)])
  with pytest.raises(ValueError, match='waveform 0 is int16'):
    features([np.zeros(800, np.int16)])
  with pytest.raises(ValueError, match=r'waveform 0 has 39 samples, fewer than the 40'):
    features([np.zeros(39, np.float32)])
  with pytest.raises(ValueError, match='non-finite'):
    features([np.full(800, np.nan, np.float32)])
  assert features([np.zeros(40, np.float32)])[0].shape == (1, 32)
  assert features([]) == []


def test_normalisation_needs_the_preprocessor_config_or_a_choice(tmp_path):
  folder = _copy('hubert_tiny', tmp_path)
  (folder / wav2vec2.PREPROCESSOR_FILE).unlink()
  with pytest.raises(ValueError, match='pass normalize=True or False'):
    wav2vec2.Wav2Vec2Features(folder)
  ref = _reference('hubert_tiny')
  out = wav2vec2.Wav2Vec2Features(folder, normalize=False)([ref['wave_0']])[0]
  np.testing.assert_allclose(out, _pooled(ref['last_0'], 3), atol=TOLERANCE, rtol=0)
