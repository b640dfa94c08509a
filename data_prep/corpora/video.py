"""Clips from videos and their subtitles: one clip per subtitle line, with its audio and face features.

  python -m data_prep.corpora.video --videos DIR --subtitles DIR --output clips.jsonl [--workers 4]
      [--keep_faceless] [--on_error fail|skip] [--part k/n] [--fps 10] [--max_visual_frames 36]

The pretraining corpus of the paper (spec section 3): movie and TV clips cut at subtitle boundaries,
kept where the speaker's face is found. For every video in --videos (.mp4 .mkv .avi .mov .webm .mpg)
the subtitle file of the same name in --subtitles (.srt or .vtt) gives the cues; each cue becomes a
clip with
  - text: the cue without markup (data_prep/subtitles.py), line breaks as spaces;
  - wav: its audio, 16 kHz mono (resampled from the video's rate, said in the summary), which
    data_prep.write_shards turns into acoustic frames (librosa, or wav2vec 2.0 with --wav2vec2);
  - visual, visual_soft_labels: its face frames at --fps through the face-expression CNN
    (memobert_jax/features/face.py: the largest face per frame, FER2013 mini-Xception features and
    probabilities mapped onto the FER+ classes);
  - start, end (seconds), video, subtitle (FILE:LINE), session (the video's name).
Overlapping cues (two speakers at once, or timing errors) are each a clip of their own and are
counted in the summary. Clips where no face is found are dropped, as in the paper, unless
--keep_faceless (then they have one zero frame with a one-hot neutral soft label).

Before any extraction every video is checked: a missing or unreadable subtitle file, a video that
cannot be read or has no audio track, a cue with empty text or times past the video's end stop the job
with every problem listed (FILE or FILE:LINE and what is wrong); with --on_error=skip those cues or
videos are left out and listed in OUTPUT.summary.json instead.

Resumable: each finished video leaves clips/VIDEO/done.json (its manifest lines and a fingerprint of the
video, the subtitles and the options); a re-run reuses those and extracts only the rest, so a job killed
at any point can simply be run again. The manifest and the summary are written last. --part k/n takes
every n-th video from the k-th, so several machines can share a corpus (then concatenate their
manifests); OUTPUT.features.json records the extractors, and write_shards copies it into metadata.json.
"""

import argparse
import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from data_prep import subtitles
from data_prep.corpora import common
from memobert_jax.data import schema

VIDEO_SUFFIXES = ('.mp4', '.mkv', '.avi', '.mov', '.webm', '.mpg')
SUBTITLE_SUFFIXES = ('.srt', '.vtt')
SAMPLE_RATE = 16000
FEATURES_SUFFIX = '.features.json'


@dataclasses.dataclass(frozen=True)
class Options:
  keep_faceless: bool = False
  fps: float = 10.0
  max_visual_frames: int = 36
  min_face_size: int = 50


@dataclasses.dataclass(frozen=True)
class Video:
  """A video with its subtitle cues that passed the checks (`plan`)."""
  path: str
  subtitle: str
  cues: tuple[subtitles.Cue, ...]
  overlapping: frozenset[int]
  audio_rate: int


def _problem(where: str, message: str) -> dict:
  return {'where': where, 'problem': message}


def find_subtitle(video: Path, subtitle_dir: Path) -> Path | None:
  for suffix in SUBTITLE_SUFFIXES:
    candidate = subtitle_dir / (video.stem + suffix)
    if candidate.is_file():
      return candidate
  return None


