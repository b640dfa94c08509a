"""Loading `file.py:arg` configs with `key=value` overrides, with errors that point at the fix.

The entry points take configs through ml_collections' config flags; they call
`check_command_line` first so that a mistyped `--config.key` names the closest
existing keys instead of failing deep inside flag parsing.
"""

import ast
import difflib
import importlib.util
import os
import subprocess
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def load_module(path: str) -> types.ModuleType:
  """A config file as a module (its get_config, and ARGUMENTS: the variant arguments it accepts)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  module_spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/finetune.py:prompt,fold=2' -> the ConfigDict its get_config returns."""
  path, _, arg = spec.partition(':')
  return load_module(path).get_config(arg or None)


def all_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(all_keys(value, f'{prefix}{key}.'))
  return keys


def unknown_key_error(key: str, config: ml_collections.ConfigDict) -> KeyError:
  close = difflib.get_close_matches(key, all_keys(config), n=3, cutoff=0.6)
  hint = f'; closest: {", ".join(close)}' if close else ''
  return KeyError(f'config key {key!r} does not exist{hint}')


def _parse_value(text: str, current: Any) -> Any:
  """A command-line string as the type of the value it replaces."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'{text!r} is not a boolean')
    return text.lower() in ('true', '1')
  value = ast.literal_eval(text)
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if isinstance(current, tuple) and not isinstance(value, tuple):
    return tuple(value) if isinstance(value, list) else (value,)
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys; values may be typed or command-line strings (parsed as the replaced value's type)."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      if parent not in node or not isinstance(node[parent], ml_collections.ConfigDict):
        raise unknown_key_error(key, config)
      node = node[parent]
    if leaf not in node:
      raise unknown_key_error(key, config)
    node[leaf] = _parse_value(value, node[leaf]) if isinstance(value, str) else value
  return config


def check_command_line(argv: Sequence[str]) -> None:
  """Exits with a clear message if a --config.KEY override names a key the config does not have."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return
  try:
    config = load_config(spec)
    for arg in argv:
      if arg.startswith('--config.'):
        key, _, value = arg[len('--config.'):].partition('=')
        apply_overrides(config, {key: value})
  except (KeyError, ValueError, SyntaxError, FileNotFoundError) as error:
    sys.exit(f'error: {error.args[0] if error.args else error}')


def git_revision() -> str:
  """The project's git commit ('+dirty' if the tree has changes), or 'unknown' outside a checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, check=True)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root, capture_output=True,
                           text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return commit.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')
