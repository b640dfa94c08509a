"""Manifest reading and validation, shared by the shard writer and the TFDS builders.

A manifest is a JSONL file, one utterance per line (the input contract is in
docs/DATA.md). Validation looks at every example before anything is written:
the records themselves (`read_manifest`, `check_records`), then every feature
file (`inspect_features`, run in worker processes), then the corpus as a whole
(feature dimensions must agree). Each problem names the utterance id, the file
and what is wrong.
"""

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from memobert_jax.data import schema

PATH_FIELDS = ('visual', 'visual_soft_labels', 'acoustic', 'wav')
DEFAULT_SPLIT = 'train'
# Soft-label rows are probabilities; FER+ label files are often written with 3-4 decimals.
SOFT_LABEL_TOLERANCE = 1e-3
_SPLIT_NAME = re.compile(r'^[A-Za-z0-9_]+$')  # split names become shard file names


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One manifest record; paths are absolute (resolved against the manifest's folder)."""
  id: str
  text: str
  label: str | None = None
  speaker: str | None = None
  session: str | None = None
  split: str = DEFAULT_SPLIT
  visual: str | None = None
  visual_soft_labels: str | None = None
  acoustic: str | None = None
  wav: str | None = None
  line: int = 0  # 1-based line in the manifest


@dataclasses.dataclass(frozen=True)
class Problem:
  """A reason an utterance cannot be written: which utterance, which file, what is wrong."""
  id: str | None  # None when the manifest line has no usable id
  file: str  # the feature file, or `manifest:line` for problems of the record itself
  message: str

  def __str__(self) -> str:
    return f'{self.id if self.id is not None else "<no id>"}: {self.file}: {self.message}'

  def to_dict(self) -> dict[str, str | None]:
    return {'id': self.id, 'file': self.file, 'problem': self.message}


class ManifestError(ValueError):
  """Raised in fail mode, before anything is written; `problems` lists every problem found."""

  def __init__(self, problems: Sequence[Problem]):
    self.problems = list(problems)
    super().__init__(f'{len(self.problems)} problem(s) in the manifest, nothing written:\n' +
                     '\n'.join(f'  {p}' for p in self.problems))


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
  """How features are loaded for storage.

  Attributes:
    storage_dtype: 'float32' or 'float16' (visual and acoustic; soft labels stay float32).
    max_visual_frames: keep only the first frames (None: all; the loader caps to its config anyway).
    max_acoustic_frames: likewise for acoustic frames.
    acoustic_config: `data_prep.acoustic_features.AcousticFeatureConfig` used when an utterance has a
      wav but no acoustic .npy; None means that module's defaults.
    cache_dir: where features extracted from wavs are kept between validation and writing (and across
      re-runs); None extracts again when writing.
  """
  storage_dtype: str = 'float32'
  max_visual_frames: int | None = None
  max_acoustic_frames: int | None = None
  acoustic_config: Any = None
  cache_dir: str | None = None

  def __post_init__(self):
    schema.storage_dtype(self.storage_dtype)
    for cap in (self.max_visual_frames, self.max_acoustic_frames):
      if cap is not None and cap < 1:
        raise ValueError(f'frame caps must be positive or None, got {cap}')

  def resolved_acoustic_config(self):
    from data_prep import acoustic_features  # librosa is only needed when a manifest has wavs
    return self.acoustic_config or acoustic_features.AcousticFeatureConfig()

  def acoustic_config_dict(self) -> dict[str, Any]:
    from data_prep import acoustic_features
    return acoustic_features.describe(self.resolved_acoustic_config())


@dataclasses.dataclass
class Features:
  """One utterance's arrays as stored: capped, visual/acoustic in the storage dtype, soft labels float32."""
  visual: np.ndarray | None
  visual_soft_labels: np.ndarray | None
  acoustic: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
  """What validation learnt about one utterance's features (full lengths, before caps)."""
  id: str
  problems: tuple[Problem, ...] = ()
  visual_frames: int = 0
  visual_dim: int | None = None
  acoustic_frames: int = 0
  acoustic_dim: int | None = None
  has_soft_labels: bool = False
  acoustic_from_wav: bool = False
  fingerprint: str = ''  # changes when the record or any of its files changes (size, mtime)


@dataclasses.dataclass
class ValidatedManifest:
  """The outcome of `validate`: the utterances to write and everything known about them."""
  path: str
  utterances: list[Utterance]  # the valid ones, in manifest order
  infos: dict[str, FeatureInfo]
  problems: list[Problem]  # every problem found (in skip mode their utterances are left out)
  label_names: list[str]
  visual_dim: int | None
  acoustic_dim: int | None

  def by_split(self) -> dict[str, list[Utterance]]:
    splits = collections.defaultdict(list)
    for utt in self.utterances:
      splits[utt.split].append(utt)
    return dict(sorted(splits.items()))


def label_index(utt: Utterance, label_names: Sequence[str]) -> int:
  return schema.UNLABELLED if utt.label is None else list(label_names).index(utt.label)


def _record_problem(manifest: str, line: int, example_id: str | None, message: str) -> Problem:
  return Problem(example_id, f'{manifest}:{line}', message)


def not_utf8_message(error: UnicodeDecodeError) -> str:
  """Says where a line's bytes stop being UTF-8 (shared with the corpus adapters' manifest reader)."""
  return (f'bytes are not UTF-8 (0x{error.object[error.start]:02x} at byte {error.start} of the line: {error.reason}); '
          'save the manifest as UTF-8')


def lone_surrogate_message(key: str, text: str) -> str | None:
  """Why `text` cannot be stored as UTF-8 (a lone surrogate, e.g. an unpaired "\\ud800" escape in the JSON), or None."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:
    return (f'"{key}" has a lone surrogate {ascii(text[e.start])} at character {e.start}, which UTF-8 cannot store '
            '(an unpaired \\uXXXX escape in the JSON): fix or remove it')
  return None


def _text_problems(raw: dict, manifest: str, line: int, example_id: str) -> list[Problem]:
  """The stored strings that UTF-8 cannot encode: refused here, not when a shard is half written."""
  problems = []
  for key in ('text', 'label', 'speaker', 'session'):
    message = lone_surrogate_message(key, raw[key]) if isinstance(raw.get(key), str) else None
    if message:
      problems.append(_record_problem(manifest, line, example_id, message))
  return problems


def _parse_record(raw: Any, manifest: str, line: int, base_dir: str) -> tuple[Utterance | None, list[Problem]]:
  if not isinstance(raw, dict):
    return None, [_record_problem(manifest, line, None, f'expected a JSON object, got {type(raw).__name__}')]
  example_id = raw.get('id')
  if not isinstance(example_id, str) or not example_id:
    return None, [_record_problem(manifest, line, None, f'"id" must be a non-empty string, got {example_id!r}')]
  bad_id = lone_surrogate_message('id', example_id)
  if bad_id:  # not usable as the problem's id either
    return None, [_record_problem(manifest, line, None, bad_id)]
  problems = []
  if not isinstance(raw.get('text'), str):
    problems.append(_record_problem(manifest, line, example_id, f'"text" must be a string, got {raw.get("text")!r}'))
  for key in ('label', 'speaker', 'session', 'split', *PATH_FIELDS):
    if raw.get(key) is not None and not isinstance(raw[key], str):
      problems.append(_record_problem(manifest, line, example_id,
                                      f'"{key}" must be a string or null, got {raw[key]!r}'))
  problems += _text_problems(raw, manifest, line, example_id)
  split = raw.get('split') or DEFAULT_SPLIT
  if isinstance(split, str) and not _SPLIT_NAME.match(split):
    problems.append(_record_problem(manifest, line, example_id, f'split name {split!r} is not [A-Za-z0-9_]+'))
  if problems:
    return None, problems
  paths = {key: os.path.normpath(os.path.join(base_dir, raw[key])) if raw.get(key) else None for key in PATH_FIELDS}
  return Utterance(id=example_id, text=raw['text'], label=raw.get('label'), speaker=raw.get('speaker'),
                   session=raw.get('session'), split=split, line=line, **paths), []


def _parse_line(raw_line: bytes, manifest: str, line: int, base_dir: str) -> tuple[Utterance | None, list[Problem]]:
  try:
    text = raw_line.decode('utf-8')
  except UnicodeDecodeError as e:
    return None, [_record_problem(manifest, line, None, not_utf8_message(e))]
  if not text.strip():
    return None, []
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as e:
    return None, [_record_problem(manifest, line, None, f'invalid JSON: {e}')]
  return _parse_record(raw, manifest, line, base_dir)


def read_manifest(path: str | os.PathLike) -> tuple[list[Utterance], list[Problem]]:
  """Parses the manifest; records that cannot be parsed become problems. Unknown keys are ignored."""
  path = os.fspath(path)
  base_dir = os.path.dirname(os.path.abspath(path))
  utterances, problems = [], []
  with open(path, 'rb') as f:  # decoded line by line: bytes that are not UTF-8 are a problem of their line
    for line, raw_line in enumerate(f, start=1):
      utt, line_problems = _parse_line(raw_line, path, line, base_dir)
      problems.extend(line_problems)
      if utt is not None:
        utterances.append(utt)
  return utterances, problems


def check_records(utterances: Sequence[Utterance], label_names: Sequence[str], manifest: str) -> list[Problem]:
  """Finds duplicate ids, empty transcripts and labels outside the label set.

  Every record of a duplicated id is a problem: which of them is right is unknown.
  """
  lines = collections.defaultdict(list)
  for utt in utterances:
    lines[utt.id].append(utt.line)
  problems = []
  for utt in utterances:
    if len(lines[utt.id]) > 1:
      others = [line for line in lines[utt.id] if line != utt.line]
      problems.append(_record_problem(manifest, utt.line, utt.id, f'duplicate id (also at line(s) {others})'))
    if not utt.text.strip():
      problems.append(_record_problem(manifest, utt.line, utt.id, 'empty transcript'))
    if utt.label is not None and utt.label not in label_names:
      problems.append(_record_problem(manifest, utt.line, utt.id,
                                      f'label {utt.label!r} is not one of {list(label_names)}'))
  return problems


class _FileProblem(Exception):
  """A problem with one feature file, raised while loading it."""

  def __init__(self, path: str, message: str):
    super().__init__(message)
    self.path = path
    self.message = message


def _load_npy(path: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except Exception as e:  # missing, truncated, pickled or not an .npy at all: all are "unreadable"
    raise _FileProblem(path, f'unreadable .npy ({type(e).__name__}: {e})') from e
  if not isinstance(array, np.ndarray):  # an .npz archive
    raise _FileProblem(path, f'expected one array (.npy), got {type(array).__name__}')
  return array


def _frames(array: np.ndarray, path: str, name: str, dtype: np.dtype) -> np.ndarray:
  """Checks a [T, D] feature array and casts it to the storage dtype."""
  if array.ndim != 2:
    raise _FileProblem(path, f'{name} must be a 2-D [frames, dim] array, got shape {array.shape}')
  if array.dtype.kind not in 'fiu':
    raise _FileProblem(path, f'{name} has non-numeric dtype {array.dtype}')
  if array.dtype.kind == 'f':
    bad = ~np.isfinite(array)
    if bad.any():
      frame = int(np.argwhere(bad)[0][0])
      raise _FileProblem(path, f'{name} has {int(bad.sum())} non-finite values (first at frame {frame})')
  with np.errstate(over='ignore'):
    stored = array.astype(dtype)
  if not np.isfinite(stored).all():
    raise _FileProblem(path, f'{name} values overflow {dtype.name} (max |x| = {float(np.abs(array).max()):g})')
  return stored


def _soft_labels(array: np.ndarray, path: str) -> np.ndarray:
  classes = len(schema.SOFT_LABEL_CLASSES)
  if array.ndim != 2 or array.shape[1] != classes:
    raise _FileProblem(path, f'soft labels must be [frames, {classes}], got shape {array.shape}')
  soft = _frames(array, path, 'soft labels', schema.SOFT_LABEL_DTYPE)
  if (soft < 0).any():
    raise _FileProblem(path, 'soft labels have negative values')
  sums = soft.sum(axis=1, dtype=np.float64)
  off = np.abs(sums - 1) > SOFT_LABEL_TOLERANCE
  if off.any():
    frame = int(np.argmax(off))
    raise _FileProblem(path, f'soft-label rows must sum to 1 (+-{SOFT_LABEL_TOLERANCE}); {int(off.sum())} do not, '
                       f'first at frame {frame} (sum {sums[frame]:.4f})')
  return soft


def wav_cache_path(utt: Utterance, options: FeatureOptions) -> str | None:
  """Where the features extracted from the utterance's wav are kept (None without a cache folder)."""
  if options.cache_dir is None:
    return None
  stat = os.stat(utt.wav)
  key = json.dumps([utt.wav, stat.st_size, stat.st_mtime_ns, options.acoustic_config_dict()], sort_keys=True)
  return os.path.join(options.cache_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + '.npy')


def _acoustic_from_wav(utt: Utterance, options: FeatureOptions) -> np.ndarray:
  from data_prep import acoustic_features  # librosa is only needed when a manifest has wavs
  try:
    cache = wav_cache_path(utt, options)
  except OSError as e:
    raise _FileProblem(utt.wav, f'unreadable wav ({type(e).__name__}: {e})') from e
  if cache is not None and os.path.exists(cache):
    return np.load(cache)
  try:
    [features] = acoustic_features.extract_batch([utt.wav], options.resolved_acoustic_config())
  except Exception as e:  # decoders raise many types; each is an unreadable file for the user
    raise _FileProblem(utt.wav, f'unreadable wav ({type(e).__name__}: {e})') from e
  save_cached(cache, features)
  return features


def save_cached(cache: str | None, features: np.ndarray) -> None:
  """Keeps extracted features for validation, writing and later runs (written whole or not at all)."""
  if cache is None:
    return
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  tmp = f'{cache}.tmp-{os.getpid()}.npy'
  np.save(tmp, features)
  os.replace(tmp, cache)


def _load_full(utt: Utterance, options: FeatureOptions) -> tuple[Features, bool]:
  """Loads and checks every feature of `utt` at full length; returns them and whether acoustic came from a wav."""
  dtype = schema.storage_dtype(options.storage_dtype)
  visual = soft = acoustic = None
  if utt.visual:
    visual = _frames(_load_npy(utt.visual), utt.visual, 'visual features', dtype)
  if utt.visual_soft_labels:
    soft = _soft_labels(_load_npy(utt.visual_soft_labels), utt.visual_soft_labels)
    visual_frames = 0 if visual is None else len(visual)
    if len(soft) != visual_frames:
      raise _FileProblem(utt.visual_soft_labels, f'{len(soft)} soft-label frames but {visual_frames} visual frames')
  from_wav = not utt.acoustic and bool(utt.wav)
  if utt.acoustic:
    acoustic = _frames(_load_npy(utt.acoustic), utt.acoustic, 'acoustic features', dtype)
  elif from_wav:
    acoustic = _frames(_acoustic_from_wav(utt, options), utt.wav, 'acoustic features (extracted)', dtype)
  return Features(visual, soft, acoustic), from_wav


def load_features(utt: Utterance, options: FeatureOptions) -> Features:
  """The arrays to store for `utt`, capped to the options' frame limits.

  Raises:
    ManifestError: a file is unreadable or its content invalid (files may change after validation).
  """
  try:
    features, _ = _load_full(utt, options)
  except _FileProblem as e:
    raise ManifestError([Problem(utt.id, e.path, e.message)]) from e
  if options.max_visual_frames is not None and features.visual is not None:
    features.visual = features.visual[:options.max_visual_frames]
    if features.visual_soft_labels is not None:
      features.visual_soft_labels = features.visual_soft_labels[:options.max_visual_frames]
  if options.max_acoustic_frames is not None and features.acoustic is not None:
    features.acoustic = features.acoustic[:options.max_acoustic_frames]
  return features


def _fingerprint(utt: Utterance) -> str:
  parts = [dataclasses.asdict(utt) | {'line': None}]
  for key in PATH_FIELDS:
    path = getattr(utt, key)
    if path:
      try:
        stat = os.stat(path)
        parts.append([key, stat.st_size, stat.st_mtime_ns])
      except OSError:
        parts.append([key, 'missing'])
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def inspect_features(utt: Utterance, options: FeatureOptions) -> FeatureInfo:
  """Loads and checks every feature file of one utterance (run in the worker processes)."""
  fingerprint = _fingerprint(utt)
  try:
    features, from_wav = _load_full(utt, options)
  except _FileProblem as e:
    return FeatureInfo(utt.id, (Problem(utt.id, e.path, e.message),), fingerprint=fingerprint)
  visual, acoustic = features.visual, features.acoustic
  return FeatureInfo(
      utt.id, visual_frames=0 if visual is None else visual.shape[0],
      visual_dim=None if visual is None else visual.shape[1],
      acoustic_frames=0 if acoustic is None else acoustic.shape[0],
      acoustic_dim=None if acoustic is None else acoustic.shape[1],
      has_soft_labels=features.visual_soft_labels is not None, acoustic_from_wav=from_wav, fingerprint=fingerprint)


def _corpus_dim(infos: Iterable[FeatureInfo], attr: str, expected: int | None) -> int | None:
  """The expected dimension if given, else the most common one in the data (ties: the smallest)."""
  if expected is not None:
    return expected
  counts = collections.Counter(getattr(i, attr) for i in infos if getattr(i, attr) is not None)
  return min(counts, key=lambda d: (-counts[d], d)) if counts else None


def _dim_problems(utterances: Sequence[Utterance], infos: Sequence[FeatureInfo], visual_dim: int | None,
                  acoustic_dim: int | None) -> list[Problem]:
  problems = []
  for utt, info in zip(utterances, infos):
    for name, dim, want, path in (('visual', info.visual_dim, visual_dim, utt.visual),
                                  ('acoustic', info.acoustic_dim, acoustic_dim, utt.acoustic or utt.wav)):
      if dim is not None and dim != want:
        problems.append(Problem(utt.id, path, f'{name} dimension {dim} differs from the corpus\'s {want}'))
  return problems


def _nothing_to_write(manifest: str, problems: Sequence[Problem]) -> Problem:
  if problems:
    return Problem(None, manifest, 'no examples left to write: every record has a problem (listed above); fix them')
  return Problem(None, manifest, 'no examples: the manifest is empty or has only blank lines; give it one JSON '
                 'object per utterance (docs/DATA.md)')


@contextlib.contextmanager
def worker_map(workers: int) -> Iterator[Callable[..., Iterable[Any]] | None]:
  """An ordered map over `workers` spawned processes (spawn: safe next to threads and TensorFlow); None for 1."""
  if workers <= 1:
    yield None
    return
  with multiprocessing.get_context('spawn').Pool(workers) as pool:
    yield pool.imap


def validate(manifest: str | os.PathLike, *, labels: Sequence[str] | None = None,
             options: FeatureOptions = FeatureOptions(), on_error: str = 'fail',
             imap: Callable[..., Iterable[Any]] | None = None, visual_dim: int | None = None,
             acoustic_dim: int | None = None, progress: bool = True) -> ValidatedManifest:
  """Checks every example of a manifest.

  Args:
    manifest: path of the JSONL manifest.
    labels: the label set, in index order; None takes the sorted distinct labels of the manifest.
    options: how features are loaded (storage dtype, caps, acoustic extractor).
    on_error: 'fail' raises `ManifestError` listing every problem; 'skip' leaves those utterances out.
    imap: an ordered parallel map such as `multiprocessing.Pool.imap` (None: in this process).
    visual_dim: the dimension the visual features must have (None: the most common one in the data).
    acoustic_dim: likewise for acoustic features.
    progress: show a progress bar.

  Returns:
    The valid utterances with their feature summaries, the label set, the feature dimensions and the
    problems (empty in fail mode).

  Raises:
    ManifestError: in fail mode, any problem; in both modes, no example left to write.
  """
  if on_error not in ('fail', 'skip'):
    raise ValueError(f'on_error must be "fail" or "skip", got {on_error!r}')
  manifest = os.fspath(manifest)
  utterances, problems = read_manifest(manifest)
  label_names = list(labels) if labels is not None else sorted({u.label for u in utterances if u.label is not None})
  problems += check_records(utterances, label_names, manifest)
  inspect = functools.partial(inspect_features, options=options)
  mapped = (imap or map)(inspect, utterances, **({'chunksize': 8} if imap else {}))
  infos = list(tqdm(mapped, total=len(utterances), desc='validating', unit=' examples', disable=not progress,
                    mininterval=1.0))
  for info in infos:
    problems.extend(info.problems)
  sound = [info for info in infos if not info.problems]
  visual_dim = _corpus_dim(sound, 'visual_dim', visual_dim)
  acoustic_dim = _corpus_dim(sound, 'acoustic_dim', acoustic_dim)
  problems += _dim_problems(utterances, infos, visual_dim, acoustic_dim)
  if problems and on_error == 'fail':
    raise ManifestError(problems)
  bad_ids = {p.id for p in problems}
  kept = [(u, info) for u, info in zip(utterances, infos) if u.id not in bad_ids]
  if not kept:  # an empty dataset marked complete would only fail later, in training
    raise ManifestError(problems + [_nothing_to_write(manifest, problems)])
  return ValidatedManifest(manifest, [u for u, _ in kept], {u.id: info for u, info in kept}, problems, label_names,
                           visual_dim, acoustic_dim)
