"""Init checkpoints: a parameter subset that a config names as its starting point.

Written by `python -m memobert_jax.convert_bert` (BERT's text part), at the end of
pretraining (the whole MEmoBERT) and by finetuning (the selected model). Layout:
  params/              orbax checkpoint of a nested dict of float32 arrays, keyed by the
                       model's parameter paths ('encoder' / 'layers' / '0' / ...)
  memobert_init.json   the model config fields that must match (CONFIG_FIELDS), every
                       parameter path with its shape, the source, and anything else the
                       writer records (the full model config, the tokenizer, label words)
The metadata file is written last: its presence marks a complete checkpoint.
`restore_into` loads one into a model's parameter state, sharded as that state is.
"""

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax.model import memobert

PARAMS_DIR = 'params'
METADATA_FILE = 'memobert_init.json'
CONFIG_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'intermediate_size', 'vocab_size', 'max_text_positions',
                 'layer_norm_eps')


def listing(names: list[str], limit: int = 12) -> str:
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def save(output: str | pathlib.Path, params: Mapping[str, np.ndarray | jax.Array], config_fields: Mapping[str, Any],
         *, source: str, overwrite: bool = False, **extra: Any) -> dict[str, Any]:
  """Writes flat {'path/to/param': array} as an init checkpoint; returns its metadata.

  Sharded jax.Arrays are written by the processes that hold them (orbax), so this works on a pod.
  """
  output = pathlib.Path(output).resolve()
  if (output / PARAMS_DIR).exists() and not overwrite:
    raise FileExistsError(f'{output / PARAMS_DIR} exists; pass overwrite=True (--overwrite) to replace it')
  output.mkdir(parents=True, exist_ok=True)
  (output / METADATA_FILE).unlink(missing_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(output / PARAMS_DIR, _nest(params), force=overwrite)
    checkpointer.wait_until_finished()
  metadata = dict(source=source, config={k: config_fields[k] for k in CONFIG_FIELDS},
                  params={path: list(value.shape) for path, value in sorted(params.items())}, **extra)
  if jax.process_index() == 0:
    (output / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + '\n')
  return metadata


def parameter_names(state: nnx.State) -> list[str]:
  return [_path_name(path) for path, _ in nnx.to_flat_state(state)]


def export_state(state: nnx.State, output: str | pathlib.Path, model_cfg: ConfigDict, *, source: str,
                 **extra: Any) -> dict[str, Any]:
  """Saves a whole model parameter state with its full model config."""
  flat = {_path_name(path): var.get_value() for path, var in nnx.to_flat_state(state)}
  return save(output, flat, model_cfg, source=source, overwrite=True, model_config=model_cfg.to_dict(), **extra)


MLM_HEAD = 'mlm_head/'
# How a checkpoint without a trained MLM head gets one: the paper's stage 1 (masked words on text alone).
TEXT_STAGE = ('python -m memobert_jax.train --config configs/pretrain.py:base,stage=text --workdir runs/text_stage '
              '--config.init.checkpoint=INIT --config.data.train=TEXT_SHARDS; then finetune from runs/text_stage/export')


def has_mlm_head(metadata: Mapping[str, Any]) -> bool:
  """Whether an init checkpoint carries the MLM head (transform and bias) that prompting reads the label words
  through; sentence-embedding checkpoints (all-MiniLM and the like) ship none."""
  return any(name.startswith(MLM_HEAD) for name in metadata['params'])


def read_metadata(init_dir: str | pathlib.Path) -> dict[str, Any]:
  init_dir = pathlib.Path(init_dir)
  if not init_dir.is_dir():
    raise FileNotFoundError(f'init checkpoint directory {init_dir} does not exist')
  if not (init_dir / METADATA_FILE).is_file():
    raise FileNotFoundError(f'{init_dir} has no {METADATA_FILE}: not a converted init checkpoint '
                            '(python -m memobert_jax.convert_bert writes one)')
  return json.loads((init_dir / METADATA_FILE).read_text())


def model_shape(init_dir: str | pathlib.Path) -> dict[str, Any]:
  """The CONFIG_FIELDS values the model must have to load this init checkpoint (any BERT size)."""
  saved = read_metadata(init_dir)['config']
  return {field: saved[field] for field in CONFIG_FIELDS}


def check_config(init_dir: str | pathlib.Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Raises unless the model config agrees with the init checkpoint on every CONFIG_FIELDS entry; returns metadata."""
  metadata = read_metadata(init_dir)
  for field in CONFIG_FIELDS:
    saved = metadata['config'][field]
    if saved != cfg[field]:
      raise ValueError(f'init checkpoint {init_dir} has {field} {saved}, the config says {cfg[field]} '
                       f'(model.{field})')
  return metadata


def _path_name(path: tuple[Any, ...]) -> str:
  return '/'.join(str(key) for key in path)


def restore_into(state: nnx.State, init_dir: str | pathlib.Path, cfg: Mapping[str, Any],
                 skip: tuple[str, ...] = ()) -> tuple[nnx.State, list[str]]:
  """Replaces the leaves of `state` that the init checkpoint holds; returns (new state, loaded paths).

  `state` is a model's parameter state, concrete or abstract (from nnx.eval_shape). Each
  loaded leaf is read straight into the sharding of the leaf it replaces (its array's
  sharding, or its ShapeDtypeStruct's; the default device where an abstract leaf has
  none) and the state's dtype. Leaves the checkpoint lacks are returned unchanged; checkpoint
  parameters whose path starts with one of `skip`, or belongs to a modality the model has none of
  (dimension 0), are not loaded (any other unknown one is an error).
  """
  init_dir = pathlib.Path(init_dir).resolve()
  metadata = check_config(init_dir, cfg)
  skip = (*skip, *memobert.absent_modality_parameters(cfg))
  variables = {_path_name(path): (path, var) for path, var in nnx.to_flat_state(state)}
  wanted = {name: shape for name, shape in metadata['params'].items() if not name.startswith(skip)}
  unknown = sorted(set(wanted) - set(variables))
  if unknown:
    raise ValueError(f'init checkpoint {init_dir} has parameters the model does not: {listing(unknown)}')
  target = {}
  for name, shape in wanted.items():
    value = variables[name][1].get_value()
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f'init checkpoint {init_dir} has {name} of shape {tuple(shape)}, the model '
                       f'{tuple(value.shape)}')
    sharding = getattr(value, 'sharding', None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target[name] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
  target = _nest(target)
  # partial_restore: the checkpoint may hold parameters this model skips (e.g. a pretraining-only head).
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(init_dir / PARAMS_DIR, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  flat_restored = {_path_name(tuple(k.key for k in path)): leaf
                   for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}
  new_flat = [(path, var.replace(flat_restored[name]) if name in flat_restored else var)
              for name, (path, var) in variables.items()]
  return nnx.from_flat_state(new_flat), sorted(flat_restored)
