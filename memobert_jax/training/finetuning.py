"""The finetuning loop: train on one fold, select on its validation speaker, test once at the end.

Every host holds the whole (small) labelled corpus and builds the same batches; each places
only its own shards of them on the devices.

Writes into the workdir: results.json (validation and test metrics of the selected
step, the confusion matrix), confusion.png, TensorBoard logs, and best/ (the selected
model as an init checkpoint, which `memobert_jax.predict` loads).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax import config_utils, evaluation, init_checkpoint, tokenizer as tokenizer_lib
from memobert_jax.data import labelled, pipeline
from memobert_jax.model.sharding import activation_rules
from memobert_jax.training import loop, metrics as metrics_lib, optimizer as optimizer_lib, partitioning
from memobert_jax.training import step as step_lib, tasks, train_state, workdir as workdir_lib

RESULTS_FILE = 'results.json'


def resolve(config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer, num_classes: int) -> ConfigDict:
  """The config with what the data decides: the vocabulary size if 0, the [CLS] head's size (cls mode only)."""
  config = pipeline.with_vocabulary(config, tokenizer)
  config.model.num_classes = num_classes if config.finetune.mode == 'cls' else 0
  return config


def make_scorer(graphdef: nnx.GraphDef, label_word_ids: np.ndarray | None, param_shardings, mesh, rules):
  """Jitted per-class scores [b, K] for a [1, b, ...] batch."""

  def scores(params: nnx.State, batch: dict) -> jax.Array:
    model = nnx.merge(graphdef, params)
    ids = None if label_word_ids is None else jnp.asarray(label_word_ids)
    with activation_rules(rules):
      return tasks.class_scores(model, jax.tree.map(lambda x: x[0], batch), ids)

  return jax.jit(scores, in_shardings=(param_shardings, step_lib.train_batch_sharding(mesh, rules)),
                 out_shardings=partitioning.replicated(mesh))


def predict_classes(scorer, params, batches: list[dict], count: int, sharding) -> tuple[np.ndarray, np.ndarray]:
  """(predicted class, class probabilities) of the first `count` rows of the batches."""
  scores = np.concatenate([np.asarray(jax.device_get(scorer(params, loop.replicated_to_global(b, sharding))))
                           for b in batches])[:count]
  probabilities = np.asarray(jax.nn.softmax(scores, axis=-1))
  return scores.argmax(-1), probabilities


