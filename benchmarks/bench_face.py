"""Throughput of the visual feature pipeline from raw video (memobert_jax.features.face).

  python -m benchmarks.bench_face [--seconds 10] [--width 640] [--height 480] [--video_fps 25] [--repeats 3]

Writes a synthetic clip with PyAV (mpeg4): scikit-image's astronaut photo (a real face)
drifting over a room (scikit-image's coffee photo), one frame in seven without it. Reported, for the
clip sampled at 10 fps with max_frames large enough that every sampled frame is
processed (median over --repeats, after one warm-up call that compiles the CNN):

  - frames_per_s: sampled frames per second through `VisualFeatures` (decode + detect + crop + CNN);
  - ms_per_frame per stage and sampled frame (so they add up), measured separately on the same
    frames: decode (seek, decode, nearest-frame sampling, grey conversion), detect (Haar
    cascade), crop, cnn (batched JAX).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2
import jax
import numpy as np
import skimage.data

from memobert_jax.features import face, media


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int):
  photo = skimage.data.astronaut()[10:220, 130:320]
  background = cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_AREA)
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('mpeg4', rate=fps)
    stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, 'yuv420p', 4_000_000
    for k in range(int(seconds * fps)):
      frame = background.copy()
      if k % 7:
        left = int((width - photo.shape[1]) * (0.5 + 0.5 * np.sin(k / 20)))
        top = (height - photo.shape[0]) // 2
        frame[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--height', type=int, default=480)
  parser.add_argument('--video_fps', type=int, default=25)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', help='also write the result here')
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    clip = Path(tmp) / 'clip.mp4'
    make_clip(clip, args.seconds, args.width, args.height, args.video_fps)
    sampled = len(media.read_video_frames(clip)[0])
    extractor = face.VisualFeatures(face.VisualFeatureConfig(max_frames=sampled))
    extractor(clip)  # warm-up: compiles the CNN for the batch
    pipeline = _median_seconds(lambda: extractor(clip), args.repeats)

    _, frames = media.read_video_frames(clip)
    boxes = [extractor.detector.largest_face(frame) for frame in frames]
    found = [(frame, box) for frame, box in zip(frames, boxes) if box is not None]
    crops = np.stack([face.crop_face(frame, box, extractor.cnn.input_size, extractor.config.margin)
                      for frame, box in found])
    stages = {
        'decode': _median_seconds(lambda: media.read_video_frames(clip), args.repeats),
        'detect': _median_seconds(lambda: [extractor.detector.largest_face(frame) for frame in frames], args.repeats),
        'crop': _median_seconds(lambda: [face.crop_face(frame, box, extractor.cnn.input_size,
                                                        extractor.config.margin) for frame, box in found],
                                args.repeats),
        'cnn': _median_seconds(lambda: extractor.cnn(crops), args.repeats),
    }
  result = {
      'clip': {'seconds': args.seconds, 'size': [args.width, args.height], 'video_fps': args.video_fps,
               'codec': 'mpeg4'},
      'frames_sampled': sampled, 'frames_with_face': len(found), 'feature_dim': extractor.dim,
      'frames_per_s': sampled / pipeline, 'clip_seconds_per_s': args.seconds / pipeline,
      'ms_per_frame': {name: 1000 * seconds / sampled for name, seconds in stages.items()},
      'jax_backend': jax.default_backend(),
  }
  print(json.dumps(result, indent=2))
  if args.json:
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
