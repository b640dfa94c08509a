"""The on-disk format of MEmoBERT datasets: one place shared by the writer (data_prep) and the reader.

A dataset is a folder holding TFRecord shards of serialized `tf.train.Example`
protos and a `metadata.json` (`DatasetMetadata`). Every example carries every
key below; an absent modality is zero frames (empty bytes).

| key                 | proto type  | content                                                                   |
|---------------------|-------------|---------------------------------------------------------------------------|
| id                  | bytes       | utterance id, UTF-8, unique in the dataset                                |
| text                | bytes       | transcript, raw UTF-8 (tokenized by the loader: the tokenizer is config)  |
| label               | int64       | index into `metadata.label_names`, -1 if unlabelled                       |
| speaker             | bytes       | UTF-8, empty if unknown                                                   |
| session             | bytes       | UTF-8, empty if unknown                                                   |
| visual              | bytes       | row-major little-endian [visual_frames, visual_dim], storage dtype        |
| visual_frames       | int64       | T_v (0: no visual modality)                                               |
| visual_soft_labels  | bytes       | little-endian float32 [T_v, 8] FER+ soft labels, or empty (none)          |
| acoustic            | bytes       | row-major little-endian [acoustic_frames, acoustic_dim], storage dtype    |
| acoustic_frames     | int64       | T_a (0: no acoustic modality)                                             |

The protos are built and parsed with the protobuf runtime directly (a private
descriptor pool holding the wire-compatible `tensorflow.Example` messages), so
neither writing nor reading an example needs TensorFlow.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

SCHEMA_VERSION = 1
METADATA_FILE = 'metadata.json'
UNLABELLED = -1
STORAGE_DTYPES = ('float32', 'float16')
# FER+ classes in the order of the visual soft labels (spec section 2).
SOFT_LABEL_CLASSES = ('neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear', 'contempt')
SOFT_LABEL_DTYPE = np.dtype('<f4')

# tensorflow/core/example/{example,feature}.proto, as a descriptor. The wire
# format is what tf.train.Example writes and parses; the private pool keeps these
# classes from clashing with TensorFlow's own registration when both are loaded.
_EXAMPLE_PROTO = """
name: "memobert_example.proto" package: "tensorflow" syntax: "proto3"
message_type { name: "BytesList" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_BYTES } }
message_type { name: "FloatList" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_FLOAT } }
message_type { name: "Int64List" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_INT64 } }
message_type {
  name: "Feature"
  field { name: "bytes_list" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".tensorflow.BytesList"
          oneof_index: 0 }
  field { name: "float_list" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".tensorflow.FloatList"
          oneof_index: 0 }
  field { name: "int64_list" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".tensorflow.Int64List"
          oneof_index: 0 }
  oneof_decl { name: "kind" }
}
message_type {
  name: "Features"
  field { name: "feature" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".tensorflow.Features.FeatureEntry" }
  nested_type {
    name: "FeatureEntry" options { map_entry: true }
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".tensorflow.Feature" }
  }
}
message_type {
  name: "Example"
  field { name: "features" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".tensorflow.Features" }
}
"""


def _example_class():
  pool = descriptor_pool.DescriptorPool()
  pool.Add(text_format.Parse(_EXAMPLE_PROTO, descriptor_pb2.FileDescriptorProto()))
  return message_factory.GetMessageClass(pool.FindMessageTypeByName('tensorflow.Example'))


Example = _example_class()


def storage_dtype(name: str) -> np.dtype:
  """Little-endian numpy dtype of a storage dtype name ('float32' or 'float16')."""
  if name not in STORAGE_DTYPES:
    raise ValueError(f'storage dtype must be one of {STORAGE_DTYPES}, got {name!r}')
  return np.dtype(name).newbyteorder('<')


def shard_file_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}-{index:05d}-of-{num_shards:05d}.tfrecord'


@dataclasses.dataclass
class ShardInfo:
  file: str  # relative to the dataset folder
  num_examples: int
  num_bytes: int
  sha256: str


@dataclasses.dataclass
class SplitInfo:
  num_examples: int
  shards: list[ShardInfo]
  # Per modality, the split's frame statistics: {'mean': [D], 'std': [D], 'frames': n} (normalization.py).
  feature_stats: dict[str, dict] = dataclasses.field(default_factory=dict)

  @property
  def files(self) -> list[str]:
    return [s.file for s in self.shards]


@dataclasses.dataclass
class DatasetMetadata:
  """What a reader needs to know about a dataset folder; stored as `metadata.json`.

  Feature dimensions come from the data (None: no example has the modality).
  `max_*_frames` are caps applied when writing (None: full lengths stored, the
  loader caps to its config).
  """
  name: str
  label_names: list[str]
  visual_dim: int | None
  acoustic_dim: int | None
  storage_dtype: str = 'float32'
  soft_label_classes: list[str] = dataclasses.field(default_factory=lambda: list(SOFT_LABEL_CLASSES))
  splits: dict[str, SplitInfo] = dataclasses.field(default_factory=dict)
  max_visual_frames: int | None = None
  max_acoustic_frames: int | None = None
  acoustic_extractor: dict[str, Any] | None = None  # the extractor, if any example's features came from a wav
  visual_extractor: dict[str, Any] | None = None  # how the visual features were made (MANIFEST.features.json)
  created_by: dict[str, Any] = dataclasses.field(default_factory=dict)  # command line and options of the job
  schema_version: int = SCHEMA_VERSION

  def __post_init__(self):
    self._dtype = storage_dtype(self.storage_dtype)

  @property
  def dtype(self) -> np.dtype:
    return self._dtype

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

  @classmethod
  def from_json(cls, text: str) -> 'DatasetMetadata':
    raw = json.loads(text)
    if raw.get('schema_version') != SCHEMA_VERSION:
      raise ValueError(f'dataset schema version {raw.get("schema_version")} is not {SCHEMA_VERSION} (this code)')
    raw['splits'] = {
        name: SplitInfo(num_examples=s['num_examples'], shards=[ShardInfo(**shard) for shard in s['shards']],
                        feature_stats=s.get('feature_stats', {}))
        for name, s in raw['splits'].items()
    }
    return cls(**raw)

  def save(self, directory: str | os.PathLike) -> None:
    atomic_write_text(os.path.join(directory, METADATA_FILE), self.to_json())

  @classmethod
  def load(cls, directory: str | os.PathLike) -> 'DatasetMetadata':
    with open(os.path.join(directory, METADATA_FILE), encoding='utf-8') as f:
      return cls.from_json(f.read())


def sha256_file(path: str | os.PathLike) -> str:
  """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes through a temporary file in the same folder, so readers never see a partial file."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:  # a failed or interrupted write leaves no temporary file behind
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def _frames_bytes(array: np.ndarray | None, dtype: np.dtype, name: str) -> tuple[bytes, int]:
  if array is None:
    return b'', 0
  if array.ndim != 2:
    raise ValueError(f'{name} must be [frames, dim], got shape {array.shape}')
  return np.ascontiguousarray(array, dtype=dtype).tobytes(), array.shape[0]


