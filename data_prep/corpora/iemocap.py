"""IEMOCAP (release layout) -> manifest JSONL, 4 classes (spec section 5).

Reads, under the release root:

  Session{1..5}/dialog/EmoEvaluation/<dialog>.txt   '[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, ...]'
  Session{1..5}/dialog/transcriptions/<dialog>.txt  'Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.'
  Session{1..5}/sentences/wav/<dialog>/<utt>.wav    (optional: only for the wav field / acoustic extraction)

Classes: ang -> anger, hap and exc -> happy (merged, as in the paper), neu -> neutral,
sad -> sad. Every other label (fru, sur, fea, dis, oth, xxx) is dropped and counted in
the report. Session '1'..'5' comes from the name (Ses01 -> '1'); the speaker is the
session plus the gender letter of the *utterance* (the letter before the turn number:
Ses01F_impro01_M003 -> '1M'). The letter after 'Ses01' names the dialog's leading actor,
not the speaker of the turn.

Feature file patterns may use {id}, {session} and {dialog}.

  python -m data_prep.corpora.iemocap --root IEMOCAP_full_release --output iemocap/manifest.jsonl \
      --visual_dir feats/visual --soft_label_dir feats/ferplus --extract_acoustic --workers 4
"""

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from data_prep.corpora import common

LABEL_MAP = {'ang': 'anger', 'hap': 'happy', 'exc': 'happy', 'neu': 'neutral', 'sad': 'sad'}
_EVALUATION_LINE = re.compile(r'^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\t(\S+)\t(\S+)\t')
_TRANSCRIPT_LINE = re.compile(r'^(\S+)\s+\[[\d.]+-[\d.]+\]:\s?(.*)$')
_UTTERANCE_ID = re.compile(r'^Ses(\d{2})[FM]_(.+)_([FM])\d+$')


def parse_utterance_id(uid: str) -> tuple[str, str, str]:
  """(session, speaker, dialog) of an IEMOCAP utterance id, e.g. ('1', '1M', 'Ses01F_impro01')."""
  match = _UTTERANCE_ID.match(uid)
  if not match:
    raise ValueError(f'not an IEMOCAP utterance id: {uid!r}')
  session = str(int(match.group(1)))
  return session, session + match.group(3), uid.rsplit('_', 1)[0]


def _text_files(directory: Path) -> list[Path]:
  # macOS copies of the release carry '._name' resource forks next to every file.
  return sorted(p for p in directory.glob('*.txt') if not p.name.startswith('._'))


def read_labels(root: Path, sessions: Sequence[int]) -> dict[str, str]:
  """Utterance id -> raw IEMOCAP label ('neu', 'exc', 'xxx', ...), from EmoEvaluation."""
  labels = {}
  for session in sessions:
    directory = root / f'Session{session}' / 'dialog' / 'EmoEvaluation'
    files = _text_files(directory)
    if not files:
      raise FileNotFoundError(f'no evaluation files in {directory} (is --root the IEMOCAP release folder?)')
    for path in files:
      for line in common.read_text(path).splitlines():
        match = _EVALUATION_LINE.match(line)
        if match:
          labels[match.group(3)] = match.group(4)
  return labels


def read_transcripts(root: Path, sessions: Sequence[int]) -> dict[str, str]:
  """Utterance id -> transcript, from dialog/transcriptions."""
  texts = {}
  for session in sessions:
    directory = root / f'Session{session}' / 'dialog' / 'transcriptions'
    for path in _text_files(directory):
      for line in common.read_text(path).splitlines():
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match and _UTTERANCE_ID.match(match.group(1)):
          texts[match.group(1)] = match.group(2).strip()
  return texts


def build_manifest(root: str | Path, output: str | Path, features: common.FeatureOptions = common.FeatureOptions(),
                   sessions: Sequence[int] = (1, 2, 3, 4, 5)) -> common.AdapterReport:
  """Writes the 4-class IEMOCAP manifest to `output`.

  Args:
    root: the release folder (holding Session1..Session5).
    output: manifest path.
    features: where the frame features are (or how to extract acoustic ones from the wavs).
    sessions: sessions to read.

  Returns:
    What was kept and dropped (per raw label).

  Raises:
    FileNotFoundError: a session has no evaluation files, or a kept utterance has no
      transcript, or a feature file is missing (unless features.allow_missing).
  """
  root, output = Path(root), Path(output)
  labels = read_labels(root, sessions)
  texts = read_transcripts(root, sessions)
  report = common.AdapterReport()
  records, fields, wavs, no_text = [], [], [], []
  for uid in sorted(labels):
    label = LABEL_MAP.get(labels[uid])
    if label is None:
      report.dropped[f'label {labels[uid]}'] += 1
      continue
    if uid not in texts:
      no_text.append(uid)
      continue
    session, speaker, dialog = parse_utterance_id(uid)
    wav = root / f'Session{session}' / 'sentences' / 'wav' / dialog / f'{uid}.wav'
    records.append(common.record(uid, texts[uid], label=label, speaker=speaker, session=session))
    fields.append(dict(id=uid, session=session, dialog=dialog))
    wavs.append(str(wav) if wav.is_file() else None)
    report.labels[label] += 1
  if no_text:
    raise FileNotFoundError(f'{len(no_text)} labelled utterances have no transcript line in '
                            f'dialog/transcriptions, e.g. {no_text[:5]}')
  common.attach_features(records, fields, wavs, features, output.parent, report)
  report.kept = common.write_manifest(records, output)
  return report


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--root', required=True, help='IEMOCAP release folder (Session1..Session5)')
  parser.add_argument('--output', required=True, help='manifest JSONL to write')
  parser.add_argument('--sessions', default='1,2,3,4,5')
  common.add_feature_flags(parser)
  args = parser.parse_args(argv)
  report = build_manifest(args.root, args.output, common.feature_options_from_args(args),
                          sessions=[int(s) for s in args.sessions.split(',')])
  print(report.summary())


if __name__ == '__main__':
  main()
