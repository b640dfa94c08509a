"""Loading `file.py:arg` configs with `key=value` overrides, with errors that point at the fix.

The entry points take configs through ml_collections' config flags; they call
`check_command_line` first so that a mistyped `--config.key` names the closest
existing keys instead of failing deep inside flag parsing.
"""

import ast
import difflib
import importlib.util
import math
import os
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser


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


# How ml_collections' config flags parse a command-line string for each field type, and the name of the type.
_PARSERS = {
    bool: (flags.BooleanParser(), 'a boolean (true or false)'),
    int: (flags.IntegerParser(), 'an integer'),
    float: (flags.FloatParser(), 'a float'),
    tuple: (tuple_parser.TupleParser(), "a tuple (write '(16, 32)' or \"('a', 'b')\")"),
}


def parse_value(text: str, current: Any) -> Any:
  """A command-line string as the type of the value it replaces, accepted where config flags accept it: the one
  parser of `key=value` for --config.key overrides, sweeps and config-file arguments alike."""
  if isinstance(current, str):
    return text
  if type(current) not in _PARSERS:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f'{text!r} is not a Python literal (the value is a {type(current).__name__})') from None
  parser, type_name = _PARSERS[type(current)]
  try:
    value = parser.parse(text)
  except ValueError:
    raise ValueError(f'{text!r} is not {type_name}') from None
  if isinstance(current, tuple):
    _check_tuple(text, value, current)
  if isinstance(value, float) and not math.isfinite(value):  # a nan learning rate would train to nan silently
    raise ValueError(f'{text!r} is not a finite float')
  return value


def _check_tuple(text: str, value: tuple, current: tuple) -> None:
  """Config flags take ('abc',) for (16, 32), and read 'a,b' as the one-string tuple ('a,b',): both are refused."""
  kinds = {type(element) for element in current}
  kind = kinds.pop() if len(kinds) == 1 else None
  if kind and not all(type(element) is kind or (kind is float and type(element) is int) for element in value):
    raise ValueError(f'{text!r} is not a tuple of {kind.__name__} (write it as {current!r})')
  if value == (text,) and ',' in text:
    raise ValueError(f'{text!r} would be one string: write the tuple as "{tuple(text.split(","))!r}"')


def _parent(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """The ConfigDict holding a dotted key, and the key's last part; KeyError naming the closest keys if absent."""
  node = config
  *parents, leaf = key.split('.')
  for parent in parents:
    if parent not in node or not isinstance(node[parent], ml_collections.ConfigDict):
      raise unknown_key_error(key, config)
    node = node[parent]
  if leaf not in node:
    raise unknown_key_error(key, config)
  return node, leaf


def _set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets a dotted key; a string value is parsed as the replaced value's type."""
  node, leaf = _parent(config, key)
  node[leaf] = parse_value(value, node[leaf]) if isinstance(value, str) else value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys; values may be typed or command-line strings (parsed as the replaced value's type)."""
  for key, value in overrides.items():
    try:
      _set_value(config, key, value)
    except ValueError as error:
      raise ValueError(f'config key {key}: {error}') from None
  return config


def load_config_or_exit(flag: str, spec: str) -> ml_collections.ConfigDict:
  """load_config, exiting with a message that names the flag and its file when the file or its argument is wrong."""
  try:
    return load_config(spec)
  except (KeyError, ValueError, SyntaxError, FileNotFoundError) as error:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    sys.exit(f'error: --{flag} {spec}: {message}')


def _flag(arg: str) -> tuple[str, str | None]:
  """'--name=value' or '-name=value' -> (name, value); value None without '='; ('', None) for a non-flag."""
  if not arg.startswith('-'):
    return '', None
  name, equals, value = arg.lstrip('-').partition('=')
  return name, value if equals else None


def check_command_line(argv: Sequence[str], flag_names: Sequence[str] = ('config',)) -> None:
  """Exits with a message naming the flag when a config flag's file or argument, or a --FLAG.KEY override, is wrong.

  Reads argv as absl does, so both spellings are checked: --config=FILE or --config FILE, --config.key=value or
  --config.key value; a boolean key given alone is true; flags end at a bare '--'.
  """
  configs = {}
  args = iter(argv[1:])
  for arg in args:
    if arg == '--':
      return
    name, value = _flag(arg)
    flag, _, key = name.partition('.')
    if flag not in flag_names:
      continue
    if not key:
      spec = next(args, None) if value is None else value
      if spec is not None:
        configs[flag] = load_config_or_exit(flag, spec)
    elif flag in configs:  # absl itself refuses an override before its config file
      _check_override(configs[flag], flag, key, value, args)


def _check_override(config: ml_collections.ConfigDict, flag: str, key: str, value: str | None,
                    args: Iterator[str]) -> None:
  """Applies --FLAG.KEY[=VALUE] to config, exiting with a message if the key or value is wrong; without '=' the
  value is the next argument, except for a boolean key."""
  try:
    if value is None:
      node, leaf = _parent(config, key)
      value = 'true' if isinstance(node[leaf], bool) else next(args, None)
    if value is not None:  # a missing value is absl's to report
      _set_value(config, key, value)
  except KeyError as error:
    sys.exit(f'error: {error.args[0]}')
  except ValueError as error:
    sys.exit(f'error: --{flag}.{key}: {error}')


def refuse_extra_arguments(argv: Sequence[str]) -> None:
  """Exits when arguments are left after the flags. absl passes them to main, which would drop them: the shell
  makes of an unquoted `--config.data.text_buckets=32, 64` the flag `...=32,` and a stray `64`."""
  if len(argv) > 1:
    sys.exit(f'error: unexpected argument(s) {" ".join(argv[1:])!r}: every setting is a --flag=value; quote a '
             "value with spaces, e.g. --config.data.text_buckets='(32, 64)'")


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


def define_run_flags(workdir_help: str) -> tuple:
  """The flags of a training entry point: --config FILE[:arg] (with --config.key=value overrides), --workdir and
  --allow_config_change; returns their holders."""
  config = config_flags.DEFINE_config_file('config', None, 'Config file (and :variant arguments).', lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  allow_config_change = flags.DEFINE_bool(
      'allow_config_change', False, 'Continue a workdir started with other settings (recorded in WORKDIR/run.json).')
  flags.mark_flags_as_required(['config', 'workdir'])
  return config, workdir, allow_config_change
