"""Hugging Face BERT checkpoint -> the text part of MEmoBERT, as an orbax checkpoint a config can start from.

A Hugging Face BERT folder holds config.json, vocab.txt (or only a fast tokenizer's
tokenizer.json) and the weights as model.safetensors or pytorch_model.bin. Both are read without torch: the .bin
file is torch's zip format (a pickle that points at raw storages), read by a
restricted unpickler that only rebuilds tensors.

Keys may be bare (`embeddings.…`, a BertModel such as all-MiniLM-L6-v2) or
prefixed `bert.` (BertForPreTraining / BertForMaskedLM), whose MLM head
`cls.predictions.*` becomes `mlm_head`. Only the text part comes from the
checkpoint: word / position / token-type embeddings, the encoder, the pooler and
the MLM head when present. Everything else (the visual and acoustic parts, the
other heads) keeps its fresh initialisation.

`convert` writes an init checkpoint (memobert_jax/init_checkpoint.py) plus the
checkpoint's WordPiece vocabulary, vocab.txt, for the tokenizer.
"""

import collections
import json
import pathlib
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file as load_safetensors

from memobert_jax import init_checkpoint

VOCAB_FILE = 'vocab.txt'
TOKENIZER_FILE = 'tokenizer.json'  # a fast tokenizer's file, where a folder has no vocab.txt
# Looked for in this order when no weights file is named.
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')

# Checkpoint entries that carry no parameter of ours: a buffer and the next-sentence head.
_IGNORED = re.compile(r'embeddings\.position_ids|cls\.seq_relationship\.(weight|bias)')
# The MLM decoder is tied to these; an untied copy that differs cannot be represented.
_TIED = {'cls.predictions.decoder.weight': 'embeddings.word_embeddings.weight',
         'cls.predictions.decoder.bias': 'cls.predictions.bias'}
_OPTIONAL_GROUPS = ('pooler.', 'cls.predictions.')


# --- Hugging Face config ----------------------------------------------------------------------------------------

def model_fields(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """The init_checkpoint.CONFIG_FIELDS values of a HF BERT config.json; refuses what the model cannot reproduce."""
  if hf_config.get('model_type', 'bert') != 'bert':
    raise ValueError(f"model_type {hf_config['model_type']!r} is not 'bert'")
  # transformers' defaults where the key is absent.
  act = hf_config.get('hidden_act', 'gelu')
  if act != 'gelu':
    raise ValueError(f"hidden_act {act!r} is not supported: the model uses BERT's exact (erf) GELU, hidden_act 'gelu'")
  if hf_config.get('type_vocab_size', 2) != 2:
    raise ValueError(f"type_vocab_size {hf_config['type_vocab_size']} is not supported: the model has BERT's 2 "
                     'segment rows (text, visual)')
  if hf_config.get('position_embedding_type', 'absolute') != 'absolute':
    raise ValueError(f"position_embedding_type {hf_config['position_embedding_type']!r} is not supported, only "
                     "'absolute'")
  names = dict(hidden_size='hidden_size', num_layers='num_hidden_layers', num_heads='num_attention_heads',
               intermediate_size='intermediate_size', vocab_size='vocab_size',
               max_text_positions='max_position_embeddings')
  missing = sorted(hf for hf in names.values() if hf not in hf_config)
  if missing:
    raise ValueError(f'the Hugging Face config has no {", ".join(missing)}')
  fields = {ours: int(hf_config[hf]) for ours, hf in names.items()}
  fields['layer_norm_eps'] = float(hf_config.get('layer_norm_eps', 1e-12))
  if fields['hidden_size'] % fields['num_heads']:
    raise ValueError(f"hidden_size {fields['hidden_size']} is not divisible by num_attention_heads "
                     f"{fields['num_heads']}")
  return fields


# --- Reading weights ---------------------------------------------------------------------------------------------

_TORCH_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class _StorageType(NamedTuple):
  dtype: np.dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 for numpy: a strided view of a flat storage, copied (requires_grad etc. unused)."""
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
    raise pickle.UnpicklingError(f'bad tensor layout: offset {offset}, size {size}, stride {stride}')
  # The last element a view reads must lie in the storage (an empty tensor reads nothing).
  if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
    raise pickle.UnpicklingError(f'tensor of size {size} at offset {offset} reaches past its storage of '
                                 f'{storage.size} elements')
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a torch state dict into numpy arrays; any global beyond tensors and OrderedDict is refused."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._byteorder = '<' if byteorder == 'little' else '>'
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if (module, name) == ('torch._utils', '_rebuild_parameter'):
      return _rebuild_parameter
    if module == 'torch' and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(np.dtype(_TORCH_STORAGE_DTYPES[name]))
    raise pickle.UnpicklingError(f'refusing to load {module}.{name}: a BERT state dict holds only tensors')

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      dtype = storage_type.dtype.newbyteorder(self._byteorder)
      raw = self._archive.read(f'{self._prefix}data/{key}')
      if len(raw) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(f'storage {key} has {len(raw)} bytes, {numel} elements of {dtype} need more')
      self._storages[key] = np.frombuffer(raw, dtype, count=numel)
    return self._storages[key]


def read_torch_bin(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a torch.save'd state dict (the zip format of torch >= 1.6) as numpy arrays, without torch."""
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} is not a zip archive: the legacy (torch < 1.6) format is not supported; re-save it '
                     'with a recent torch.save or use model.safetensors')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise ValueError(f'{path} has {len(pickles)} <archive>/data.pkl entries, expected 1')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    byteorder = archive.read(f'{prefix}byteorder').decode() if f'{prefix}byteorder' in names else 'little'
    with archive.open(pickles[0]) as file:
      state = _TorchUnpickler(file, archive, prefix, byteorder).load()
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise ValueError(f'{path} does not hold a state dict of tensors')
  return {k: v.astype(v.dtype.newbyteorder('=')) for k, v in state.items()}


