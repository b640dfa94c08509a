"""MSP-IMPROV -> manifest JSONL, 4 classes (spec section 5).

The release's evaluation file (`Evalution.txt`, sic) holds one block per utterance,
blocks separated by blank lines. A block's first line is the consensus:

  UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:2.8; V:3.2; D:3.0; N:3.4

i.e. the video name, the consensus category (A, H, N, S; anything else, such as O for
other or X for no agreement, is dropped and counted), then the dimensional averages. The
following lines of the block are the individual raters' answers and are ignored. This
parser is strict: a line naming a '.avi' that does not have that shape, a rater line
before the first block, or a repeated utterance is an error naming the line.

Name fields (MSP-IMPROV-S01A-F01-S-FM01): S01A = target sentence 01 and its target emotion
A; F01 = the actor (gender F) of session 01; S = recording type; FM01 = the turn. Public
tools read the type letter as T target-improvised, R target-read, S other-improvised
and P natural interaction; the paper's authors' code uses type S, the default here
(`types`). Session: '1'..'6'; speaker: session + the actor's gender ('F01' -> '1F').
Utterance ids use the audio files' 'MSP-IMPROV-' prefix (the evaluation file names the
videos 'UTD-IMPROV-').

Transcripts: with `transcript_dir`, each kept utterance needs `<id>.txt` somewhere under
it (either prefix); a missing one is an error (or, with `drop_missing_transcripts`, a
counted drop). Without it, text is empty. Audio: with `wav_dir`, `<id>.wav` is looked up
anywhere under it. Feature file patterns may use {id}, {session} and {sentence} ('S01A').

  python -m data_prep.corpora.msp_improv --evaluation MSP-IMPROV/Evalution.txt \
      --transcript_dir MSP-IMPROV/Transcripts --wav_dir MSP-IMPROV/Audio --extract_acoustic \
      --output msp/manifest.jsonl
"""

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from data_prep.corpora import common

