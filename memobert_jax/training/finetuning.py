"""The finetuning loop: train on one fold, select on its validation speaker, test once at the end.

Every host holds the whole (small) labelled corpus and builds the same batches; each places
only its own shards of them on the devices. Setup is memobert_jax/training/setup.py's; the mode
(prompt, prompt_cm, cls) decides the batches, the loss and the scores (memobert_jax/modes.py).

Writes into the workdir: results.json (validation and test metrics of the selected
step, the confusion matrix), confusion.png, TensorBoard logs, and best/ (the selected
model as an init checkpoint, which `memobert_jax.predict` loads).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from memobert_jax import config_utils, evaluation, inference, init_checkpoint, modes, sharding
from memobert_jax.data import finetuning_data, sources
from memobert_jax.training import setup, workdir as workdir_lib

RESULTS_FILE = 'results.json'
SPLITS_FILE = 'splits.json'  # the utterance ids of each split, so a baseline can train on the very same ones


def finetune(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Runs one finetuning experiment (one fold, seed and fraction); returns its results. A workdir of another
  job, or of this one with other settings, is refused unless `allow_config_change`."""
  setup.prepare_process(config)
  workdir_lib.claim(workdir, 'finetune', config, allow_changes=allow_config_change)
  tokenizer = setup.load_tokenizer(config)
  settings = config.finetune
  mode = modes.get(settings.mode)
  finetuning_data.check_modalities(settings.train_modalities)
  finetuning_data.check_modalities(settings.eval_modalities)
  dataset = sources.open_source(config.data.train, 1.0, config.model).metadata
  splits = [s for s in config.data.splits.split(',') if s] or list(dataset.splits)
  utterances, label_names = finetuning_data.load_utterances(config.data.train, splits, config.model, config.data,
                                                            tokenizer)
  config = setup.resolve(config, tokenizer, len(label_names))
  parts = finetuning_data.fold_splits(utterances, settings.protocol, settings.fold, settings.train_fraction,
                                      config.seed)
  for name, members in parts.items():
    if not members:
      raise ValueError(f'fold {settings.fold} of protocol {settings.protocol!r} has no {name} utterances in '
                       f'{config.data.train}')
  stats = finetuning_data.fit_feature_stats(parts['train']) if config.data.normalize_features else {}
  parts = {name: [finetuning_data.standardize(u, stats) for u in members] for name, members in parts.items()}
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, label_names)

  trainer = setup.make_trainer(config)
  # A pretraining run with the itm ablation task leaves a matching head that finetuning does not use.
  state = setup.initial_state(trainer, skip=('itm_head/',))
  scorer = inference.make_scorer(trainer.graphdef, mode.scored_ids(batcher.verbalizer.label_ids), mesh=trainer.mesh,
                                 rules=trainer.rules, param_shardings=trainer.state_shardings.params,
                                 compiler_options=setup.compiler_options(config))
  place = functools.partial(sharding.replicated_to_global, sharding=trainer.batch_sharding)
  valid = finetuning_data.evaluation_batches(batcher, parts['valid'], settings.eval_modalities,
                                             settings.eval_batch_size)
  valid_labels = np.array([u.label for u in parts['valid']])
  training = finetuning_data.training_batches(batcher, batcher.training_items(parts['train'],
                                                                            settings.train_modalities),
                                              config.batch_size, config.seed)

  outputs = setup.RunOutputs(workdir, config.optim.total_steps, 0, f'finetune {settings.mode}')
  best = {'step': 0, 'value': -1.0, 'valid': None}
  best_params = state.params

  def log(result) -> None:
    if result is not None and result[0] % config.log_every_steps == 0:
      outputs.writer.scalars(*result)

  with jax.set_mesh(trainer.mesh):
    for step in range(config.optim.total_steps):
      state, step_metrics = trainer.train_step(state, place(next(training)), batcher.task)
      log(outputs.late.push(step + 1, step_metrics))
      outputs.bar.update(1)
      if (step + 1) % config.eval_every_steps == 0 or step + 1 == config.optim.total_steps:
        predicted, _ = inference.predict_classes(scorer, state.params, valid, len(valid_labels), place)
        scores = evaluation.classification_metrics(valid_labels, predicted, len(label_names))
        outputs.writer.scalars(step + 1, {f'valid/{k}': v for k, v in scores.items() if k != 'confusion'})
        outputs.bar.set_postfix({f'valid_{settings.select_metric}': f'{scores[settings.select_metric]:.3f}'},
                                refresh=False)
        if scores[settings.select_metric] > best['value']:
          best = {'step': step + 1, 'value': scores[settings.select_metric], 'valid': scores}
          best_params = jax.tree.map(jnp.copy, state.params)
    log(outputs.late.flush())

    # The test speaker is scored once, with the model chosen on the validation speaker.
    test = finetuning_data.evaluation_batches(batcher, parts['test'], settings.eval_modalities,
                                              settings.eval_batch_size)
    test_labels = np.array([u.label for u in parts['test']])
    predicted, _ = inference.predict_classes(scorer, best_params, test, len(test_labels), place)
  test_scores = evaluation.classification_metrics(test_labels, predicted, len(label_names))
  outputs.writer.scalars(best['step'], {f'test/{k}': v for k, v in test_scores.items() if k != 'confusion'})
  outputs.close()
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
                               feature_stats={m: s.to_json() for m, s in stats.items()},
                               # How the training data's frames were made: predict makes a new clip's the same way.
                               extractors={'visual': dataset.visual_extractor, 'acoustic': dataset.acoustic_extractor})
  if jax.process_index() == 0:
    evaluation.plot_confusion(np.array(test_scores['confusion']), label_names, os.path.join(workdir, 'confusion.png'),
                              f'{settings.mode}, fold {settings.fold}: test UA {100 * test_scores["ua"]:.1f}')
  setup.write_config(workdir, config)
  setup.write_json(os.path.join(workdir, SPLITS_FILE), {name: [u.id for u in members] for name, members in parts.items()})
  # Written last: a sweep treats a workdir with results.json as finished.
  setup.write_json(os.path.join(workdir, RESULTS_FILE), results)
  return results
