"""The pretraining loop: one readable function from config to checkpoints.

At the end the model is exported as an init checkpoint (WORKDIR/export) that
finetuning configs name as their initialisation.
"""

import json
import os
import time

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from memobert_jax import config_utils, init_checkpoint, tokenizer as tokenizer_lib
from memobert_jax.data import pipeline
from memobert_jax.training import checkpointing, metrics as metrics_lib, optimizer as optimizer_lib
from memobert_jax.training import partitioning, step as step_lib, train_state, workdir as workdir_lib


def maybe_initialize_distributed() -> None:
  """Joins the other processes of a multi-host job; a no-op on one host.

  With MEMOBERT_DISTRIBUTED=1 (what scripts/launch_tpu_pod.sh sets), jax finds the other processes
  of a TPU pod slice, SLURM or Open MPI job itself. Anywhere else (several
  GPU hosts, or processes on one machine) set on every process JAX_COORDINATOR_ADDRESS (host:port
  of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  if jax.distributed.is_initialized():
    return
  if 'JAX_NUM_PROCESSES' in os.environ:
    # Cross-process collectives of CPU devices (debugging a multi-host setup without accelerators).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                               process_id=int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('MEMOBERT_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def micro_batching(config: ConfigDict, mesh) -> tuple[int, int]:
  """(micro-batches per step, examples per micro-batch) from the global batch and the per-device batch."""
  data_parallel = partitioning.data_parallel_size(mesh, config.logical_axis_rules)
  micro = min(config.per_device_batch * data_parallel, config.batch_size)
  if config.batch_size % micro or micro % data_parallel:
    raise ValueError(f'batch_size {config.batch_size} must split into micro-batches of per_device_batch '
                     f'{config.per_device_batch} x {data_parallel} data-parallel devices')
  return config.batch_size // micro, micro


def to_global(batch: dict, sharding) -> dict:
  """Host-local [A, b_local, ...] numpy arrays -> global [A, b, ...] arrays laid out on the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicated_to_global(batch: dict, sharding) -> dict:
  """The same whole [A, b, ...] batch on every host -> global arrays; each host places only its own shards."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index]) for k, v in batch.items()}


def pretrain(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Runs (or resumes) pretraining; returns the last logged metrics. A workdir started with other settings is
  refused unless `allow_config_change` (the model itself can never change)."""
  maybe_initialize_distributed()
  workdir_lib.claim(workdir, 'pretrain', config, allow_changes=allow_config_change)
  mesh = partitioning.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = config.logical_axis_rules
  num_micro, micro_size = micro_batching(config, mesh)
  tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer.kind, config.data.tokenizer.path,
                                           config.data.tokenizer.lowercase)
  config = pipeline.with_vocabulary(config, tokenizer)
  optimizer = optimizer_lib.make_optimizer(config.optim)
  graphdef, _ = train_state.abstract_model(config.model, config.seed)
  abstract_state = train_state.abstract_train_state(config.model, optimizer, mesh, rules)
  state_shardings = jax.tree.map(lambda a: a.sharding, abstract_state)

  train_data = pipeline.pretraining_dataset(config, tokenizer, split=config.data.train_split,
                                            micro_batches=num_micro, micro_batch_size=micro_size)
  train_iter = iter(train_data)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), **config.checkpoint)
  restored = checkpointer.restore_latest(abstract_state, train_iter, config)
  if restored is not None:
    start, state = restored
    logging.warning('resumed from step %d in %s', start, workdir)
  else:
    start = 0
    _, state, _ = train_state.create_train_state(config.model, optimizer, mesh, rules, config.seed)
    if config.init.checkpoint:
      params, loaded = init_checkpoint.restore_into(state.params, config.init.checkpoint, config.model)
      state = state.replace(params=params)
      logging.warning('initialised %d parameters from %s', len(loaded), config.init.checkpoint)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))

  train_step = step_lib.make_train_step(graphdef, optimizer, seed=config.seed,
                                        learning_rate=optimizer_lib.learning_rate_schedule(config.optim),
                                        state_shardings=state_shardings, mesh=mesh, rules=rules)
  eval_step = step_lib.make_eval_step(graphdef, state_shardings=state_shardings, mesh=mesh, rules=rules)
  batch_sharding = step_lib.train_batch_sharding(mesh, rules)
  valid = (pipeline.validation_batches(config, tokenizer, micro_batch_size=micro_size)
           if config.data.valid else [])

  writer = metrics_lib.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  late = metrics_lib.LateMetrics()
  bar = metrics_lib.progress_bar(config.optim.total_steps, start, 'pretrain')
  # Throughput between two logged steps, from the tokens of the steps completed in between.
  tokens_of_step: dict[int, int] = {}
  last_logged = {'step': start, 'time': time.perf_counter()}
  last: dict[str, float] = {}

  def log(result) -> None:
    nonlocal last
    if result is None:
      return
    step, values = result
    if step % config.log_every_steps == 0 or step == config.optim.total_steps:
      now, steps = time.perf_counter(), step - last_logged['step']
      tokens = sum(tokens_of_step.pop(s, 0) for s in range(last_logged['step'] + 1, step + 1))
      values.update(metrics_lib.throughput(steps * config.batch_size, tokens, now - last_logged['time']))
      last_logged.update(step=step, time=now)
      writer.scalars(step, values)
      bar.set_postfix({k.split('/')[0]: f'{v:.3f}' for k, v in values.items() if k.endswith('/loss')}, refresh=False)
      last = values

  with jax.set_mesh(mesh):
    for step in range(start, config.optim.total_steps):
      task, host_batch = next(train_iter)
      tokens_of_step[step + 1] = metrics_lib.batch_tokens(host_batch) * jax.process_count()
      state, step_metrics = train_step(state, to_global(host_batch, batch_sharding), task)
      log(late.push(step + 1, step_metrics))
      bar.update(1)
      valid_metrics = None
      if valid and ((step + 1) % config.eval_every_steps == 0 or step + 1 == config.optim.total_steps):
        valid_metrics = evaluate(eval_step, state, valid, batch_sharding)
        writer.scalars(step + 1, valid_metrics)
      final = step + 1 == config.optim.total_steps
      if final or checkpointer.should_save(step + 1):
        # What a checkpoint covers is on disk before it: a run killed after it resumes with no gap in the logs.
        log(late.flush())
        writer.flush()
      checkpointer.save(step + 1, state, train_iter, config, force=final, metrics=valid_metrics)
    log(late.flush())
  init_checkpoint.export_state(state.params, os.path.join(workdir, 'export'), config.model,
                               source=f'pretraining {workdir} step {config.optim.total_steps}',
                               tokenizer=config.data.tokenizer.to_dict())
  data_state = train_iter.get_state()
  last.update({f'data/{k}': data_state[k] for k in ('examples_seen', 'dropped_long_text', 'mlm_capped_words')})
  if data_state['mlm_capped_words']:
    logging.warning('%d words had more sub-tokens than data.mlm_max_predictions=%d and were masked in part',
                    data_state['mlm_capped_words'], config.data.mlm_max_predictions)
  last['git_revision'] = config_utils.git_revision()
  train_iter.close()
  bar.close()
  writer.close()
  checkpointer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(last, f, indent=2)
  return last


def evaluate(eval_step, state, batches: list[tuple[str, dict]], sharding) -> dict[str, float]:
  """Validation loss per task over fixed batches (the same every time), and their mean as valid_loss."""
  sums: dict[str, list[float]] = {}
  for task, host_batch in batches:
    total, count = jax.device_get(eval_step(state, to_global(host_batch, sharding), task))
    acc = sums.setdefault(task, [0.0, 0.0])
    acc[0] += float(total)
    acc[1] += float(count)
  per_task = {f'valid/{task}': total / max(count, 1.0) for task, (total, count) in sums.items()}
  per_task['valid_loss'] = float(np.mean(list(per_task.values())))
  return per_task