def encode_example(*, example_id: str, text: str, label: int = UNLABELLED, speaker: str | None = None,
                   session: str | None = None, visual: np.ndarray | None = None,
                   visual_soft_labels: np.ndarray | None = None, acoustic: np.ndarray | None = None,
                   dtype: np.dtype | str = 'float32') -> bytes:
  """Serializes one utterance. Arrays are cast to `dtype` (the storage dtype) and the soft labels to float32."""
  dtype = storage_dtype(dtype) if isinstance(dtype, str) else dtype
  visual_bytes, visual_frames = _frames_bytes(visual, dtype, 'visual')
  soft_bytes, soft_frames = _frames_bytes(visual_soft_labels, SOFT_LABEL_DTYPE, 'visual_soft_labels')
  if soft_frames and (soft_frames != visual_frames or visual_soft_labels.shape[1] != len(SOFT_LABEL_CLASSES)):
    raise ValueError(f'{example_id}: soft labels {visual_soft_labels.shape} do not match {visual_frames} visual '
                     f'frames x {len(SOFT_LABEL_CLASSES)} classes')
  acoustic_bytes, acoustic_frames = _frames_bytes(acoustic, dtype, 'acoustic')
  example = Example()
  feature = example.features.feature
  feature['id'].bytes_list.value.append(example_id.encode('utf-8'))
  feature['text'].bytes_list.value.append(text.encode('utf-8'))
  feature['label'].int64_list.value.append(label)
  feature['speaker'].bytes_list.value.append((speaker or '').encode('utf-8'))
  feature['session'].bytes_list.value.append((session or '').encode('utf-8'))
  feature['visual'].bytes_list.value.append(visual_bytes)
  feature['visual_frames'].int64_list.value.append(visual_frames)
  feature['visual_soft_labels'].bytes_list.value.append(soft_bytes)
  feature['acoustic'].bytes_list.value.append(acoustic_bytes)
  feature['acoustic_frames'].int64_list.value.append(acoustic_frames)
  # Map entries in key order: the same example gives the same bytes in every process (the shards are reproducible).
  return example.SerializeToString(deterministic=True)


def _frames_array(raw: bytes, frames: int, dim: int | None, dtype: np.dtype, example_id: str, name: str) -> np.ndarray:
  dim = dim or 0
  if len(raw) != frames * dim * dtype.itemsize:
    raise ValueError(f'{example_id}: {name} holds {len(raw)} bytes, expected {frames} frames x {dim} x '
                     f'{dtype.itemsize} bytes')
  return np.frombuffer(raw, dtype=dtype).reshape(frames, dim)


def decode_example(serialized: bytes, metadata: DatasetMetadata) -> dict[str, np.ndarray | str | int]:
  """Parses one serialized example.

  Returns id, text, speaker, session (str; '' if unknown), label (int, -1 if
  unlabelled), visual [T_v, visual_dim] and acoustic [T_a, acoustic_dim] in the
  storage dtype, and visual_soft_labels float32 [T_v or 0, 8]. The arrays are
  read-only views of the record's bytes (no copy).
  """
  feature = Example.FromString(serialized).features.feature
  example_id = feature['id'].bytes_list.value[0].decode('utf-8')
  visual_frames = feature['visual_frames'].int64_list.value[0]
  soft = feature['visual_soft_labels'].bytes_list.value[0]
  return {
      'id': example_id,
      'text': feature['text'].bytes_list.value[0].decode('utf-8'),
      'label': feature['label'].int64_list.value[0],
      'speaker': feature['speaker'].bytes_list.value[0].decode('utf-8'),
      'session': feature['session'].bytes_list.value[0].decode('utf-8'),
      'visual': _frames_array(feature['visual'].bytes_list.value[0], visual_frames, metadata.visual_dim,
                              metadata.dtype, example_id, 'visual'),
      'visual_soft_labels': _frames_array(soft, visual_frames if soft else 0, len(SOFT_LABEL_CLASSES),
                                          SOFT_LABEL_DTYPE, example_id, 'visual_soft_labels'),
      'acoustic': _frames_array(feature['acoustic'].bytes_list.value[0], feature['acoustic_frames'].int64_list.value[0],
                                metadata.acoustic_dim, metadata.dtype, example_id, 'acoustic'),
  }
