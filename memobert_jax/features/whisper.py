"""Whisper's audio encoder in Flax NNX, from Hugging Face or CTranslate2 checkpoints, and acoustic frames from it.

An alternative to wav2vec 2.0 (memobert_jax/features/wav2vec2.py) for the acoustic frames: a
speech encoder pretrained on far more speech than the target corpus, at the same 50 Hz. The
model is transformers' WhisperEncoder in inference mode:

- Input: Whisper's log-mel spectrogram of 16 kHz audio zero-padded to the model's window
  (30 s: 2 x max_source_positions frames of 10 ms). STFT of 400 samples (Hann), hop 160,
  power, librosa's Slaney mel filters, log10 floored at 1e-10, then at 8 below the
  window's maximum, (x + 4) / 4.
- Two convolutions of 3 taps (the second strided by 2), each followed by the exact GELU; the
  learnt position table added; pre-LN transformer layers (the key projection has no bias);
  a final LayerNorm.

The audio is always padded to the whole window, as Whisper was trained: the frames of the
clip then are those of the first ceil(samples / 320) positions, and the silence after it is
dropped. Hidden states index as in transformers: `hidden_states[0]` is the input of the
first layer, `hidden_states[i]` the output of layer i, the last one after the final LayerNorm.

Checkpoints:
- Hugging Face (WhisperModel / WhisperForConditionalGeneration / WhisperEncoder folders):
  config.json and model.safetensors or pytorch_model.bin; keys with or without `model.`,
  the decoder and the output projection skipped.
- CTranslate2 (faster-whisper folders): model.bin of a WhisperSpec, float32, float16 or
  bfloat16 (quantised int8 models are refused); the shapes come from the tensors and the
  heads from `encoder/num_heads`. Its fused query/key/value projection is split back.

Names (Hugging Face, after `encoder.` | CTranslate2, after `encoder/`) -> parameters here:

  conv1.{weight,bias} | conv1/{weight,bias}                     conv1/{kernel,bias}  (likewise conv2)
  embed_positions.weight | position_encodings/encodings         positions
  layers.{i}.self_attn.{q,k,v}_proj | layer_{i}/self_attention/linear_0 (fused)
                                                                layers/{i}/attention/qkv/{kernel,bias}
  layers.{i}.self_attn.out_proj | .../self_attention/linear_1   layers/{i}/attention/out/{kernel,bias}
  layers.{i}.self_attn_layer_norm | .../self_attention/layer_norm
                                                                layers/{i}/attention_norm/{scale,bias}
  layers.{i}.fc1, fc2 | .../ffn/linear_0, linear_1              layers/{i}/intermediate, output
  layers.{i}.final_layer_norm | .../ffn/layer_norm              layers/{i}/feed_forward_norm
  layer_norm | layer_norm                                       final_norm/{scale,bias}
"""

import dataclasses
import json
import math
import pathlib
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import librosa
import numpy as np
from flax import nnx

from memobert_jax import hf_import
from memobert_jax.data import schema
from memobert_jax.features import wav2vec2
from memobert_jax.init_checkpoint import listing
from memobert_jax.model.layers import LayerNorm, constant_param, gelu

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
# The encoder's second convolution halves the 100 Hz mel frames: one position per 20 ms.
SAMPLES_PER_POSITION = 2 * HOP
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units below the window's maximum
CT2_FILE = 'model.bin'
# CTranslate2's dtype codes (its binary format, version >= 4).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: 'bfloat16'}
_HF_SKIPPED = re.compile(r'(decoder\..+|proj_out\..+)')
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
  """The encoder's shape; field names as in transformers' WhisperConfig."""
  d_model: int = 512
  encoder_layers: int = 6
  encoder_attention_heads: int = 8
  encoder_ffn_dim: int = 2048
  num_mel_bins: int = 80
  max_source_positions: int = 1500

  def __post_init__(self):
    if self.d_model % self.encoder_attention_heads:
      raise ValueError(f'd_model {self.d_model} is not divisible by encoder_attention_heads '
                       f'{self.encoder_attention_heads}')

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> 'WhisperConfig':
    if hf.get('model_type') != 'whisper':
      raise ValueError(f'config.json has model_type {hf.get("model_type")!r}, not whisper')
    if hf.get('activation_function', 'gelu') != 'gelu':
      raise ValueError(f'activation_function {hf["activation_function"]!r} is not supported (gelu)')
    return cls(**{f.name: hf[f.name] for f in dataclasses.fields(cls) if f.name in hf})

  @property
  def window_samples(self) -> int:
    return self.max_source_positions * SAMPLES_PER_POSITION

  # The names wav2vec2.EncoderLayer reads: Whisper's layers are its pre-LN ('stable') layout.
  hidden_size = property(lambda self: self.d_model)
  num_attention_heads = property(lambda self: self.encoder_attention_heads)
  intermediate_size = property(lambda self: self.encoder_ffn_dim)
  layer_norm_eps = LAYER_NORM_EPS
  do_stable_layer_norm = True
  hidden_act = 'gelu'