def read_weights(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no weights file {path}')
  if path.suffix == '.safetensors':
    return load_safetensors(str(path))
  if path.suffix == '.bin':
    return read_torch_bin(path)
  raise ValueError(f'{path}: unknown weights format, expected .safetensors or .bin')


# --- Conversion --------------------------------------------------------------------------------------------------

def _normalise(tensors: Mapping[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
  """Strips the `bert.` prefix and renames old gamma / beta.

  Returns (named tensors, tied decoder tensors, normalised name -> checkpoint key).
  """
  named, tied, keys = {}, {}, {}
  for key, value in tensors.items():
    name = key[len('bert.'):] if key.startswith('bert.') else key
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name))
    if _IGNORED.fullmatch(name):
      continue
    target = tied if name in _TIED else named
    if name in target:
      raise ValueError(f'the checkpoint holds {name} twice (with and without the bert. prefix?)')
    target[name] = value
    keys[name] = key
  return named, tied, keys


def _expected_shapes(f: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Every checkpoint name the text part is built from, with its torch shape ([out, in] for a Linear)."""
  h, inner = f['hidden_size'], f['intermediate_size']
  shapes = {
      'embeddings.word_embeddings.weight': (f['vocab_size'], h),
      'embeddings.position_embeddings.weight': (f['max_text_positions'], h),
      'embeddings.token_type_embeddings.weight': (2, h),
      'embeddings.LayerNorm.weight': (h,), 'embeddings.LayerNorm.bias': (h,),
      'pooler.dense.weight': (h, h), 'pooler.dense.bias': (h,),
      'cls.predictions.transform.dense.weight': (h, h), 'cls.predictions.transform.dense.bias': (h,),
      'cls.predictions.transform.LayerNorm.weight': (h,), 'cls.predictions.transform.LayerNorm.bias': (h,),
      'cls.predictions.bias': (f['vocab_size'],),
  }
  for i in range(f['num_layers']):
    layer = f'encoder.layer.{i}.'
    for name, (out_size, in_size) in {'attention.self.query': (h, h), 'attention.self.key': (h, h),
                                      'attention.self.value': (h, h), 'attention.output.dense': (h, h),
                                      'intermediate.dense': (inner, h), 'output.dense': (h, inner)}.items():
      shapes[f'{layer}{name}.weight'] = (out_size, in_size)
      shapes[f'{layer}{name}.bias'] = (out_size,)
    for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
      shapes[f'{layer}{name}.weight'] = shapes[f'{layer}{name}.bias'] = (h,)
  return shapes


def _check_names(named: Mapping[str, np.ndarray], keys: Mapping[str, str], f: Mapping[str, Any]) -> None:
  expected = _expected_shapes(f)
  # The pooler and the MLM head are optional (BertForMaskedLM has no pooler, BertModel no head), but whole.
  absent = [g for g in _OPTIONAL_GROUPS if not any(name.startswith(g) for name in keys)]
  expected = {k: v for k, v in expected.items() if not k.startswith(tuple(absent))}
  unknown = sorted(keys[name] for name in set(named) - set(expected))
  if unknown:
    raise ValueError(f'the checkpoint has keys a BERT text encoder does not: {init_checkpoint.listing(unknown)}')
  missing = sorted(set(expected) - set(named))
  if missing:
    raise ValueError(f'the checkpoint lacks the keys {init_checkpoint.listing(missing)} (named without any bert. prefix)')
  wrong = [f'{k} {tuple(named[k].shape)} (expected {s})' for k, s in expected.items() if tuple(named[k].shape) != s]
  if wrong:
    raise ValueError(f'checkpoint shapes disagree with its config.json: {init_checkpoint.listing(wrong)}')


def convert_state_dict(tensors: Mapping[str, np.ndarray], fields: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Maps a BERT state dict onto MEmoBERT parameter paths ('a/b/0/c' -> float32 array)."""
  named, tied, keys = _normalise(tensors)
  _check_names(named, keys, fields)
  for name, source in _TIED.items():
    if name in tied and not np.array_equal(tied[name], named.get(source)):
      raise ValueError(f'{name} differs from {source}: the model ties the MLM decoder to the word embeddings')
  t = {k: np.asarray(v, np.float32) for k, v in named.items()}
  heads, head_dim = fields['num_heads'], fields['hidden_size'] // fields['num_heads']
  params = {}

  def dense(ours: str, theirs: str, in_shape: tuple[int, ...] = (), out_shape: tuple[int, ...] = ()) -> None:
    # torch Linear stores [out, in]; our kernels are [in..., out...].
    kernel = t[f'{theirs}.weight'].T
    params[f'{ours}/kernel'] = kernel.reshape((in_shape or kernel.shape[:1]) + (out_shape or kernel.shape[1:]))
    params[f'{ours}/bias'] = t[f'{theirs}.bias'].reshape(out_shape or kernel.shape[1:])

  def norm(ours: str, theirs: str) -> None:
    params[f'{ours}/scale'] = t[f'{theirs}.weight']
    params[f'{ours}/bias'] = t[f'{theirs}.bias']

  params['text_embeddings/word/embedding'] = t['embeddings.word_embeddings.weight']
  params['text_embeddings/position/embedding'] = t['embeddings.position_embeddings.weight']
  params['text_embeddings/token_type/embedding'] = t['embeddings.token_type_embeddings.weight']
  norm('text_embeddings/norm', 'embeddings.LayerNorm')
  for i in range(fields['num_layers']):
    ours, theirs = f'encoder/layers/{i}', f'encoder.layer.{i}'
    params[f'{ours}/attention/qkv/kernel'], params[f'{ours}/attention/qkv/bias'] = fused_qkv(
        t, [f'{theirs}.attention.self.{n}' for n in ('query', 'key', 'value')], heads, head_dim)
    dense(f'{ours}/attention/out', f'{theirs}.attention.output.dense', in_shape=(heads, head_dim))
    norm(f'{ours}/attention_norm', f'{theirs}.attention.output.LayerNorm')
    dense(f'{ours}/intermediate', f'{theirs}.intermediate.dense')
    dense(f'{ours}/output', f'{theirs}.output.dense')
    norm(f'{ours}/output_norm', f'{theirs}.output.LayerNorm')
  if 'pooler.dense.weight' in t:
    dense('pooler/dense', 'pooler.dense')
  if 'cls.predictions.bias' in t:
    dense('mlm_head/transform/dense', 'cls.predictions.transform.dense')
    norm('mlm_head/transform/norm', 'cls.predictions.transform.LayerNorm')
    params['mlm_head/bias'] = t['cls.predictions.bias']
  return {k: np.ascontiguousarray(v) for k, v in params.items()}


def weights_path(folder: str | pathlib.Path, weights_file: str | None = None) -> pathlib.Path:
  """The weights file of a Hugging Face folder: `weights_file`, else the first of WEIGHT_FILES present."""
  folder = pathlib.Path(folder)
  if weights_file:
    return folder / weights_file
  for name in WEIGHT_FILES:
    if (folder / name).is_file():
      return folder / name
  raise FileNotFoundError(f'{folder} has none of {", ".join(WEIGHT_FILES)}')


def fused_qkv(tensors: Mapping[str, np.ndarray], projections: Sequence[str], heads: int,
              head_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """Query, key and value Linear layers (torch [out, in]) fused along a new axis: kernel [H, 3, heads, head_dim],
  bias [3, heads, head_dim]."""
  kernel = np.stack([tensors[f'{n}.weight'].T for n in projections], axis=1)
  bias = np.stack([tensors[f'{n}.bias'] for n in projections])
  return kernel.reshape(kernel.shape[0], 3, heads, head_dim), bias.reshape(3, heads, head_dim)


def load_hf_bert(hf_dir: str | pathlib.Path, weights_file: str | None = None
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(model config fields, converted parameters) of a Hugging Face BERT folder."""
  hf_dir = pathlib.Path(hf_dir)
  if not (hf_dir / 'config.json').is_file():
    raise FileNotFoundError(f'{hf_dir} has no config.json: not a Hugging Face model folder')
  fields = model_fields(json.loads((hf_dir / 'config.json').read_text()))
  return fields, convert_state_dict(read_weights(weights_path(hf_dir, weights_file)), fields)


def vocabulary(hf_dir: pathlib.Path) -> tuple[str, pathlib.Path]:
  """The folder's WordPiece vocabulary as vocab.txt text, and the file it came from.

  From vocab.txt, or else from a fast tokenizer's tokenizer.json (newer folders ship only that), whose
  WordPiece ids must run 0..n-1.
  """
  if (hf_dir / VOCAB_FILE).is_file():
    return (hf_dir / VOCAB_FILE).read_text(encoding='utf-8'), hf_dir / VOCAB_FILE
  source = hf_dir / TOKENIZER_FILE
  if not source.is_file():
    raise FileNotFoundError(f'{hf_dir} has neither {VOCAB_FILE} nor {TOKENIZER_FILE}: the tokenizer needs the '
                            'vocabulary the weights go with')
  model = json.loads(source.read_text(encoding='utf-8')).get('model', {})
  if model.get('type') != 'WordPiece':
    raise ValueError(f'{source}: the tokenizer model is {model.get("type")!r}, not WordPiece (BERT\'s)')
  by_id = sorted(model['vocab'].items(), key=lambda item: item[1])
  if [token_id for _, token_id in by_id] != list(range(len(by_id))):
    raise ValueError(f'{source}: the WordPiece ids are not 0..{len(by_id) - 1} without gaps')
  return ''.join(f'{token}\n' for token, _ in by_id), source


def convert(hf_dir: str | pathlib.Path, output: str | pathlib.Path, *, weights_file: str | None = None,
            overwrite: bool = False) -> dict[str, Any]:
  """Converts a Hugging Face BERT folder into an init directory (layout in the module doc); returns its metadata."""
  hf_dir, output = pathlib.Path(hf_dir).resolve(), pathlib.Path(output).resolve()
  vocab, vocab_source = vocabulary(hf_dir)
  weights = weights_path(hf_dir, weights_file)
  fields, params = load_hf_bert(hf_dir, weights.name)
  vocab_lines = len(vocab.splitlines())
  if vocab_lines > fields['vocab_size']:
    raise ValueError(f'{vocab_source} has {vocab_lines} tokens, more than vocab_size {fields["vocab_size"]}')
  metadata = init_checkpoint.save(output, params, fields, source=str(hf_dir), overwrite=overwrite,
                                  weights_file=weights.name)
  (output / VOCAB_FILE).write_text(vocab, encoding='utf-8')
  return metadata
