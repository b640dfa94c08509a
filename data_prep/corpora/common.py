"""Pieces shared by the corpus adapters: manifest records, feature lookup, the drop report.

A manifest is JSONL, one utterance per line:

  {"id", "text", "label", "speaker", "session", "split", "visual", "visual_soft_labels", "acoustic", "wav"}

with file paths relative to the manifest's directory (see data_prep/manifest.py).
"""

import argparse
import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from data_prep import acoustic_features, manifest

# The four classes of IEMOCAP / MSP-IMPROV, named by their verbalizer words (spec section 4).
EMOTIONS = ('anger', 'happy', 'neutral', 'sad')
MANIFEST_KEYS = ('id', 'text', 'label', 'speaker', 'session', 'split', 'visual', 'visual_soft_labels', 'acoustic',
                 'wav')


@dataclasses.dataclass
class AdapterReport:
  """What an adapter kept and what it dropped, and why; printed by every CLI."""
  kept: int = 0
  labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  missing_features: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def summary(self) -> str:
    lines = [f'kept {self.kept} utterances: ' + ', '.join(f'{k}={v}' for k, v in sorted(self.labels.items()))]
    lines.append(f'dropped {sum(self.dropped.values())}: ' +
                 (', '.join(f'{k}={v}' for k, v in sorted(self.dropped.items())) or 'none'))
    if self.missing_features:
      lines.append('missing feature files (written as null): ' +
                   ', '.join(f'{k}={v}' for k, v in sorted(self.missing_features.items())))
    return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
  """Where an adapter finds (or how it makes) the frame features of an utterance.

  Patterns are `str.format` templates relative to their directory; they may use `{id}`
  and any other field the adapter offers (documented per adapter), e.g. '{session}/{id}.npy'.

  Attributes:
    visual_dir: precomputed visual features [T, Dv], one .npy per utterance.
    visual_pattern: file name template under visual_dir.
    soft_label_dir: precomputed FER+ soft labels [T, 8].
    soft_label_pattern: file name template under soft_label_dir.
    acoustic_dir: precomputed acoustic features [T, Da].
    acoustic_pattern: file name template under acoustic_dir.
    extract_acoustic: when set (and acoustic_dir is not), acoustic features are extracted from
      each utterance's audio with this config into `<manifest dir>/acoustic/<id>.npy`.
    allow_missing: a missing feature file becomes null (counted in the report) instead of an error.
    workers: processes for acoustic extraction.
  """
  visual_dir: str | None = None
  visual_pattern: str = '{id}.npy'
  soft_label_dir: str | None = None
  soft_label_pattern: str = '{id}.npy'
  acoustic_dir: str | None = None
  acoustic_pattern: str = '{id}.npy'
  extract_acoustic: acoustic_features.AcousticFeatureConfig | None = None
  allow_missing: bool = False
  workers: int = 1


def record(uid: str, text: str, label: str | None = None, speaker: str | None = None, session: str | None = None,
           split: str | None = None, visual: str | None = None, visual_soft_labels: str | None = None,
           acoustic: str | None = None, wav: str | None = None) -> dict:
  """One manifest line (every key present, in the contract's order)."""
  return dict(id=uid, text=text, label=label, speaker=speaker, session=session, split=split, visual=visual,
              visual_soft_labels=visual_soft_labels, acoustic=acoustic, wav=wav)


def relative(path: str | os.PathLike | None, manifest_dir: Path) -> str | None:
  return None if path is None else os.path.relpath(Path(path).resolve(), manifest_dir.resolve())


def safe_file_name(uid: str) -> str:
  """An id usable as a file name (ids may contain '/' in generic corpora)."""
  return re.sub(r'[^A-Za-z0-9._-]', '_', uid)


def attach_features(records: list[dict], fields: Sequence[dict], wavs: Sequence[str | None], options: FeatureOptions,
                    manifest_dir: Path, report: AdapterReport) -> None:
  """Fills the visual / soft-label / acoustic / wav entries of `records` in place.

  Args:
    records: manifest records (their paths are written relative to manifest_dir).
    fields: per record, the values the file name patterns may use (at least 'id').
    wavs: per record, the audio file (absolute or relative to the working directory) or None.
    options: where the features are.
    manifest_dir: directory of the manifest being written.
    report: missing-file counts go here (when options.allow_missing).
  """
  missing = collections.defaultdict(list)
  lookups = (('visual', options.visual_dir, options.visual_pattern),
             ('visual_soft_labels', options.soft_label_dir, options.soft_label_pattern),
             ('acoustic', options.acoustic_dir, options.acoustic_pattern))
  for rec, values, wav in zip(records, fields, wavs):
    rec['wav'] = relative(wav, manifest_dir)
    for key, directory, pattern in lookups:
      if directory is None:
        continue
      path = Path(directory) / pattern.format(**values)
      if path.is_file():
        rec[key] = relative(path, manifest_dir)
      else:
        missing[key].append(str(path))
  for key, paths in missing.items():
    if not options.allow_missing:
      raise FileNotFoundError(f'{len(paths)} {key} feature files are missing, e.g. {paths[:3]} '
                              '(pass --allow_missing_features to write them as null)')
    report.missing_features[key] += len(paths)

  if options.extract_acoustic is not None and options.acoustic_dir is None:
    out_dir = manifest_dir / 'acoustic'
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for rec, wav in zip(records, wavs):
      if wav is None:
        if not options.allow_missing:
          raise FileNotFoundError(f'utterance {rec["id"]} has no audio file to extract acoustic features from')
        report.missing_features['acoustic (no audio)'] += 1
        continue
      target = out_dir / (safe_file_name(rec['id']) + '.npy')
      rec['acoustic'] = relative(target, manifest_dir)
      jobs.append((wav, str(target)))
    acoustic_features.extract_files(jobs, options.extract_acoustic, options.workers)


