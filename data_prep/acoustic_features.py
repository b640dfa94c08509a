"""Acoustic frame features: the built-in librosa extractor, and pretrained speech encoders (`SpeechEncoderConfig`:
wav2vec 2.0 / HuBERT as the paper, or Whisper's encoder).

The paper's acoustic frames are wav2vec 2.0 hidden states at 50 Hz, mean-pooled over
groups of 3 (60 ms), first 64 kept (spec section 2). This module produces frames with
the same timing from classic features instead:

- `logmel`: log mel power spectrum (`n_mels` dims).
- `mfcc`: MFCCs plus deltas up to `mfcc_delta_order` (n_mfcc * (1 + order) dims).
- `pitch`: log f0 from YIN, interpolated through unvoiced frames, and a voicing flag (2 dims).
  `librosa.pyin` would give a voicing probability too, but it decodes an HMM over pitch
  states per frame and is ~70x slower than the vectorised `librosa.yin` (measured: 270 vs
  4 ms for 3 s of speech on one core). Voicing is taken instead from frame energy relative
  to the loudest analysed frame: that separates speech from pauses, which is what matters
  for emotion, and keeps YIN's meaningless f0 on silence out of the track.
- `energy`: log RMS energy (1 dim).

Kinds combine in the order given (`kinds=('logmel', 'pitch', 'energy')`). The output
dimension is a property of the configuration, computed by `feature_dim` by running the
extractor, so it always equals what extraction produces.

Speed: ~4 ms of one core per 3 s utterance (default config). The mel product is a tiny matrix product;
on a busy host, multi-threaded BLAS makes it 10x slower, so parallel callers should keep
one BLAS thread per process (`threadpoolctl.threadpool_limits(1)`, as the CLI does).

Per-feature normalisation (mean/variance) is deliberately not done here: its statistics
must come from the training split of each fold only, so it belongs to the data pipeline
that knows the split (or to the shard writer, given training-split statistics), not to
per-file extraction.

CLI (a folder of audio files -> one .npy [T, D] per file, mirroring the folder layout):

  python -m data_prep.acoustic_features --input_dir wavs/ --output_dir feats/ \
      --kinds logmel,pitch,energy --n_mels 64 --workers 4
"""

import argparse
import dataclasses
import functools
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
import threadpoolctl
from tqdm import tqdm

from memobert_jax.data import schema

KINDS = ('logmel', 'mfcc', 'pitch', 'energy')
AUDIO_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3')
# Floor inside the logarithms: about -14 in log units, far below any real speech frame.
_LOG_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class AcousticFeatureConfig:
  """What to extract and at which frame rate.

  Attributes:
    kinds: feature groups, concatenated in this order (from `KINDS`).
    sample_rate: audio is resampled to this rate (mono) before analysis.
    max_seconds: audio beyond this is ignored (the paper cuts at 10 s).
    hop_ms: frame hop before pooling (20 ms = wav2vec 2.0's 50 Hz).
    win_ms: analysis window of the spectral features and of the energy.
    n_fft: FFT size of the spectral features (>= the window).
    n_mels: mel bands of `logmel` (and the mel spectrum under `mfcc`).
    n_mfcc: cepstral coefficients of `mfcc`.
    mfcc_delta_order: 0 (static only), 1 (+deltas) or 2 (+delta-deltas).
    pitch_fmin: lowest f0 searched by YIN, in Hz.
    pitch_fmax: highest f0 searched by YIN, in Hz.
    voicing_threshold_db: a frame counts as voiced when its energy is within this many dB
      of the loudest analysed frame.
    pool: frames averaged into one output frame (3 x 20 ms = 60 ms as in the paper).
    max_frames: output frames kept (after pooling); None keeps all.
  """
  kinds: tuple[str, ...] = ('logmel', 'pitch', 'energy')
  sample_rate: int = 16000
  max_seconds: float = 10.0
  hop_ms: float = 20.0
  win_ms: float = 25.0
  n_fft: int = 512
  n_mels: int = 64
  n_mfcc: int = 13
  mfcc_delta_order: int = 2
  pitch_fmin: float = 60.0
  pitch_fmax: float = 500.0
  voicing_threshold_db: float = 30.0
  pool: int = 3
  max_frames: int | None = 64

  def __post_init__(self):
    if not self.kinds:
      raise ValueError('AcousticFeatureConfig.kinds is empty')
    unknown = [k for k in self.kinds if k not in KINDS]
    if unknown:
      raise ValueError(f'unknown acoustic feature kinds {unknown}; choose from {KINDS}')
    if len(set(self.kinds)) != len(self.kinds):
      raise ValueError(f'acoustic feature kinds repeat: {self.kinds}')
    if self.win_length > self.n_fft:
      raise ValueError(f'window {self.win_ms} ms ({self.win_length} samples) exceeds n_fft={self.n_fft}')
    if self.hop_length < 1 or self.pool < 1 or (self.max_frames is not None and self.max_frames < 1):
      raise ValueError('hop_ms, pool and max_frames must be positive')
    if self.mfcc_delta_order not in (0, 1, 2):
      raise ValueError(f'mfcc_delta_order must be 0, 1 or 2, got {self.mfcc_delta_order}')
    if not 0 < self.pitch_fmin < self.pitch_fmax < self.sample_rate / 2:
      raise ValueError(f'need 0 < pitch_fmin < pitch_fmax < Nyquist, got {self.pitch_fmin}, {self.pitch_fmax}')

  @property
  def hop_length(self) -> int:
    return int(round(self.sample_rate * self.hop_ms / 1000))

  @property
  def win_length(self) -> int:
    return int(round(self.sample_rate * self.win_ms / 1000))

  @property
  def yin_frame_length(self) -> int:
    # YIN needs a window holding at least two periods of the lowest f0 searched.
    return int(2 ** np.ceil(np.log2(2 * self.sample_rate / self.pitch_fmin + 2)))