LABEL_MAP = {'A': 'anger', 'H': 'happy', 'N': 'neutral', 'S': 'sad'}
_NAME = r'(?:UTD|MSP)-IMPROV-(S\d{2}[A-Z])-([FM])(\d{2})-([A-Z])-([A-Z]{2}\d+)'
_HEADER = re.compile(rf'^{_NAME}\.avi\s*;\s*([A-Za-z]+)\s*;(.*)$')
_FILE = re.compile(rf'^{_NAME}$')
# A consensus line starts with the video's name (rater lines never name the video).
_HEADER_START = re.compile(r'^(?:UTD|MSP)-IMPROV-\S*?\.avi')


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The consensus line of one utterance."""
  uid: str  # 'MSP-IMPROV-S01A-F01-S-FM01'
  sentence: str  # 'S01A'
  session: str  # '1'
  speaker: str  # '1F'
  type: str  # 'S'
  label: str  # raw consensus letter


def _key(name: str) -> str:
  # The evaluation file names videos UTD-IMPROV-..., the audio and text files MSP-IMPROV-...
  return name.split('-IMPROV-', 1)[-1]


def parse_evaluation(path: str | Path) -> list[Evaluation]:
  """The consensus lines of an MSP-IMPROV evaluation file (see the module doc for the format)."""
  evaluations, seen = [], {}
  in_block = False
  for number, line in enumerate(common.read_text(path).splitlines(), 1):
    line = line.strip()
    if not line:
      in_block = False
      continue
    if _HEADER_START.match(line):
      match = _HEADER.match(line)
      if not match:
        raise ValueError(f'{path}:{number}: expected "<UTD-IMPROV-name>.avi; <label>; A:..; V:..; ...", '
                         f'got {line!r}')
      sentence, gender, session, kind, turn, label = match.groups()[:6]
      uid = f'MSP-IMPROV-{sentence}-{gender}{session}-{kind}-{turn}'
      if uid in seen:
        raise ValueError(f'{path}:{number}: {uid} already evaluated on line {seen[uid]}')
      seen[uid] = number
      session = str(int(session))
      evaluations.append(Evaluation(uid, sentence, session, session + gender, kind, label.upper()))
      in_block = True
    elif not in_block:
      raise ValueError(f'{path}:{number}: rater line outside an utterance block: {line!r}')
  if not evaluations:
    raise ValueError(f'{path}: no utterance blocks found (is this the MSP-IMPROV Evalution.txt?)')
  return evaluations


def _index(directory: str | Path | None, suffix: str) -> dict[str, Path]:
  """Name key -> file for every `*suffix` under `directory` whose stem is an MSP-IMPROV name."""
  if directory is None:
    return {}
  directory = Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f'no such directory: {directory}')
  return {_key(p.stem): p for p in directory.rglob(f'*{suffix}')
          if _FILE.match(p.stem) and not p.name.startswith('._')}


def build_manifest(evaluation_file: str | Path, output: str | Path, transcript_dir: str | Path | None = None,
                   wav_dir: str | Path | None = None, types: Sequence[str] = ('S',),
                   drop_missing_transcripts: bool = False,
                   features: common.FeatureOptions = common.FeatureOptions()) -> common.AdapterReport:
  """Writes the 4-class MSP-IMPROV manifest to `output`.

  Args:
    evaluation_file: the release's Evalution.txt.
    output: manifest path.
    transcript_dir: folder searched recursively for `<id>.txt` transcripts (None: empty texts).
    wav_dir: folder searched recursively for `<id>.wav` (None: no wav field).
    types: recording types kept (6th name field).
    drop_missing_transcripts: drop (and count) utterances without a transcript instead of failing.
    features: where the frame features are.

  Returns:
    What was kept and dropped (per type and per raw label).
  """
  output = Path(output)
  texts, audio = _index(transcript_dir, '.txt'), _index(wav_dir, '.wav')
  report = common.AdapterReport()
  records, fields, wavs, no_text = [], [], [], []
  for ev in parse_evaluation(evaluation_file):
    if ev.type not in types:
      report.dropped[f'type {ev.type}'] += 1
      continue
    label = LABEL_MAP.get(ev.label)
    if label is None:
      report.dropped[f'label {ev.label}'] += 1
      continue
    text = ''
    if transcript_dir is not None:
      path = texts.get(_key(ev.uid))
      if path is None:
        if drop_missing_transcripts:
          report.dropped['no transcript'] += 1
        else:
          no_text.append(ev.uid)
        continue
      text = ' '.join(common.read_text(path).split())
    wav = audio.get(_key(ev.uid))
    records.append(common.record(ev.uid, text, label=label, speaker=ev.speaker, session=ev.session))
    fields.append(dict(id=ev.uid, session=ev.session, sentence=ev.sentence))
    wavs.append(None if wav is None else str(wav))
    report.labels[label] += 1
  if no_text:
    raise FileNotFoundError(f'{len(no_text)} utterances have no transcript <id>.txt under {transcript_dir}, '
                            f'e.g. {no_text[:5]} (--drop_missing_transcripts drops them)')
  common.attach_features(records, fields, wavs, features, output.parent, report)
  report.kept = common.write_manifest(records, output)
  return report


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--evaluation', required=True, help="the release's Evalution.txt")
  parser.add_argument('--output', required=True, help='manifest JSONL to write')
  parser.add_argument('--transcript_dir', help='folder with one <id>.txt transcript per utterance')
  parser.add_argument('--wav_dir', help='folder with the <id>.wav files (searched recursively)')
  parser.add_argument('--types', default='S', help='recording types kept, comma-separated (T, R, S, P)')
  parser.add_argument('--drop_missing_transcripts', action='store_true')
  common.add_feature_flags(parser)
  args = parser.parse_args(argv)
  report = build_manifest(args.evaluation, args.output, transcript_dir=args.transcript_dir, wav_dir=args.wav_dir,
                          types=tuple(t.strip() for t in args.types.split(',')),
                          drop_missing_transcripts=args.drop_missing_transcripts,
                          features=common.feature_options_from_args(args))
  print(report.summary())


if __name__ == '__main__':
  main()