def plan(video_dir: Path, subtitle_dir: Path) -> tuple[list[Video], list[dict]]:
  """The videos and cues to cut, and every problem found (cheap checks only: headers and subtitles)."""
  from memobert_jax.features import media  # PyAV only where videos are read
  videos = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
  if not videos:
    raise FileNotFoundError(f'{video_dir} holds no video files ({", ".join(VIDEO_SUFFIXES)})')
  planned, problems = [], []
  for video in videos:
    subtitle = find_subtitle(video, subtitle_dir)
    if subtitle is None:
      problems.append(_problem(str(video), f'no subtitle file {video.stem}.srt or .vtt in {subtitle_dir}'))
      continue
    try:
      cues = subtitles.read_cues(subtitle)
      info = media.probe(video)
    except (subtitles.SubtitleError, media.MediaError) as e:
      problems.append(_problem(str(subtitle if isinstance(e, subtitles.SubtitleError) else video), str(e)))
      continue
    if info.audio_sample_rate is None:
      problems.append(_problem(str(video), 'the video has no audio track'))
      continue
    if info.video_size is None:
      problems.append(_problem(str(video), 'the file has no video stream'))
      continue
    kept = []
    for cue in cues:
      if not cue.text:
        problems.append(_problem(cue.where, 'empty subtitle text (nothing left after removing markup)'))
      elif cue.end > info.duration + media.END_TOLERANCE:
        problems.append(_problem(cue.where, f'the cue ends at {cue.end:.3f} s, after the end of {video} '
                                            f'({info.duration:.3f} s)'))
      else:
        kept.append(cue)
    if not cues:
      problems.append(_problem(str(subtitle), 'no timed cues in the subtitle file'))
    planned.append(Video(str(video), str(subtitle), tuple(kept), frozenset(subtitles.overlapping(kept)),
                         info.audio_sample_rate))
  return planned, problems


def _fingerprint(video: Video, options: Options) -> str:
  stats = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in (video.path, video.subtitle)]
  payload = json.dumps([stats, [dataclasses.astuple(c) for c in video.cues], dataclasses.asdict(options)])
  return hashlib.sha256(payload.encode()).hexdigest()


_EXTRACTOR = None  # one per process: its CNN compiles once


def _visual_features(options: Options):
  global _EXTRACTOR
  if _EXTRACTOR is None:
    from memobert_jax.features import face
    _EXTRACTOR = face.VisualFeatures(face.VisualFeatureConfig(fps=options.fps, max_frames=options.max_visual_frames,
                                                              min_face_size=options.min_face_size))
  return _EXTRACTOR


def cut_video(video: Video, clip_dir: Path, manifest_dir: Path, options: Options) -> dict:
  """Extracts every clip of one video (or reuses a finished earlier run); returns its done record."""
  from memobert_jax.features import media
  out_dir = clip_dir / common.safe_file_name(Path(video.path).stem)
  done_file = out_dir / 'done.json'
  fingerprint = _fingerprint(video, options)
  if done_file.is_file():
    done = json.loads(done_file.read_text())
    if done['fingerprint'] == fingerprint:
      return done
  out_dir.mkdir(parents=True, exist_ok=True)
  extractor = _visual_features(options)
  lines, dropped = [], collections.Counter()
  for number, cue in enumerate(video.cues, 1):
    features, soft_labels, info = extractor(video.path, cue.start, cue.end)
    if not info['frames_with_face'] and not options.keep_faceless:
      dropped['no face found'] += 1
      continue
    uid = f'{Path(video.path).stem}_{number:05d}'
    stem = out_dir / common.safe_file_name(uid)
    soundfile.write(f'{stem}.wav', media.read_audio(video.path, cue.start, cue.end, SAMPLE_RATE), SAMPLE_RATE,
                    subtype='PCM_16')
    np.save(f'{stem}_visual.npy', features)
    np.save(f'{stem}_soft.npy', soft_labels)
    record = common.record(uid, cue.text, session=Path(video.path).stem,
                           wav=common.relative(f'{stem}.wav', manifest_dir),
                           visual=common.relative(f'{stem}_visual.npy', manifest_dir),
                           visual_soft_labels=common.relative(f'{stem}_soft.npy', manifest_dir))
    record.update(video=common.relative(video.path, manifest_dir), start=cue.start, end=cue.end,
                  subtitle=cue.where, face_frames=info['frames_with_face'])
    lines.append(record)
  done = {'fingerprint': fingerprint, 'video': video.path, 'lines': lines, 'dropped': dict(dropped),
          'overlapping': len(video.overlapping), 'audio_rate': video.audio_rate}
  schema.atomic_write_text(str(done_file), json.dumps(done))
  return done


def _cut(job: tuple[Video, str, str, Options]) -> dict:
  video, clip_dir, manifest_dir, options = job
  return cut_video(video, Path(clip_dir), Path(manifest_dir), options)