@functools.lru_cache(maxsize=16)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  # Building the filterbank costs more than the spectrogram itself; cache it.
  return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


def _pitch(signal: np.ndarray, rms: np.ndarray, config: AcousticFeatureConfig, num_frames: int) -> np.ndarray:
  """[T, 2]: log f0 (interpolated through unvoiced frames; 0 if none is voiced), voicing flag."""
  f0 = librosa.yin(signal, fmin=config.pitch_fmin, fmax=config.pitch_fmax, sr=config.sample_rate,
                   frame_length=config.yin_frame_length, hop_length=config.hop_length, center=True)[:num_frames]
  level_db = 20 * np.log10(np.maximum(rms, _LOG_FLOOR))
  voiced = (level_db > level_db.max() - config.voicing_threshold_db) & (rms > 10 * _LOG_FLOOR)
  log_f0 = np.zeros(num_frames, np.float32)
  if voiced.any():
    idx = np.arange(num_frames)
    log_f0 = np.interp(idx, idx[voiced], np.log(f0[voiced])).astype(np.float32)
  return np.stack([log_f0, voiced.astype(np.float32)], axis=1)


def _pool(frames: np.ndarray, pool: int) -> np.ndarray:
  """Means over consecutive groups of `pool` frames; a shorter last group is kept."""
  num_groups = -(-len(frames) // pool)
  padded = np.zeros((num_groups * pool, frames.shape[1]), np.float32)
  padded[:len(frames)] = frames
  counts = np.minimum(pool, len(frames) - np.arange(num_groups) * pool)[:, None]
  return (padded.reshape(num_groups, pool, -1).sum(axis=1) / counts).astype(np.float32)


def extract_from_signal(signal: np.ndarray, sample_rate: int, config: AcousticFeatureConfig) -> np.ndarray:
  """Features of one utterance.

  Args:
    signal: samples, shape [N] or [channels, N] (librosa's layout); any float or int dtype.
    sample_rate: rate of `signal`; resampled to `config.sample_rate` if different.
    config: what to extract.

  Returns:
    float32 [T, feature_dim(config)], 1 <= T <= config.max_frames.
  """
  signal = np.asarray(signal)
  if np.issubdtype(signal.dtype, np.integer):
    signal = signal / float(np.iinfo(signal.dtype).max)
  signal = librosa.to_mono(signal.astype(np.float32))
  if sample_rate != config.sample_rate:
    signal = librosa.resample(signal, orig_sr=sample_rate, target_sr=config.sample_rate)
  if signal.size == 0:
    raise ValueError('empty audio signal')
  hop = config.hop_length
  limit = int(config.max_seconds * config.sample_rate)
  if config.max_frames is not None:
    # Only the first max_frames * pool frames are kept: analyse just the samples they see.
    needed = config.max_frames * config.pool
    limit = min(limit, (needed - 1) * hop + max(config.n_fft, config.yin_frame_length) // 2 + 1)
  signal = signal[:limit]
  # Clips shorter than one analysis window are padded with silence to a full window.
  signal = np.ascontiguousarray(np.pad(signal, (0, max(0, max(config.n_fft, config.yin_frame_length) - len(signal)))))
  num_frames = 1 + len(signal) // hop
  if config.max_frames is not None:
    num_frames = min(num_frames, config.max_frames * config.pool)

  rms = librosa.feature.rms(y=signal, frame_length=config.n_fft, hop_length=hop, center=True)[0, :num_frames]
  groups = []
  if 'logmel' in config.kinds or 'mfcc' in config.kinds:
    spectrum = np.abs(librosa.stft(signal, n_fft=config.n_fft, hop_length=hop, win_length=config.win_length,
                                   center=True)[:, :num_frames]) ** 2
    mel = _mel_basis(config.sample_rate, config.n_fft, config.n_mels) @ spectrum
  for kind in config.kinds:
    if kind == 'logmel':
      groups.append(np.log(mel + _LOG_FLOOR).T)
    elif kind == 'mfcc':
      mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=config.n_mfcc)
      # 'nearest' edges: deltas work for utterances shorter than the 9-frame filter.
      deltas = [librosa.feature.delta(mfcc, order=o, mode='nearest') for o in range(1, config.mfcc_delta_order + 1)]
      groups.append(np.concatenate([mfcc, *deltas], axis=0).T)
    elif kind == 'pitch':
      groups.append(_pitch(signal, rms, config, num_frames))
    else:
      groups.append(np.log(rms + _LOG_FLOOR)[:, None])
  frames = np.concatenate(groups, axis=1).astype(np.float32)
  pooled = _pool(frames, config.pool)
  return pooled if config.max_frames is None else pooled[:config.max_frames]


# A speech encoder's name -> its module in memobert_jax/features.
SPEECH_ENCODERS = ('wav2vec2', 'whisper')


@dataclasses.dataclass(frozen=True)
class SpeechEncoderConfig:
  """Hidden states of a pretrained speech encoder instead of librosa features: `model` 'wav2vec2' (a Hugging Face
  wav2vec 2.0 / HuBERT folder, memobert_jax/features/wav2vec2.py; the paper's: base, last layer, groups of 3,
  first 64, 10 s) or 'whisper' (a Hugging Face or CTranslate2 Whisper folder, memobert_jax/features/whisper.py)."""
  checkpoint: str
  layer: int = -1
  pool: int = 3
  max_frames: int | None = 64
  max_seconds: float = 10.0
  batch_size: int = 8
  model: str = 'wav2vec2'

  def __post_init__(self):
    if self.model not in SPEECH_ENCODERS:
      raise ValueError(f'speech encoder {self.model!r} is not one of {SPEECH_ENCODERS}')


@functools.lru_cache(maxsize=2)
def encoder_extractor(config: SpeechEncoderConfig):
  """The extractor of a config, built once per process (loading and compiling it is the slow part)."""
  # jax and the checkpoint only where a speech encoder is asked for
  from memobert_jax.features import wav2vec2, whisper
  extractor = wav2vec2.Wav2Vec2Features if config.model == 'wav2vec2' else whisper.WhisperFeatures
  return extractor(config.checkpoint, layer=config.layer, pool=config.pool, max_frames=config.max_frames,
                   max_seconds=config.max_seconds, batch_size=config.batch_size)


@functools.lru_cache(maxsize=4)
def _weights_sha256(checkpoint: str, model: str) -> str:
  from memobert_jax import hf_import
  from memobert_jax.features import whisper
  path = hf_import.weights_path(checkpoint) if model == 'wav2vec2' else whisper.weights_file(checkpoint)
  return schema.sha256_file(path)


def describe(config: AcousticFeatureConfig | SpeechEncoderConfig) -> dict:
  """What makes the frames, for cache keys and metadata (without loading a model): the librosa settings, or
  the speech encoder's settings with the sha256 of the checkpoint's weights."""
  if isinstance(config, SpeechEncoderConfig):
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != 'model'}
    return {'extractor': config.model, **fields, 'weights_sha256': _weights_sha256(config.checkpoint, config.model)}
  return {'extractor': 'librosa', **dataclasses.asdict(config)}