def finetune(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Runs one finetuning experiment (one fold, seed and fraction); returns its results. A workdir of another
  job, or of this one with other settings, is refused unless `allow_config_change`."""
  loop.maybe_initialize_distributed()
  workdir_lib.claim(workdir, 'finetune', config, allow_changes=allow_config_change)
  tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer.kind, config.data.tokenizer.path,
                                           config.data.tokenizer.lowercase)
  settings = config.finetune
  labelled.check_modalities(settings.train_modalities)
  labelled.check_modalities(settings.eval_modalities)
  splits = [s for s in config.data.splits.split(',') if s]
  utterances, label_names = labelled.load_utterances(config.data.train, splits or _all_splits(config.data.train),
                                                     config.model, config.data, tokenizer)
  config = resolve(config, tokenizer, len(label_names))
  parts = labelled.fold_splits(utterances, settings.protocol, settings.fold, settings.train_fraction, config.seed)
  for name, members in parts.items():
    if not members:
      raise ValueError(f'fold {settings.fold} of protocol {settings.protocol!r} has no {name} utterances in '
                       f'{config.data.train}')
  stats = labelled.fit_feature_stats(parts['train']) if config.data.normalize_features else {}
  parts = {name: [labelled.standardize(u, stats) for u in members] for name, members in parts.items()}
  batcher = labelled.FinetuneBatcher(config, tokenizer, label_names)

  mesh = partitioning.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = config.logical_axis_rules
  num_micro, micro_size = loop.micro_batching(config, mesh)
  optimizer = optimizer_lib.make_optimizer(config.optim)
  graphdef, state, shardings = train_state.create_train_state(config.model, optimizer, mesh, rules, config.seed)
  if config.init.checkpoint:
    # A pretraining run with the itm ablation task leaves a matching head that finetuning does not use.
    params, loaded = init_checkpoint.restore_into(state.params, config.init.checkpoint, config.model,
                                                  skip=('itm_head/',))
    state = state.replace(params=params)
    logging.warning('initialised %d parameters from %s', len(loaded), config.init.checkpoint)
  task = 'cls' if settings.mode == 'cls' else 'prompt'
  train_step = step_lib.make_train_step(graphdef, optimizer, seed=config.seed,
                                        learning_rate=optimizer_lib.learning_rate_schedule(config.optim),
                                        state_shardings=shardings, mesh=mesh, rules=rules)
  label_word_ids = None if settings.mode == 'cls' else batcher.verbalizer.label_ids
  scorer = make_scorer(graphdef, label_word_ids, shardings.params, mesh, rules)
  sharding = step_lib.train_batch_sharding(mesh, rules)
  valid = labelled.evaluation_batches(batcher, parts['valid'], settings.eval_modalities, settings.eval_batch_size)
  valid_labels = np.array([u.label for u in parts['valid']])
  training = labelled.training_batches(batcher, batcher.training_items(parts['train'], settings.train_modalities),
                                       config.batch_size, config.seed)

  writer = metrics_lib.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  late = metrics_lib.LateMetrics()
  bar = metrics_lib.progress_bar(config.optim.total_steps, 0, f'finetune {settings.mode}')
  best = {'step': 0, 'value': -1.0, 'valid': None}
  best_params = state.params

  def log(result) -> None:
    if result is not None and result[0] % config.log_every_steps == 0:
      writer.scalars(*result)

  with jax.set_mesh(mesh):
    for step in range(config.optim.total_steps):
      batch = next(training)
      state, step_metrics = train_step(state, loop.replicated_to_global(batch, sharding), task)
      log(late.push(step + 1, step_metrics))
      bar.update(1)
      if (step + 1) % config.eval_every_steps == 0 or step + 1 == config.optim.total_steps:
        predicted, _ = predict_classes(scorer, state.params, valid, len(valid_labels), sharding)
        scores = evaluation.classification_metrics(valid_labels, predicted, len(label_names))
        writer.scalars(step + 1, {f'valid/{k}': v for k, v in scores.items() if k != 'confusion'})
        bar.set_postfix({f'valid_{settings.select_metric}': f'{scores[settings.select_metric]:.3f}'}, refresh=False)
        if scores[settings.select_metric] > best['value']:
          best = {'step': step + 1, 'value': scores[settings.select_metric], 'valid': scores}
          best_params = jax.tree.map(jnp.copy, state.params)
    log(late.flush())
  bar.close()

  # The test speaker is scored once, with the model chosen on the validation speaker.
  test = labelled.evaluation_batches(batcher, parts['test'], settings.eval_modalities, settings.eval_batch_size)
  test_labels = np.array([u.label for u in parts['test']])
  with jax.set_mesh(mesh):
    predicted, _ = predict_classes(scorer, best_params, test, len(test_labels), sharding)
  test_scores = evaluation.classification_metrics(test_labels, predicted, len(label_names))
  writer.scalars(best['step'], {f'test/{k}': v for k, v in test_scores.items() if k != 'confusion'})
  writer.close()
  results = {
      'mode': settings.mode, 'protocol': settings.protocol, 'fold': settings.fold, 'seed': config.seed,
      'train_fraction': settings.train_fraction, 'train_modalities': settings.train_modalities,
      'eval_modalities': settings.eval_modalities, 'template': settings.template, 'label_names': label_names,
      'label_words': list(batcher.verbalizer.words), 'best_step': best['step'], 'valid': best['valid'],
      'test': test_scores, 'sizes': {name: len(members) for name, members in parts.items()},
      'git_revision': config_utils.git_revision(),
  }
  init_checkpoint.export_state(best_params, os.path.join(workdir, 'best'), config.model,
                               source=f'finetuning {workdir} step {best["step"]}',
                               tokenizer=config.data.tokenizer.to_dict(), finetune=settings.to_dict(),
                               label_names=label_names, label_words=list(batcher.verbalizer.words),
                               max_text_tokens=config.data.max_text_tokens,
                               max_visual_frames=config.data.max_visual_frames,
                               max_acoustic_frames=config.data.max_acoustic_frames,
                               feature_stats={m: s.to_json() for m, s in stats.items()})
  if jax.process_index() == 0:
    evaluation.plot_confusion(np.array(test_scores['confusion']), label_names, os.path.join(workdir, 'confusion.png'),
                              f'{settings.mode}, fold {settings.fold}: test UA {100 * test_scores["ua"]:.1f}')
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    # Written last: a sweep treats a workdir with results.json as finished.
    with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def _all_splits(path: str) -> list[str]:
  from memobert_jax.data import schema
  return list(schema.DatasetMetadata.load(path).splits)