def build_corpus(video_dir: str, subtitle_dir: str, output: str, *, options: Options = Options(), workers: int = 1,
                 on_error: str = 'fail', part: tuple[int, int] = (1, 1), progress: bool = True) -> dict:
  """Cuts the clips of every video (this job's part of them) and writes the manifest; returns the summary.

  Raises:
    ValueError: with on_error='fail', listing every problem found before any extraction.
  """
  output_path = Path(output).resolve()
  manifest_dir = output_path.parent
  planned, problems = plan(Path(video_dir), Path(subtitle_dir))
  if problems and on_error == 'fail':
    listing = '\n'.join(f'  {p["where"]}: {p["problem"]}' for p in problems)
    raise ValueError(f'{len(problems)} problems in the videos and subtitles (nothing was extracted; '
                     f'--on_error=skip leaves these out):\n{listing}')
  planned = planned[part[0] - 1::part[1]]
  clip_dir = manifest_dir / 'clips'
  jobs = [(video, str(clip_dir), str(manifest_dir), options) for video in planned]
  if workers > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      results = list(tqdm(pool.imap(_cut, jobs), total=len(jobs), desc='videos', disable=not progress))
  else:
    results = [_cut(job) for job in tqdm(jobs, desc='videos', disable=not progress)]
  lines = [line for done in results for line in done['lines']]
  common.write_manifest(lines, output_path)
  extractors = {'visual': _visual_features(options).describe() if planned else None,
                'audio': {'sample_rate': SAMPLE_RATE, 'decoder': 'PyAV (libswresample), channels averaged'}}
  schema.atomic_write_text(str(output_path) + FEATURES_SUFFIX, json.dumps(extractors, indent=2))
  dropped = collections.Counter()
  for done in results:
    dropped.update(done['dropped'])
  summary = {
      'videos': len(planned), 'clips_kept': len(lines), 'clips_dropped': dict(dropped),
      'overlapping_cues': sum(done['overlapping'] for done in results),
      'resampled_audio': {done['video']: f'{done["audio_rate"]} Hz -> {SAMPLE_RATE} Hz' for done in results
                          if done['audio_rate'] != SAMPLE_RATE},
      'skipped': problems, 'part': f'{part[0]}/{part[1]}', 'options': dataclasses.asdict(options),
  }
  schema.atomic_write_text(str(output_path) + '.summary.json', json.dumps(summary, indent=2))
  return summary


def _part(text: str) -> tuple[int, int]:
  k, _, n = text.partition('/')
  if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
    raise argparse.ArgumentTypeError(f'--part {text!r} is not k/n with 1 <= k <= n')
  return int(k), int(n)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--videos', required=True, help='folder of video files')
  parser.add_argument('--subtitles', required=True, help='folder of .srt / .vtt files named as the videos')
  parser.add_argument('--output', required=True, help='the manifest to write (JSONL); clips go to its folder')
  parser.add_argument('--workers', type=int, default=1, help='videos processed in parallel')
  parser.add_argument('--keep_faceless', action='store_true', help='keep clips where no face is found')
  parser.add_argument('--on_error', choices=('fail', 'skip'), default='fail')
  parser.add_argument('--part', type=_part, default=(1, 1), help='k/n: every n-th video from the k-th')
  parser.add_argument('--fps', type=float, default=10.0, help='face frames sampled per second')
  parser.add_argument('--max_visual_frames', type=int, default=36, help='face frames kept per clip')
  parser.add_argument('--min_face_size', type=int, default=50, help='smallest face side detected, in pixels')
  args = parser.parse_args(argv)
  try:
    summary = build_corpus(args.videos, args.subtitles, args.output, workers=args.workers, on_error=args.on_error,
                           part=args.part, options=Options(args.keep_faceless, args.fps, args.max_visual_frames,
                                                           args.min_face_size))
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{summary["clips_kept"]} clips from {summary["videos"]} videos -> {args.output}; dropped: '
        f'{summary["clips_dropped"] or "none"}; skipped problems: {len(summary["skipped"])} '
        f'(see {args.output}.summary.json)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