def from_description(description: dict) -> AcousticFeatureConfig | SpeechEncoderConfig:
  """The config a dataset's metadata describes (`describe`), refusing encoder weights other than it used."""
  fields = {k: v for k, v in description.items() if k not in ('extractor', 'weights_sha256')}
  if description.get('extractor') not in SPEECH_ENCODERS:
    return AcousticFeatureConfig(**{**fields, 'kinds': tuple(fields['kinds'])})
  config = SpeechEncoderConfig(**fields, model=description['extractor'])
  found = _weights_sha256(config.checkpoint, config.model)
  if found != description['weights_sha256']:
    raise ValueError(f'{config.checkpoint} holds other weights than the features were made with (sha256 '
                     f'{found[:12]}..., recorded {description["weights_sha256"][:12]}...)')
  return config


def sample_rate(config: AcousticFeatureConfig | SpeechEncoderConfig) -> int:
  return encoder_extractor(config).sample_rate if isinstance(config, SpeechEncoderConfig) else config.sample_rate


def _decode(path: str | os.PathLike, config: AcousticFeatureConfig | SpeechEncoderConfig) -> np.ndarray:
  """The first max_seconds of a wav's samples or of a video's audio track, mono at the extractor's rate."""
  from memobert_jax.features import media
  return media.read_audio(path, 0.0, min(config.max_seconds, media.duration(path)), sample_rate(config))


