"""Media written by the tests: videos (PyAV, mpeg4 + AAC), wavs and tones, a real face photo moving across frames."""

import wave

import av
import numpy as np
import skimage.data

# The astronaut photo's head and shoulders; the Haar cascade finds her face at about (47, 56), 95 px, in this crop.
FACE_CROP = (slice(10, 220), slice(130, 320))
FACE_IN_CROP = (47, 56)


def write_video(path, frames_rgb, fps, audio=None, audio_rate=44100):
  """An mp4 of mpeg4 video (and an AAC track of `audio`, float mono, when given)."""
  with av.open(str(path), 'w') as container:
    video = container.add_stream('mpeg4', rate=fps)
    video.height, video.width = frames_rgb[0].shape[:2]
    video.pix_fmt, video.bit_rate = 'yuv420p', 4_000_000
    sound = container.add_stream('aac', rate=audio_rate) if audio is not None else None
    for rgb in frames_rgb:
      container.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))
    container.mux(video.encode())
    if sound is not None:
      chunk = 1024
      for i in range(0, len(audio), chunk):
        frame = av.AudioFrame.from_ndarray(audio[None, i:i + chunk].astype(np.float32), format='fltp', layout='mono')
        frame.sample_rate, frame.pts = audio_rate, i
        container.mux(sound.encode(frame))
      container.mux(sound.encode())


def write_wav(path, signal, rate, channels=2):
  pcm = (np.clip(signal, -1, 1) * 32767).astype('<i2')
  with wave.open(str(path), 'wb') as f:
    f.setnchannels(channels)
    f.setsampwidth(2)
    f.setframerate(rate)
    f.writeframes(np.repeat(pcm[:, None], channels, axis=1).tobytes())


def sine(seconds, rate, hz=440.0):
  return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def peak_hz(signal, rate):
  spectrum = np.abs(np.fft.rfft(signal))
  return np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)]


def face_frames(num_frames: int, size: tuple[int, int], blank=lambda i: False, left=lambda i: 10 * i) -> list:
  """RGB frames on flat grey: the face photo at x = left(i), y = 40, or nothing where blank(i)."""
  photo = skimage.data.astronaut()[FACE_CROP]
  frames = []
  for i in range(num_frames):
    frame = np.full((*size, 3), 120, np.uint8)
    if not blank(i):
      frame[40:40 + photo.shape[0], left(i):left(i) + photo.shape[1]] = photo
    frames.append(frame)
  return frames
