"""Orbax checkpoints of the whole run: train state, data-iterator position and config.

Orbax writes each checkpoint into a temporary folder and renames it when complete,
so a write interrupted by a crash is never listed as a step: the run resumes from
the last complete checkpoint.
"""

import json
import os

import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from absl import logging
from ml_collections import ConfigDict

from memobert_jax.training.train_state import TrainState

_ITEMS = ('state', 'data', 'config')
DAMAGED_SUFFIX = '.unreadable'


def config_fingerprint(config: ConfigDict) -> dict:
  """The parts of a config that must not change when a run resumes (the model and the tasks' data)."""
  return json.loads(config.model.to_json())


class UnreadableCheckpoint(ValueError):
  """A checkpoint whose files are damaged (truncated, overwritten, or of another pipeline)."""


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

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def save(self, step: int, state: TrainState, data_iterator, config: ConfigDict, *, force: bool = False,
           metrics: dict | None = None) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
    )
    return self.manager.save(step, args=args, force=force, metrics=metrics)

  def restore(self, step: int, abstract_state: TrainState, data_iterator) -> TrainState:
    """Restores onto the shardings carried by `abstract_state` (any mesh); moves the iterator in place.

    Raises:
      UnreadableCheckpoint: naming the file (the iterator's) or the step folder that does not read back.
    """
    folder = os.path.join(self.directory, str(step))
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as error:  # orbax and tensorstore raise many kinds for damaged files
      raise UnreadableCheckpoint(f'{folder}/state: {type(error).__name__}: {error}') from error
    data_file = os.path.join(folder, 'data', f'process_{jax.process_index()}-of-{jax.process_count()}.json')
    try:
      self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except Exception as error:
      raise UnreadableCheckpoint(f'{data_file}: not a data-iterator state of this pipeline '
                                 f'({type(error).__name__}: {error})') from error
    return state.state

  def restore_latest(self, abstract_state: TrainState, data_iterator,
                     config: ConfigDict) -> tuple[int, TrainState] | None:
    """Restores the newest checkpoint that reads back (older ones if the newer are damaged, saying so);
    returns its step and state, or None when there is no checkpoint yet.

    Raises:
      ValueError: the checkpoints were written for another model config, or none of them reads back.
    """
    failures: dict[int, str] = {}
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self.saved_config(step)
      except Exception as error:
        failures[step] = f'{self.directory}/{step}/config: {type(error).__name__}: {error}'
        logging.warning('checkpoint unreadable, trying an older one: %s', failures[step])
        continue
      check_compatible(saved, config, self.directory)
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except UnreadableCheckpoint as error:
        failures[step] = str(error)
        logging.warning('checkpoint unreadable, trying an older one: %s', error)
        continue
      if failures:
        self._set_aside(list(failures))
        logging.warning('resumed from step %d, the newest checkpoint that reads back; the damaged newer ones are '
                        'kept as %s', step, ', '.join(f'{d}{DAMAGED_SUFFIX}' for d in failures))
      return step, state
    if failures:
      raise ValueError(f'no checkpoint in {self.directory} reads back:\n  ' + '\n  '.join(failures.values()) +
                       f'\nrestore the files, or move {self.directory} aside to start the run over')
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Renames damaged checkpoints (nothing is deleted) so that the run saves those steps afresh."""
    if jax.process_index() == 0:
      for step in steps:
        folder = os.path.join(self.directory, str(step))
        os.rename(folder, f'{folder}{DAMAGED_SUFFIX}')
    multihost_utils.sync_global_devices('memobert_set_aside_damaged_checkpoints')
    self.manager.reload()

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

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
