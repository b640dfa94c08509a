"""Orbax checkpoints of the whole run: train state, data-iterator position and config.

Orbax writes each checkpoint into a temporary folder and renames it when complete,
so a write interrupted by a crash is never listed as a step: the run resumes from
the last complete checkpoint.
"""

import json
import os

import grain
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from memobert_jax.training.train_state import TrainState

_ITEMS = ('state', 'data', 'config')


def config_fingerprint(config: ConfigDict) -> dict:
  """The parts of a config that must not change when a run resumes (the model and the tasks' data)."""
  return json.loads(config.model.to_json())


class Checkpointer:
  """Saves every `every_steps` steps (async), keeps the last `keep` and the `keep_best` lowest validation losses."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, keep_best: int = 0, async_save: bool = True):
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics['valid_loss'],
                                                    reverse=True, n=keep_best,
                                                    keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
    )
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_iterator, config: ConfigDict, *, force: bool = False,
           metrics: dict | None = None) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
    )
    return self.manager.save(step, args=args, force=force, metrics=metrics)

  def restore(self, step: int, abstract_state: TrainState, data_iterator) -> TrainState:
    """Restores onto the shardings carried by `abstract_state` (any mesh); moves the iterator in place."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
    ))
    return restored.state

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_compatible(saved: dict, config: ConfigDict, directory: str) -> None:
  """A workdir belongs to one model config: refuse to resume it under another one."""
  saved_model, current = saved.get('model', {}), config_fingerprint(config)
  diffs = sorted(k for k in set(saved_model) | set(current) if saved_model.get(k) != current.get(k))
  if diffs:
    details = ', '.join(f'{k}: saved {saved_model.get(k)!r}, now {current.get(k)!r}' for k in diffs)
    raise ValueError(f'the checkpoints in {directory} were written by a different model config ({details}); '
                     f'use another --workdir or the same config')


def exists(path: str) -> bool:
  return epath.Path(path).exists()
