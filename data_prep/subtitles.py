"""Subtitle files (SubRip .srt and WebVTT .vtt) as timed lines of plain text.

Each cue keeps the line number of its timing line in the file, so an error about a clip can
name the subtitle line it came from. Markup is removed (<i>, <font ...>, {\\an8}-style ASS
overrides, WebVTT voice and class tags); line breaks inside a cue become spaces.
"""

import dataclasses
import html
import os
import re

_TIME = r'(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})'
_TIMING = re.compile(rf'^\s*{_TIME}\s*-->\s*{_TIME}')
_TAGS = re.compile(r'<[^>]*>|\{\\[^}]*\}')


@dataclasses.dataclass(frozen=True)
class Cue:
  """One subtitle: its text without markup, its time span in seconds, and where it stands in the file."""
  file: str
  line: int  # of the timing line, 1-based
  start: float
  end: float
  text: str

  @property
  def where(self) -> str:
    return f'{self.file}:{self.line}'


class SubtitleError(ValueError):
  """A subtitle file that cannot be read as timed cues; the message names the file and line."""


def _seconds(hours: str | None, minutes: str, seconds: str, fraction: str) -> float:
  return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, '0')) / 1000


def plain_text(lines: list[str]) -> str:
  """A cue's lines as one line of text: markup and entities removed, whitespace collapsed."""
  return ' '.join(html.unescape(_TAGS.sub('', ' '.join(lines))).split())


def read_cues(path: str | os.PathLike) -> list[Cue]:
  """The cues of an .srt or .vtt file, in file order (cue numbers, WebVTT headers, notes and styles skipped).

  Raises:
    SubtitleError: the file is not UTF-8, or a cue's end is not after its start, naming the file and line.
  """
  path = os.fspath(path)
  raw = open(path, 'rb').read()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    raise SubtitleError(f'{path}:{line}: bytes are not UTF-8 (0x{raw[e.start]:02x}): convert the subtitles to '
                        f'UTF-8 (e.g. iconv -f latin1 -t utf-8)') from None
  cues, lines = [], text.splitlines()
  number = 0
  while number < len(lines):
    match = _TIMING.match(lines[number])
    number += 1
    if not match:
      continue  # cue numbers, blank lines, WEBVTT header, NOTE and STYLE blocks
    timing_line = number
    start, end = _seconds(*match.groups()[:4]), _seconds(*match.groups()[4:])
    if end <= start:
      raise SubtitleError(f'{path}:{timing_line}: the cue ends ({end:.3f} s) before it starts ({start:.3f} s)')
    body = []
    while number < len(lines) and lines[number].strip() and not _TIMING.match(lines[number]):
      body.append(lines[number])
      number += 1
    cues.append(Cue(path, timing_line, start, end, plain_text(body)))
  return cues


def overlapping(cues: list[Cue]) -> set[int]:
  """Indices of cues whose time span overlaps another cue's (two speakers talking at once, or timing errors)."""
  order = sorted(range(len(cues)), key=lambda i: cues[i].start)
  found, latest = set(), None
  for i in order:
    if latest is not None and cues[i].start < cues[latest].end:
      found.update((i, latest))
    if latest is None or cues[i].end > cues[latest].end:
      latest = i
  return found