def write_manifest(records: Iterable[dict], path: str | os.PathLike) -> int:
  """Writes JSONL (ids must be unique; the contract's keys first, then any of the adapter's own); returns the
  number of lines."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  seen = set()
  count = 0
  with open(path, 'w', encoding='utf-8') as f:
    for rec in records:
      if rec['id'] in seen:
        raise ValueError(f'duplicate utterance id {rec["id"]!r} in manifest {path}')
      seen.add(rec['id'])
      _check_text(rec, path)
      extra = {k: v for k, v in rec.items() if k not in MANIFEST_KEYS}  # an adapter's own keys, after the contract's
      f.write(json.dumps({**{k: rec[k] for k in MANIFEST_KEYS}, **extra}, ensure_ascii=False) + '\n')
      count += 1
  return count


def _check_text(rec: dict, path: Path) -> None:
  """Refuses a string UTF-8 cannot store (a lone surrogate), naming the record, before its line is written."""
  for key in MANIFEST_KEYS:
    problem = manifest.lone_surrogate_message(key, rec[key]) if isinstance(rec[key], str) else None
    if problem:
      raise ValueError(f'{path}: utterance {ascii(rec["id"])}: {problem}')


def read_text(path: str | os.PathLike) -> str:
  """A corpus's text file, decoded strictly: bytes that are not UTF-8 are an error naming the file and line,
  never replaced."""
  raw = Path(path).read_bytes()
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    raise ValueError(f'{path}:{line}: bytes are not UTF-8 (0x{raw[e.start]:02x}: {e.reason}); convert the file to '
                     f'UTF-8 (e.g. iconv -f latin1 -t utf-8)') from None


def read_manifest(path: str | os.PathLike) -> list[dict]:
  """The records of a JSONL manifest (no validation: data_prep/manifest.py does that); a bad line is named."""
  records = []
  with open(path, 'rb') as f:  # decoded line by line, so that bytes that are not UTF-8 name their line
    for line, raw in enumerate(f, start=1):
      try:
        text = raw.decode('utf-8')
        if text.strip():
          records.append(json.loads(text))
      except UnicodeDecodeError as e:
        raise ValueError(f'{path}:{line}: {manifest.not_utf8_message(e)}') from None
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{line}: invalid JSON ({e})') from None
  return records


def add_feature_flags(parser: argparse.ArgumentParser) -> None:
  """The flags of `FeatureOptions` (and the acoustic extractor's) for an adapter CLI."""
  group = parser.add_argument_group('features')
  group.add_argument('--visual_dir', help='precomputed visual .npy files [T, Dv]')
  group.add_argument('--visual_pattern', default='{id}.npy')
  group.add_argument('--soft_label_dir', help='precomputed FER+ soft label .npy files [T, 8]')
  group.add_argument('--soft_label_pattern', default='{id}.npy')
  group.add_argument('--acoustic_dir', help='precomputed acoustic .npy files [T, Da]')
  group.add_argument('--acoustic_pattern', default='{id}.npy')
  group.add_argument('--extract_acoustic', action='store_true',
                     help='extract acoustic features from the audio (data_prep/acoustic_features.py)')
  group.add_argument('--allow_missing_features', action='store_true', help='write missing feature files as null')
  group.add_argument('--workers', type=int, default=1, help='processes for acoustic extraction')
  acoustic_features.add_config_flags(parser)


def feature_options_from_args(args: argparse.Namespace) -> FeatureOptions:
  return FeatureOptions(
      visual_dir=args.visual_dir, visual_pattern=args.visual_pattern, soft_label_dir=args.soft_label_dir,
      soft_label_pattern=args.soft_label_pattern, acoustic_dir=args.acoustic_dir,
      acoustic_pattern=args.acoustic_pattern,
      extract_acoustic=acoustic_features.config_from_args(args) if args.extract_acoustic else None,
      allow_missing=args.allow_missing_features, workers=args.workers)