def log_mel(wave: np.ndarray, cfg: WhisperConfig) -> np.ndarray:
  """Whisper's input [2 x max_source_positions, num_mel_bins] of one waveform (zero-padded to the window)."""
  padded = np.zeros(cfg.window_samples, np.float32)
  padded[:len(wave)] = wave[:cfg.window_samples]
  spectrum = librosa.stft(padded, n_fft=N_FFT, hop_length=HOP, window='hann', center=True, pad_mode='reflect')
  power = np.abs(spectrum[:, :-1]) ** 2  # Whisper drops the last frame: 100 frames a second exactly.
  mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=cfg.num_mel_bins) @ power
  log = np.log10(np.maximum(mel, LOG_FLOOR))
  log = np.maximum(log, log.max() - DYNAMIC_RANGE)
  return ((log + 4.0) / 4.0).T.astype(np.float32)


class WhisperEncoder(nnx.Module):
  """transformers' WhisperEncoder in inference mode, float32."""

  def __init__(self, cfg: WhisperConfig, *, rngs: nnx.Rngs):
    d = cfg.d_model
    self.conv1 = wav2vec2.Conv1d(cfg.num_mel_bins, d, 3, padding=1, use_bias=True, rngs=rngs)
    self.conv2 = wav2vec2.Conv1d(d, d, 3, stride=2, padding=1, use_bias=True, rngs=rngs)
    self.positions = constant_param(0.0, (cfg.max_source_positions, d), (None, None), jnp.float32)
    self.layers = nnx.List([wav2vec2.EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.encoder_layers)])
    self.final_norm = LayerNorm(d, eps=LAYER_NORM_EPS, **wav2vec2.F32)

  def __call__(self, mel: jax.Array) -> tuple[jax.Array, ...]:
    """mel [batch, 2 x positions, mels] -> hidden states (encoder_layers + 1 of [batch, positions, d_model])."""
    x = gelu(self.conv1(mel.astype(jnp.float32)))
    x = gelu(self.conv2(x))
    states = [x + self.positions[:x.shape[1]]]
    for layer in self.layers:
      states.append(layer(states[-1], None))
    states[-1] = self.final_norm(states[-1])
    return tuple(states)


# --- Loading -----------------------------------------------------------------------------------------------------

def _params_from_named(t: Mapping[str, np.ndarray], cfg: WhisperConfig) -> dict[str, np.ndarray]:
  """Parameters from tensors named as Hugging Face's, after `encoder.` (torch layouts; k_proj.bias optional)."""
  heads = cfg.encoder_attention_heads
  head_dim = cfg.d_model // heads
  params = {'positions': t['embed_positions.weight'], 'final_norm/scale': t['layer_norm.weight'],
            'final_norm/bias': t['layer_norm.bias']}
  for conv in ('conv1', 'conv2'):
    params[f'{conv}/kernel'] = t[f'{conv}.weight'].transpose(2, 1, 0)
    params[f'{conv}/bias'] = t[f'{conv}.bias']
  for i in range(cfg.encoder_layers):
    ours, theirs = f'layers/{i}', f'layers.{i}'
    attention = {**t, f'{theirs}.self_attn.k_proj.bias': t.get(f'{theirs}.self_attn.k_proj.bias',
                                                                 np.zeros(cfg.d_model, np.float32))}
    params[f'{ours}/attention/qkv/kernel'], params[f'{ours}/attention/qkv/bias'] = hf_import.fused_qkv(
        attention, [f'{theirs}.self_attn.{n}_proj' for n in 'qkv'], heads, head_dim)
    out = t[f'{theirs}.self_attn.out_proj.weight'].T
    params[f'{ours}/attention/out/kernel'] = out.reshape(heads, head_dim, cfg.d_model)
    params[f'{ours}/attention/out/bias'] = t[f'{theirs}.self_attn.out_proj.bias']
    for name, source in (('intermediate', 'fc1'), ('output', 'fc2')):
      params[f'{ours}/{name}/kernel'] = t[f'{theirs}.{source}.weight'].T
      params[f'{ours}/{name}/bias'] = t[f'{theirs}.{source}.bias']
    for name, source in (('attention_norm', 'self_attn_layer_norm'), ('feed_forward_norm', 'final_layer_norm')):
      params[f'{ours}/{name}/scale'] = t[f'{theirs}.{source}.weight']
      params[f'{ours}/{name}/bias'] = t[f'{theirs}.{source}.bias']
  return {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}


