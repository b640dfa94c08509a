"""The pretraining loop: one readable function from config to checkpoints.

Setup is memobert_jax/training/setup.py's; this file keeps the iteration, the checkpoints and the export.
At the end the model is exported as an init checkpoint (WORKDIR/export) that finetuning configs name as
their initialisation.
"""

import os
import time

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from memobert_jax import config_utils, init_checkpoint, sharding
from memobert_jax.data import pipeline
from memobert_jax.training import checkpointing, metrics as metrics_lib, setup, step as step_lib, topology
from memobert_jax.training import workdir as workdir_lib


def pretrain(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Runs (or resumes) pretraining; returns the last logged metrics. A workdir started with other settings is
  refused unless `allow_config_change` (the model itself can never change)."""
  goodput = metrics_lib.Goodput()
  with goodput.losing('setup'):
    setup.prepare_process(config)
    workdir_lib.claim(workdir, 'pretrain', config, allow_changes=allow_config_change)
    tokenizer = setup.load_tokenizer(config)
    config = setup.resolve(config, tokenizer)
    trainer = setup.make_trainer(config)
    train_iter = iter(pipeline.pretraining_dataset(config, tokenizer, split=config.data.train_split,
                                                   micro_batches=trainer.micro_batches,
                                                   micro_batch_size=trainer.micro_batch_size))
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), **config.checkpoint)
    restored = checkpointer.restore_latest(trainer.abstract_state, train_iter, config)
    if restored is not None:
      start, state = restored
      logging.warning('resumed from step %d in %s', start, workdir)
    else:
      start, state = 0, setup.initial_state(trainer)
      setup.write_config(workdir, config)
    eval_step = step_lib.make_eval_step(trainer.graphdef, state_shardings=trainer.state_shardings,
                                        mesh=trainer.mesh, rules=trainer.rules,
                                        compiler_options=setup.compiler_options(config))
    valid = (pipeline.validation_batches(config, tokenizer, micro_batch_size=trainer.micro_batch_size)
             if config.data.valid else [])
    outputs = setup.RunOutputs(workdir, config.optim.total_steps, start, 'pretrain')
  chip = topology.chip_of(jax.devices()[0])
  peak = config.peak_flops_per_device or (chip.peak_bf16_flops if chip else 0.0)
  # Throughput and FLOP/s between two logged steps, from the steps completed in between; the FLOPs of a step
  # come from XLA's cost analysis of its compiled program (one per task and batch shape).
  tokens_of_step: dict[int, int] = {}
  flops_of_step: dict[int, float] = {}
  flops_of_program: dict[tuple, float] = {}
  last_logged = {'step': start, 'time': time.perf_counter(), 'lost': goodput.lost_seconds}
  last: dict[str, float] = {}

  def log(result) -> None:
    nonlocal last
    if result is None:
      return
    step, values = result
    if step % config.log_every_steps == 0 or step == config.optim.total_steps:
      now, steps = time.perf_counter(), step - last_logged['step']
      done = range(last_logged['step'] + 1, step + 1)
      tokens = sum(tokens_of_step.pop(s, 0) for s in done)
      flops = sum(flops_of_step.pop(s, 0.0) for s in done)
      values.update(metrics_lib.throughput(steps * config.batch_size, tokens, now - last_logged['time']))
      # FLOP/s over the time the steps had: the window less what compiles, input waits and checkpoints took.
      stepping = max(now - last_logged['time'] - (goodput.lost_seconds - last_logged['lost']), 1e-9)
      values['tflops_per_device'] = flops / stepping / 1e12
      if peak:
        values['mfu'] = flops / stepping / peak
      last_logged.update(step=step, time=now, lost=goodput.lost_seconds)
      outputs.writer.scalars(step, values)
      postfix = {k.split('/')[0]: f'{v:.3f}' for k, v in values.items() if k.endswith('/loss')}
      outputs.bar.set_postfix({**postfix, **({'mfu': f'{values["mfu"]:.1%}'} if peak else {})}, refresh=False)
      last = values

  with jax.set_mesh(trainer.mesh):
    for step in range(start, config.optim.total_steps):
      with goodput.losing('input_wait'):
        task, host_batch = next(train_iter)
      tokens_of_step[step + 1] = metrics_lib.batch_tokens(host_batch) * jax.process_count()
      batch = sharding.to_global(host_batch, trainer.batch_sharding)
      program = (task, tuple((k, v.shape) for k, v in sorted(host_batch.items())))
      if program in flops_of_program:
        state, step_metrics = trainer.train_step(state, batch, task)
      else:
        with goodput.losing('compile'):
          state, step_metrics = trainer.train_step(state, batch, task)
          # The call above compiled it: lowering again finds the executable in jax's cache.
          flops_of_program[program] = metrics_lib.step_flops(trainer.train_step.lower(state, batch, task).compile(),
                                                             trainer.micro_batches)
      flops_of_step[step + 1] = flops_of_program[program]
      log(outputs.late.push(step + 1, step_metrics))
      outputs.bar.update(1)
      valid_metrics = None
      if valid and ((step + 1) % config.eval_every_steps == 0 or step + 1 == config.optim.total_steps):
        with goodput.losing('evaluation'):
          valid_metrics = evaluate(eval_step, state, valid, trainer.batch_sharding)
        outputs.writer.scalars(step + 1, valid_metrics)
      final = step + 1 == config.optim.total_steps
      if final or checkpointer.should_save(step + 1):
        # What a checkpoint covers is on disk before it: a run killed after it resumes with no gap in the logs.
        log(outputs.late.flush())
        outputs.writer.flush()
      with goodput.losing('checkpoint'):
        checkpointer.save(step + 1, state, train_iter, config, force=final, metrics=valid_metrics)
    log(outputs.late.flush())
  with goodput.losing('export'):
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
  with goodput.losing('checkpoint'):
    checkpointer.close()  # waits for the last asynchronous save
  last.update(goodput.summary())
  outputs.writer.scalars(config.optim.total_steps, {k: v for k, v in last.items() if k == 'goodput'})
  outputs.close()
  setup.write_json(os.path.join(workdir, 'final_metrics.json'), last)
  return last


def evaluate(eval_step, state, batches: list[tuple[str, dict]], batch_sharding) -> dict[str, float]:
  """Validation loss per task over fixed batches (the same every time), and their mean as valid_loss."""
  sums: dict[str, list[float]] = {}
  for task, host_batch in batches:
    total, count = jax.device_get(eval_step(state, sharding.to_global(host_batch, batch_sharding), task))
    acc = sums.setdefault(task, [0.0, 0.0])
    acc[0] += float(total)
    acc[1] += float(count)
  per_task = {f'valid/{task}': total / max(count, 1.0) for task, (total, count) in sums.items()}
  per_task['valid_loss'] = float(np.mean(list(per_task.values())))
  return per_task
