"""Decoding audio and video files with PyAV (FFmpeg's libraries in a wheel: no ffmpeg binary needed).

Times are seconds from the start of the container (its `start_time`), the clock corpus
annotations give utterance boundaries in; every stream of a file shares it, so audio and
video cut at the same times stay in sync. A range ending up to `END_TOLERANCE` seconds
past the media's end is accepted and cut at the end: annotation times are rounded, and a
track often ends a few tens of milliseconds before the container's duration.

- `read_audio`: float32 mono samples at `sample_rate`, channels averaged, resampled by
  libswresample (`probe(path).audio_sample_rate` is the source rate, for summaries).
- `read_video_frames` / `iter_video_frames`: grey uint8 frames sampled at `fps`, each the
  decoded frame nearest to its sample time.
- `duration`, `probe`: the media's length and its streams' rates, without decoding.

Every failure is a `MediaError` whose message starts with the file's path.
"""

import dataclasses
import math
import os
from collections.abc import Iterator

import av
import numpy as np

END_TOLERANCE = 0.1


class MediaError(ValueError):
  """A media file that cannot be read as asked; the message names the file."""


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  duration: float  # seconds
  audio_sample_rate: int | None  # first audio track; None without one
  audio_channels: int | None
  video_fps: float | None  # first video stream's average frame rate; None without one
  video_size: tuple[int, int] | None  # (width, height)


def _open(path) -> av.container.InputContainer:
  try:
    return av.open(os.fspath(path))
  except (av.FFmpegError, OSError) as e:
    raise MediaError(f'{path}: cannot read this media file ({e})') from e


def _origin(container) -> float:
  return container.start_time / av.time_base if container.start_time is not None else 0.0


def _container_duration(container) -> float:
  if container.duration is not None:
    return container.duration / av.time_base
  # Some formats (raw streams) carry no duration in their header: take the end of the last packet.
  origin, end = _origin(container), 0.0
  for packet in container.demux():
    if packet.pts is not None:
      end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin)
  container.seek(0)
  return end


def _stream_duration(container, stream) -> float:
  """The end of `stream` on the container's clock (tracks may end before the container does)."""
  if stream.duration is None:
    return _container_duration(container)
  stream_start = float((stream.start_time or 0) * stream.time_base)
  return stream_start + float(stream.duration * stream.time_base) - _origin(container)


def _first_stream(path, container, kind: str):
  streams = getattr(container.streams, kind)
  if not streams:
    present = sorted({s.type for s in container.streams}) or ['none']
    raise MediaError(f'{path}: no {kind} stream (streams present: {", ".join(present)})')
  return streams[0]


def _clip_bounds(path, start: float | None, end: float | None, length: float, what: str) -> tuple[float, float]:
  start = 0.0 if start is None else float(start)
  if start >= length or (end is not None and end > length + END_TOLERANCE):
    shown = f'[{start:.3f}, {end:.3f}]' if end is not None else f'from {start:.3f}'
    raise MediaError(f'{path}: time range {shown} s is past the end of the {what} ({length:.3f} s)')
  end = length if end is None else min(float(end), length)
  if start < 0 or end <= start:
    raise MediaError(f'{path}: empty or negative time range [{start:.3f}, {end:.3f}] s')
  return start, end


def _seek(container, stream, time: float):
  # A backward seek lands on the last keyframe at or before `time`; decoding goes forward from there.
  if time > 0:
    container.seek(int((time + _origin(container)) / stream.time_base), stream=stream)


def probe(path) -> MediaInfo:
  """Duration and stream parameters of a media file, from its headers."""
  container = _open(path)
  try:
    audio = container.streams.audio[0] if container.streams.audio else None
    video = container.streams.video[0] if container.streams.video else None
    return MediaInfo(
        duration=_container_duration(container),
        audio_sample_rate=audio.sample_rate if audio else None,
        audio_channels=audio.channels if audio else None,
        video_fps=float(video.average_rate) if video and video.average_rate else None,
        video_size=(video.width, video.height) if video else None)
  except av.FFmpegError as e:
    raise MediaError(f'{path}: cannot read this media file ({e})') from e
  finally:
    container.close()


def duration(path) -> float:
  """Length of a media file in seconds."""
  return probe(path).duration


