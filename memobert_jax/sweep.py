"""Sweeps: pretraining variants x finetuning axes, each run in its own workdir, one results table.

  python -m memobert_jax.sweep --sweep configs/sweeps/ablation.py:demo --workdir runs/ablation [--slice 2/4]

A sweep file's get_config(arg) returns:
  pretrain   (optional) config: 'configs/pretrain.py:...', overrides: {key: value},
             variants: {name: {key: value}}  one pretraining run per variant; the key
             'init_from': another (earlier) variant starts this one from that one's export
  finetune   config: 'configs/finetune.py:...', overrides: {key: value},
             axes: {key: [values]}  every combination is a run; a key of the config file's
             argument (mode, fold, seed, fraction, template, train, eval...) or a dotted
             override key; variants (optional): a list of {key: value} settings, each
             crossed with the axes (a variant's 'pretrain' entry lists the pretraining
             sources it runs on); init: 'pretrain' (each variant's export, default),
             'none' (the finetune config's own init.checkpoint), or both
  group_by   table rows: axis names, plus 'pretrain' for the variant; the mean and standard
             deviation are taken over the other axes (folds, seeds)
Runs whose results exist are skipped, so a sweep can be re-run or extended; `--slice k/n`
takes every n-th run starting at the k-th (1-based) so several jobs can share a sweep. A
finetuning run waits (is skipped) until its pretraining variant has finished.
"""

import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import ConfigDict

from memobert_jax import config_utils, evaluation
from memobert_jax.training import finetuning, pretraining, workdir

_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file (and :argument).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder holding one sub-folder per run and the tables.')
_SLICE = flags.DEFINE_string('slice', '1/1', 'k/n: run every n-th run starting at the k-th.')
_COLLECT_ONLY = flags.DEFINE_bool('collect_only', False, 'Only collect finished runs into the tables.')

METRICS = ('wa', 'ua', 'macro_f1')
NO_PRETRAINING = 'none'
EXPORT_MARKER = os.path.join('export', 'memobert_init.json')


@dataclasses.dataclass(frozen=True)
class Run:
  kind: str  # 'pretrain' or 'finetune'
  name: str  # relative workdir
  spec: str  # config file and argument string
  overrides: dict
  fields: dict  # what the table shows of this run
  needs: str | None = None  # the pretraining run whose export this run starts from (its init.checkpoint)

  def finished(self, root: str) -> bool:
    marker = EXPORT_MARKER if self.kind == 'pretrain' else finetuning.RESULTS_FILE
    return os.path.exists(os.path.join(root, self.name, marker))


def _value_name(value) -> str:
  return ','.join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def plan(sweep: ConfigDict) -> list[Run]:
  """Every run of the sweep, pretraining first. A run's table fields hold every group_by key (a config
  argument a run does not set shows its default)."""
  runs: list[Run] = []
  pretraining = {}
  if 'pretrain' in sweep:
    pending = dict(sweep.pretrain.variants.items())
    while pending:
      # A variant that starts from another comes after it (config dicts keep no order of their own).
      ready = [v for v, settings in pending.items() if settings.get('init_from', v) in pretraining or
               'init_from' not in settings]
      if not ready:
        raise ValueError(f'pretraining variants {sorted(pending)} start from variants that do not exist or from '
                         f'each other (init_from)')
      for variant in ready:
        overrides = {**sweep.pretrain.get('overrides', {}), **pending.pop(variant)}
        needs = None
        if 'init_from' in overrides:
          needs = pretraining[overrides.pop('init_from')].name
        pretraining[variant] = Run('pretrain', f'pretrain/{variant}', sweep.pretrain.config, overrides,
                                   {'pretrain': variant}, needs)
        runs.append(pretraining[variant])
  finetune = sweep.finetune
  arguments = config_utils.load_module(finetune.config.partition(':')[0]).ARGUMENTS
  given = finetune.config.partition(':')[2].split(',')
  base_arguments = dict(item.split('=', 1) for item in given if '=' in item)
  defaults = {k: base_arguments.get(k, arguments[k]) for k in sweep.group_by if k in arguments}
  axes = list(finetune.axes.items())
  inits = list(finetune.get('init', ('pretrain',)))
  sources = ([NO_PRETRAINING] if 'none' in inits else []) + (list(pretraining) if 'pretrain' in inits else [])
  variants = [dict(v) for v in finetune.get('variants', [{}])]
  for source in sources:
    for variant, combination in itertools.product(variants, itertools.product(*(values for _, values in axes))):
      if source not in variant.get('pretrain', sources):
        continue
      settings = {k: v for k, v in variant.items() if k != 'pretrain'}
      chosen = {**settings, **dict(zip((k for k, _ in axes), combination))}
      spec = finetune.config + ''.join(f',{k}={_value_name(v)}' for k, v in chosen.items() if k in arguments)
      overrides = {**finetune.get('overrides', {}), **{k: v for k, v in chosen.items() if k not in arguments}}
      needs = None
      if source != NO_PRETRAINING:
        needs = pretraining[source].name
      name = 'finetune/' + source + '/' + '/'.join(f'{k}={_value_name(v)}' for k, v in chosen.items())
      runs.append(Run('finetune', name, spec, overrides, {**defaults, 'pretrain': source, **chosen}, needs))
  return runs