def extract_batch(paths: Sequence[str], config: AcousticFeatureConfig | SpeechEncoderConfig) -> list[np.ndarray]:
  """Frames [T, D] of each audio file; a speech encoder runs them as batches, jitted (on the accelerator if any)."""
  if not isinstance(config, SpeechEncoderConfig):
    return [extract_from_wav(path, config) for path in paths]
  return encoder_extractor(config)([_decode(path, config) for path in paths])


def extract_from_media(path: str | os.PathLike, config: AcousticFeatureConfig | SpeechEncoderConfig) -> np.ndarray:
  """Frames [T, D] of any media file with an audio track (a video too), decoded with PyAV."""
  signal = _decode(path, config)
  if isinstance(config, SpeechEncoderConfig):
    return encoder_extractor(config)([signal])[0]
  return extract_from_signal(signal, config.sample_rate, config)


def load_audio(path: str | os.PathLike, config: AcousticFeatureConfig) -> np.ndarray:
  """Mono float32 samples at `config.sample_rate`, cut to `config.max_seconds`; clear errors."""
  try:
    signal, _ = librosa.load(path, sr=config.sample_rate, mono=True, duration=config.max_seconds)
  except Exception as e:  # soundfile / audioread raise many types; name the file in all cases.
    raise ValueError(f'cannot read audio file {path}: {e}') from e
  if signal.size == 0:
    raise ValueError(f'audio file {path} is empty')
  return signal


def extract_from_wav(path: str | os.PathLike, config: AcousticFeatureConfig) -> np.ndarray:
  """Features of one audio file (any format librosa reads), float32 [T, D]."""
  return extract_from_signal(load_audio(path, config), config.sample_rate, config)