def _hf_encoder_tensors(tensors: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  named = {}
  for key, value in tensors.items():
    name = key[len('model.'):] if key.startswith('model.') else key
    if _HF_SKIPPED.fullmatch(name):
      continue
    if not name.startswith('encoder.'):
      raise ValueError(f'{source}: {key} is not a Whisper encoder, decoder or output-projection weight')
    named[name[len('encoder.'):]] = np.asarray(value, np.float32)
  return named


def read_ct2(path: str | pathlib.Path) -> tuple[str, dict[str, np.ndarray]]:
  """(spec name, variables) of a CTranslate2 model.bin (binary format 4 and later), aliases resolved."""
  path = pathlib.Path(path)
  with open(path, 'rb') as f:
    data = f.read()
  offset = 0

  def take(fmt: str):
    nonlocal offset
    values = struct.unpack_from('<' + fmt, data, offset)
    offset += struct.calcsize('<' + fmt)
    return values[0] if len(values) == 1 else values

  def text() -> str:
    nonlocal offset
    size = take('H')
    value = data[offset:offset + size].rstrip(b'\0').decode()
    offset += size
    return value

  try:
    version = take('I')
    if version < 4:
      raise ValueError(f'{path}: CTranslate2 binary format {version}; this reader needs 4 or later')
    spec, _ = text(), take('I')
    variables = {}
    for _ in range(take('I')):
      name, rank = text(), take('B')
      shape = [take('I') for _ in range(rank)]
      code, size = take('B'), take('I')
      if code not in _CT2_DTYPES:
        raise ValueError(f'{path}: variable {name} has an unknown dtype code {code}')
      if offset + size > len(data):
        raise struct.error(f'variable {name} needs {size} bytes, {len(data) - offset} are left')
      raw = np.frombuffer(data, np.uint16 if _CT2_DTYPES[code] == 'bfloat16' else _CT2_DTYPES[code],
                          count=math.prod(shape), offset=offset)
      if _CT2_DTYPES[code] == 'bfloat16':
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
      variables[name] = raw.reshape(shape)
      offset += size
    if offset < len(data):
      for _ in range(take('I')):
        alias, target = text(), text()
        variables[alias] = variables[target]
  except struct.error as e:
    raise ValueError(f'{path} ends early: not a complete CTranslate2 model ({e})') from e
  return spec, variables


def _ct2_encoder(variables: Mapping[str, np.ndarray], source: str) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
  """The config and Hugging Face-named encoder tensors of a CTranslate2 WhisperSpec's variables."""
  enc = {k[len('encoder/'):]: v for k, v in variables.items() if k.startswith('encoder/')}
  quantised = sorted(k for k, v in enc.items() if k.endswith('weight') and v.dtype == np.int8)
  if quantised or any(k.endswith('weight_scale') for k in enc):
    raise ValueError(f'{source} is quantised (int8 weights such as {listing(quantised)}): convert the model with '
                     'float32, float16 or bfloat16 weights')
  layers = sorted({int(m.group(1)) for k in enc if (m := re.match(r'layer_(\d+)/', k))})
  if not layers or 'num_heads' not in enc:
    raise ValueError(f'{source}: no encoder layers or encoder/num_heads: not a CTranslate2 Whisper model')
  conv1 = enc['conv1/weight']
  cfg = WhisperConfig(d_model=conv1.shape[0], encoder_layers=len(layers), encoder_attention_heads=int(enc['num_heads']),
                      encoder_ffn_dim=enc['layer_0/ffn/linear_0/weight'].shape[0], num_mel_bins=conv1.shape[1],
                      max_source_positions=enc['position_encodings/encodings'].shape[0])
  f32 = {k: np.asarray(v, np.float32) for k, v in enc.items() if k != 'num_heads'}
  t = {'embed_positions.weight': f32['position_encodings/encodings'], 'layer_norm.weight': f32['layer_norm/gamma'],
       'layer_norm.bias': f32['layer_norm/beta']}
  for conv in ('conv1', 'conv2'):
    t[f'{conv}.weight'], t[f'{conv}.bias'] = f32[f'{conv}/weight'], f32[f'{conv}/bias']
  for i in layers:
    ours, theirs = f'layers.{i}', f'layer_{i}'
    fused_weight = np.split(f32[f'{theirs}/self_attention/linear_0/weight'], 3)
    fused_bias = np.split(f32[f'{theirs}/self_attention/linear_0/bias'], 3)
    for n, weight, bias in zip('qkv', fused_weight, fused_bias):
      t[f'{ours}.self_attn.{n}_proj.weight'], t[f'{ours}.self_attn.{n}_proj.bias'] = weight, bias
    for hf, ct2 in (('self_attn.out_proj', 'self_attention/linear_1'), ('fc1', 'ffn/linear_0'),
                    ('fc2', 'ffn/linear_1')):
      t[f'{ours}.{hf}.weight'], t[f'{ours}.{hf}.bias'] = f32[f'{theirs}/{ct2}/weight'], f32[f'{theirs}/{ct2}/bias']
    for hf, ct2 in (('self_attn_layer_norm', 'self_attention/layer_norm'), ('final_layer_norm', 'ffn/layer_norm')):
      t[f'{ours}.{hf}.weight'], t[f'{ours}.{hf}.bias'] = f32[f'{theirs}/{ct2}/gamma'], f32[f'{theirs}/{ct2}/beta']
  return cfg, t


def _expected_shapes(cfg: WhisperConfig) -> dict[str, tuple[int, ...]]:
  d, inner = cfg.d_model, cfg.encoder_ffn_dim
  shapes = {'conv1.weight': (d, cfg.num_mel_bins, 3), 'conv1.bias': (d,), 'conv2.weight': (d, d, 3),
            'conv2.bias': (d,), 'embed_positions.weight': (cfg.max_source_positions, d),
            'layer_norm.weight': (d,), 'layer_norm.bias': (d,)}
  for i in range(cfg.encoder_layers):
    for name, shape in {'self_attn.q_proj.weight': (d, d), 'self_attn.q_proj.bias': (d,),
                        'self_attn.k_proj.weight': (d, d), 'self_attn.v_proj.weight': (d, d),
                        'self_attn.v_proj.bias': (d,), 'self_attn.out_proj.weight': (d, d),
                        'self_attn.out_proj.bias': (d,), 'fc1.weight': (inner, d), 'fc1.bias': (inner,),
                        'fc2.weight': (d, inner), 'fc2.bias': (d,), 'self_attn_layer_norm.weight': (d,),
                        'self_attn_layer_norm.bias': (d,), 'final_layer_norm.weight': (d,),
                        'final_layer_norm.bias': (d,)}.items():
      shapes[f'layers.{i}.{name}'] = shape
  return shapes


def _check(named: Mapping[str, np.ndarray], cfg: WhisperConfig, source: str) -> None:
  expected = _expected_shapes(cfg)
  allowed = set(expected) | {f'layers.{i}.self_attn.k_proj.bias' for i in range(cfg.encoder_layers)}
  unknown, missing = sorted(set(named) - allowed), sorted(set(expected) - set(named))
  if unknown or missing:
    raise ValueError(f'{source}: encoder weights do not match the config: unknown {listing(unknown)}; '
                     f'missing {listing(missing)} (named after encoder.)')
  wrong = [f'{k} {tuple(named[k].shape)} (expected {s})' for k, s in expected.items() if tuple(named[k].shape) != s]
  if wrong:
    raise ValueError(f'{source}: weight shapes disagree with the config: {listing(wrong)}')


def weights_file(folder: str | pathlib.Path) -> pathlib.Path:
  """The weights of a Whisper folder: a Hugging Face weights file, else CTranslate2's model.bin."""
  folder = pathlib.Path(folder)
  try:
    return hf_import.weights_path(folder)
  except FileNotFoundError:
    if (folder / CT2_FILE).is_file():
      return folder / CT2_FILE
    raise FileNotFoundError(f'{folder} has no Whisper weights: none of {", ".join(hf_import.WEIGHT_FILES)} '
                            f'(Hugging Face) or {CT2_FILE} (CTranslate2)') from None


def load_checkpoint(folder: str | pathlib.Path) -> tuple[WhisperEncoder, WhisperConfig]:
  """(encoder, config) of a Hugging Face or CTranslate2 Whisper folder (module doc)."""
  folder = pathlib.Path(folder)
  path = weights_file(folder)
  if path.name == CT2_FILE:
    spec, variables = read_ct2(path)
    if spec != 'WhisperSpec':
      raise ValueError(f'{path} holds a CTranslate2 {spec or "model"}, not a WhisperSpec')
    cfg, named = _ct2_encoder(variables, str(path))
  else:
    if not (folder / 'config.json').is_file():
      raise FileNotFoundError(f'{folder} has {path.name} but no config.json')
    cfg = WhisperConfig.from_hf(json.loads((folder / 'config.json').read_text()))
    named = _hf_encoder_tensors(hf_import.read_weights(path), str(path))
  _check(named, cfg, str(path))
  params = _params_from_named(named, cfg)
  return wav2vec2.with_params(lambda: WhisperEncoder(cfg, rngs=nnx.Rngs(0)), params), cfg


# --- The extractor -----------------------------------------------------------------------------------------------

class WhisperFeatures:
  """Acoustic frames from a Whisper folder, with the interface of wav2vec2.Wav2Vec2Features.

  Each waveform (float mono at 16 kHz; resampling is the caller's job) is cut to `max_seconds` (at most the
  model's window), padded to the window, encoded; hidden state `layer` is taken over the clip's
  ceil(samples / 320) positions, mean-pooled over groups of `pool` (wav2vec2.pool_frames) and cut to
  `max_frames` (None: all). Every batch has the window's shape, so one compilation serves all.
  """

  def __init__(self, checkpoint_dir: str | pathlib.Path, *, layer: int = -1, pool: int = 3,
               max_frames: int | None = 64, max_seconds: float | None = 10.0, batch_size: int = 8):
    self.checkpoint_dir = pathlib.Path(checkpoint_dir).resolve()
    model, self.config = load_checkpoint(self.checkpoint_dir)
    self.weights_file = weights_file(self.checkpoint_dir)
    wav2vec2.check_extractor_options(self.config.encoder_layers + 1, layer, pool, batch_size, max_frames)
    window_seconds = self.config.window_samples / SAMPLE_RATE
    if max_seconds is not None and not 0 < max_seconds <= window_seconds:
      raise ValueError(f'max_seconds {max_seconds} must be positive and at most the model\'s window, '
                       f'{window_seconds:g} s')
    self.sample_rate = SAMPLE_RATE
    self.layer, self.pool, self.max_frames, self.batch_size = layer, pool, max_frames, batch_size
    self.max_seconds = window_seconds if max_seconds is None else max_seconds
    self.max_samples = round(self.max_seconds * SAMPLE_RATE)
    self._sha256 = schema.sha256_file(self.weights_file)
    graphdef, self._state = nnx.split(model)
    keep = None if max_frames is None else max_frames * pool

    def forward(state: nnx.State, mel: jax.Array) -> jax.Array:
      # Later layers than `layer` do not reach the output: XLA drops them.
      return nnx.merge(graphdef, state)(mel)[layer][:, :keep]

    self._forward = jax.jit(forward)

  @property
  def dim(self) -> int:
    return self.config.d_model

  @property
  def frame_seconds(self) -> float:
    return self.pool * SAMPLES_PER_POSITION / SAMPLE_RATE

  def describe(self) -> dict[str, Any]:
    """What made the features, for metadata (JSON-able)."""
    return dict(extractor='whisper', checkpoint=str(self.checkpoint_dir), weights_file=self.weights_file.name,
                weights_sha256=self._sha256, encoder_layers=self.config.encoder_layers, layer=self.layer,
                pool=self.pool, max_frames=self.max_frames, max_seconds=self.max_seconds,
                sample_rate=self.sample_rate, dim=self.dim, frame_seconds=self.frame_seconds)

  def prepare(self, waveform: np.ndarray, index: int = 0) -> np.ndarray:
    """One waveform checked and cut (index: for errors)."""
    return wav2vec2.checked_waveform(waveform, index, self.max_samples)

  def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[T, dim] float32 frames per waveform, in order (T <= max_frames)."""
    waves = [self.prepare(w, i) for i, w in enumerate(waveforms)]
    results = []
    for start in range(0, len(waves), self.batch_size):
      chunk = waves[start:start + self.batch_size]
      # Unused rows are silence, dropped below.
      mel = np.stack([log_mel(w, self.config) for w in chunk] +
                     [log_mel(np.zeros(1, np.float32), self.config)] * (self.batch_size - len(chunk)))
      with jax.default_matmul_precision('highest'):
        hidden = np.asarray(self._forward(self._state, mel))
      for row, wave in enumerate(chunk):
        pooled = wav2vec2.pool_frames(hidden[row, :-(-len(wave) // SAMPLES_PER_POSITION)], self.pool)
        results.append(pooled if self.max_frames is None else pooled[:self.max_frames])
    return results
