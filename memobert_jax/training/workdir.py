"""A workdir belongs to one job and one config: what a run records there and checks on every start.

WORKDIR/run.json holds the job ('pretrain' or 'finetune'), the config the run was started with
(as given, before anything is resolved from the data), and every deliberate change since. A run
started in a workdir of another job, or with settings that differ from the recorded ones, is
refused with the differences listed, unless the change is asked for (then it is recorded).
"""

import datetime
import json
import os
from typing import Any

import jax
from ml_collections import ConfigDict

from memobert_jax.training import checkpointing

RUN_FILE = 'run.json'
# Settings that change how a run is executed or logged, not what it computes: a resumed run may change them.
EXECUTION_KEYS = ('mesh.', 'per_device_batch', 'log_every_steps', 'checkpoint.', 'data.prefetch_batches',
                  'eval_batch_size', 'peak_flops_per_device')


def flat_config(config: ConfigDict | dict, prefix: str = '') -> dict[str, Any]:
  """{'optim.learning_rate': 5e-05, ...} of a config or of its JSON form."""
  items = json.loads(config.to_json_best_effort()) if isinstance(config, ConfigDict) else config
  flat = {}
  for key, value in items.items():
    if isinstance(value, dict):
      flat.update(flat_config(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def config_changes(saved: dict, current: ConfigDict | dict) -> dict[str, tuple[Any, Any]]:
  """{key: (saved value, current value)} for every setting that changes what the run computes."""
  before, after = flat_config(saved), flat_config(current)
  return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
          if before.get(k) != after.get(k) and not k.startswith(EXECUTION_KEYS)}


def describe(changes: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
  shown = [f'{k}: {old!r} -> {new!r}' for k, (old, new) in list(changes.items())[:limit]]
  more = f' and {len(changes) - limit} more' if len(changes) > limit else ''
  return ', '.join(shown) + more


def read_run(workdir: str) -> dict | None:
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as error:
    raise ValueError(f'{path} is unreadable ({error}): it records which run owns {workdir}; use another --workdir '
                     f'or restore the file') from error


def claim(workdir: str, job: str, config: ConfigDict, *, allow_changes: bool = False) -> dict[str, tuple]:
  """Records that `workdir` holds a `job` run of `config`, or checks that it already does; returns the changes
  a deliberate restart made (empty for a new or unchanged run).

  Raises:
    ValueError: the workdir holds another job or another model, or was started with other settings and
      `allow_changes` is False.
  """
  os.makedirs(workdir, exist_ok=True)
  run = read_run(workdir)
  changes = {}
  if run is not None:
    if run['job'] != job:
      raise ValueError(f'{workdir} holds a {run["job"]} run ({RUN_FILE}); a {job} run needs a workdir of its own: '
                       f'give another --workdir')
    checkpointing.check_compatible(run['config'], config, workdir)  # a different model never continues a run
    changes = config_changes(run['config'], config)
    if changes and not allow_changes:
      raise ValueError(f'{workdir} was started with other settings ({describe(changes)}); to continue it with '
                       f'these settings deliberately pass --allow_config_change (the change is recorded in '
                       f'{RUN_FILE}), or give another --workdir')
  else:
    run = {'job': job, 'changes': []}
  if changes:
    run['changes'].append({'time': datetime.datetime.now().isoformat(timespec='seconds'),
                           'changes': {k: list(v) for k, v in changes.items()}})
  run['config'] = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:
    temporary = os.path.join(workdir, RUN_FILE + '.tmp')
    with open(temporary, 'w') as f:
      json.dump(run, f, indent=2)
    os.replace(temporary, os.path.join(workdir, RUN_FILE))
  return changes