@functools.lru_cache(maxsize=32)
def feature_dim(config: AcousticFeatureConfig) -> int:
  """The D of `extract_from_signal(..., config)`, found by extracting from 0.5 s of silence."""
  return extract_from_signal(np.zeros(config.sample_rate // 2, np.float32), config.sample_rate, config).shape[1]


def _single_threaded_blas() -> None:
  # Files are processed in parallel; BLAS threads on the tiny mel product only contend (10x slower on a busy host).
  threadpoolctl.threadpool_limits(1)


def _extract_one(job: tuple[str, str, AcousticFeatureConfig]) -> None:
  source, target, config = job
  features = extract_from_wav(source, config)
  Path(target).parent.mkdir(parents=True, exist_ok=True)
  np.save(target, features)


def extract_files(jobs: Sequence[tuple[str, str]], config: AcousticFeatureConfig, workers: int = 1) -> None:
  """Extracts each (audio file, target .npy) pair, in `workers` processes, with a progress bar."""
  tasks = [(source, target, config) for source, target in jobs]
  if workers > 1:
    # 'spawn': callers may hold threads (JAX, TensorFlow) that fork would copy mid-flight.
    with multiprocessing.get_context('spawn').Pool(workers, _single_threaded_blas) as pool:
      for _ in tqdm(pool.imap_unordered(_extract_one, tasks, chunksize=8), total=len(tasks), desc='acoustic'):
        pass
  else:
    with threadpoolctl.threadpool_limits(1):
      for task in tqdm(tasks, desc='acoustic'):
        _extract_one(task)


def extract_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, config: AcousticFeatureConfig,
                   workers: int = 1) -> int:
  """Extracts every audio file under `input_dir` to `output_dir/<same relative path>.npy`.

  Returns:
    The number of files written.
  """
  input_dir, output_dir = Path(input_dir), Path(output_dir)
  sources = sorted(p for p in input_dir.rglob('*') if p.suffix.lower() in AUDIO_EXTENSIONS)
  if not sources:
    raise FileNotFoundError(f'no audio files ({", ".join(AUDIO_EXTENSIONS)}) under {input_dir}')
  extract_files([(str(p), str((output_dir / p.relative_to(input_dir)).with_suffix('.npy'))) for p in sources],
                config, workers)
  return len(sources)


def config_from_args(args: argparse.Namespace) -> AcousticFeatureConfig:
  """The config named by the flags of `add_config_flags`."""
  return AcousticFeatureConfig(
      kinds=tuple(k.strip() for k in args.kinds.split(',') if k.strip()), sample_rate=args.sample_rate,
      max_seconds=args.max_seconds, hop_ms=args.hop_ms, win_ms=args.win_ms, n_fft=args.n_fft, n_mels=args.n_mels,
      n_mfcc=args.n_mfcc, mfcc_delta_order=args.mfcc_delta_order, pitch_fmin=args.pitch_fmin,
      pitch_fmax=args.pitch_fmax, voicing_threshold_db=args.voicing_threshold_db, pool=args.pool,
      max_frames=args.max_frames or None)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
  """Flags for every `AcousticFeatureConfig` field (shared with the corpus adapters)."""
  d = AcousticFeatureConfig()
  parser.add_argument('--kinds', default=','.join(d.kinds), help=f'comma-separated, from {KINDS}')
  parser.add_argument('--sample_rate', type=int, default=d.sample_rate)
  parser.add_argument('--max_seconds', type=float, default=d.max_seconds)
  parser.add_argument('--hop_ms', type=float, default=d.hop_ms)
  parser.add_argument('--win_ms', type=float, default=d.win_ms)
  parser.add_argument('--n_fft', type=int, default=d.n_fft)
  parser.add_argument('--n_mels', type=int, default=d.n_mels)
  parser.add_argument('--n_mfcc', type=int, default=d.n_mfcc)
  parser.add_argument('--mfcc_delta_order', type=int, default=d.mfcc_delta_order)
  parser.add_argument('--pitch_fmin', type=float, default=d.pitch_fmin)
  parser.add_argument('--pitch_fmax', type=float, default=d.pitch_fmax)
  parser.add_argument('--voicing_threshold_db', type=float, default=d.voicing_threshold_db)
  parser.add_argument('--pool', type=int, default=d.pool)
  parser.add_argument('--max_frames', type=int, default=d.max_frames, help='0 keeps every frame')


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--input_dir', required=True, help='folder searched recursively for audio files')
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--workers', type=int, default=1)
  add_config_flags(parser)
  args = parser.parse_args(argv)
  config = config_from_args(args)
  count = extract_folder(args.input_dir, args.output_dir, config, workers=args.workers)
  print(f'wrote {count} feature files of dimension {feature_dim(config)} to {args.output_dir}')


if __name__ == '__main__':
  main()