def read_audio(path, start: float | None = None, end: float | None = None, sample_rate: int = 16000) -> np.ndarray:
  """Audio of a wav file or of a video's first audio track, as float32 mono samples at `sample_rate`.

  Args:
    path: any file FFmpeg reads (wav, flac, mp3, mp4, avi, mkv, ...).
    start, end: the range in seconds (default: the whole track).
    sample_rate: output rate; the source is resampled to it (`probe(path).audio_sample_rate` tells from what).

  Returns:
    float32 [round((end - start) * sample_rate)] or fewer where the track ends early (within END_TOLERANCE);
    where the track starts after `start`, the missing beginning is silence, so sample i is at start + i / rate.
  """
  container = _open(path)
  try:
    stream = _first_stream(path, container, 'audio')
    origin = _origin(container)
    start, end = _clip_bounds(path, start, end, _stream_duration(container, stream), 'audio track')
    _seek(container, stream, start)
    # Format and rate converted by libswresample; channels are averaged here, as swresample's downmix
    # would scale stereo by 1/sqrt(2) instead.
    resampler = av.AudioResampler(format='fltp', rate=sample_rate)
    chunks, first_time = [], None
    for frame in container.decode(stream):
      for out in resampler.resample(frame):
        if first_time is None:
          first_time = out.time - origin if out.pts is not None else start
        chunks.append(out.to_ndarray())
      if frame.time is not None and frame.time - origin >= end:
        break
    chunks.extend(out.to_ndarray() for out in resampler.resample(None))
  except av.FFmpegError as e:
    raise MediaError(f'{path}: decoding the audio track failed ({e})') from e
  finally:
    container.close()
  if not chunks:
    raise MediaError(f'{path}: no audio decoded in [{start:.3f}, {end:.3f}] s')
  samples = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)
  offset = int(round((start - first_time) * sample_rate))
  if offset < 0:
    samples = np.concatenate([np.zeros(-offset, np.float32), samples])
    offset = 0
  return samples[offset:offset + int(round((end - start) * sample_rate))]


def _sample_times(start: float, end: float, fps: float) -> np.ndarray:
  count = max(1, math.ceil((end - start) * fps - 1e-6))
  return start + np.arange(count) / fps


def _nearest_frames(path, container, stream, times: np.ndarray) -> Iterator[tuple[float, np.ndarray]]:
  origin = _origin(container)
  rate = float(stream.average_rate) if stream.average_rate else None
  frame_interval = 1.0 / rate if rate else 0.0
  try:
    _seek(container, stream, float(times[0]))
    stream.thread_type = 'AUTO'
    index, previous = 0, None  # previous: (time, frame) of the last decoded frame before times[index]
    for count, frame in enumerate(container.decode(stream)):
      # Frames without a timestamp (some raw streams) are timed by their position at the average rate.
      time = frame.time - origin if frame.pts is not None else count * frame_interval
      while index < len(times) and time >= times[index]:
        nearer_previous = previous is not None and times[index] - previous[0] < time - times[index]
        yield float(times[index]), (previous[1] if nearer_previous else frame).to_ndarray(format='gray')
        index += 1
      if index == len(times):
        return
      previous = (time, frame)
    # The stream ended: the last frame covers sample times up to one frame interval (and the tolerance) later.
    for sample_time in times[index:]:
      if previous is None or sample_time - previous[0] > frame_interval + END_TOLERANCE:
        last = f'ends at {previous[0]:.3f} s' if previous else 'has no frames there'
        raise MediaError(f'{path}: no video frame at {sample_time:.3f} s (the video stream {last})')
      yield float(sample_time), previous[1].to_ndarray(format='gray')
  except av.FFmpegError as e:
    raise MediaError(f'{path}: decoding the video stream failed ({e})') from e
  finally:
    container.close()


def iter_video_frames(path, start: float | None = None, end: float | None = None,
                      fps: float = 10.0) -> Iterator[tuple[float, np.ndarray]]:
  """Like `read_video_frames`, one (time, frame) at a time, so a caller can stop early.

  The file is opened and the range checked at the call (errors come then, not at the first
  frame); it is closed when the iterator ends or is closed (`contextlib.closing`).
  """
  if fps <= 0:
    raise ValueError(f'fps must be positive, got {fps}')
  container = _open(path)
  try:
    stream = _first_stream(path, container, 'video')
    start, end = _clip_bounds(path, start, end, _stream_duration(container, stream), 'video stream')
  except BaseException:
    container.close()
    raise
  return _nearest_frames(path, container, stream, _sample_times(start, end, fps))


def read_video_frames(path, start: float | None = None, end: float | None = None,
                      fps: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
  """Grey frames of a video's first video stream sampled at `fps` from `start` to `end`.

  Returns:
    times: float64 [T], start + k / fps for every k with start + k / fps < end (T >= 1);
    frames: uint8 [T, height, width], each the decoded frame whose timestamp is nearest to its time.
  """
  times, frames = zip(*iter_video_frames(path, start, end, fps))
  return np.asarray(times), np.stack(frames)