def build_config(run: Run, root: str) -> ConfigDict:
  """The run's config: its file and argument, its overrides, and the export of the run it starts from."""
  overrides = dict(run.overrides)
  if run.needs:
    overrides['init.checkpoint'] = os.path.join(root, run.needs, 'export')
  return config_utils.apply_overrides(config_utils.load_config(run.spec), overrides)


def execute(run: Run, root: str) -> None:
  config = build_config(run, root)
  workdir = os.path.join(root, run.name)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'provenance.json'), 'w') as f:
    json.dump({'run': dataclasses.asdict(run), 'git_revision': config_utils.git_revision(),
               'command': sys.argv}, f, indent=2)
  if run.kind == 'pretrain':
    pretraining.pretrain(config, workdir)
  else:
    finetuning.finetune(config, workdir)


def check_finished_runs(runs: Sequence[Run], root: str) -> None:
  """Refuses to skip a finished run that was made with other settings than the sweep now plans."""
  changed = []
  for run in runs:
    recorded = workdir.read_run(os.path.join(root, run.name)) if run.finished(root) else None
    changes = workdir.config_changes(recorded['config'], build_config(run, root)) if recorded else {}
    if changes:
      changed.append(f'  {run.name}: {workdir.describe(changes)}')
  if changed:
    raise ValueError(f'{len(changed)} finished runs in {root} were made with other settings than this sweep:\n'
                     + '\n'.join(changed) + '\nGive another --workdir, or delete those run folders to redo them.')


def finished_rows(runs: Sequence[Run], root: str) -> list[dict]:
  """One row per finished finetuning run: its table fields, its workdir (relative to root) and its test and
  validation metrics."""
  rows = []
  for run in runs:
    if run.kind == 'finetune' and run.finished(root):
      with open(os.path.join(root, run.name, finetuning.RESULTS_FILE)) as f:
        results = json.load(f)
      rows.append({**{k: _value_name(v) for k, v in run.fields.items()}, 'workdir': run.name,
                   **{m: results['test'][m] for m in METRICS}, **{f'valid_{m}': results['valid'][m] for m in METRICS}})
  return rows


def collect(runs: Sequence[Run], root: str, group_by: Sequence[str]) -> list[dict]:
  """Finished finetuning runs -> rows; writes results.md and results.csv (mean ± std per group) into root."""
  rows = finished_rows(runs, root)
  table = evaluation.aggregate(rows, group_by, METRICS)
  with open(os.path.join(root, 'results.md'), 'w') as f:
    f.write('Test metrics (%) of the validation-selected model, mean ± std over the runs of each row.\n\n')
    f.write(evaluation.markdown_table(table, group_by, METRICS))
  with open(os.path.join(root, 'results.csv'), 'w') as f:
    f.write(evaluation.csv_table(table))
  with open(os.path.join(root, 'runs.csv'), 'w') as f:
    f.write(evaluation.csv_table(rows))
  return table


def run_sweep(sweep: ConfigDict, root: str, *, part: int = 1, parts: int = 1, collect_only: bool = False) -> list[dict]:
  """Runs this job's share of the sweep's unfinished runs, then collects the table."""
  root = os.path.abspath(root)
  runs = plan(sweep)
  if not collect_only:
    mine = runs[part - 1::parts]
    check_finished_runs(mine, root)
    for index, run in enumerate(mine, 1):
      if run.finished(root):
        print(f'[{index}/{len(mine)}] {run.name}: finished earlier, skipped')
      elif run.needs and not os.path.exists(os.path.join(root, run.needs, EXPORT_MARKER)):
        print(f'[{index}/{len(mine)}] {run.name}: waits for {run.needs}, skipped (re-run the sweep later)')
      else:
        print(f'[{index}/{len(mine)}] {run.name}')
        execute(run, root)
  return collect(runs, root, sweep.group_by)


def _slice(text: str) -> tuple[int, int]:
  """--slice 'k/n' -> (k, n)."""
  part, slash, parts = text.partition('/')
  if not (slash and part.isdigit() and parts.isdigit() and 1 <= int(part) <= int(parts)):
    raise app.UsageError(f'--slice {text!r} is not k/n with 1 <= k <= n')
  return int(part), int(parts)


def main(argv):
  config_utils.refuse_extra_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  part, parts = _slice(_SLICE.value)
  sweep = config_utils.load_config_or_exit('sweep', _SWEEP.value)
  table = run_sweep(sweep, _WORKDIR.value, part=part, parts=parts, collect_only=_COLLECT_ONLY.value)
  print(evaluation.markdown_table(table, sweep.group_by, METRICS))
  print(f'tables: {os.path.join(os.path.abspath(_WORKDIR.value), "results.md")} and results.csv')


if __name__ == '__main__':
  flags.mark_flags_as_required(['sweep', 'workdir'])
  app.run(main)
