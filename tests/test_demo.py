"""The demo end to end at a reduced size, and a two-axis sweep over its data (task set x template)."""

import json
import math
import os
import sys

import jax
import pytest

from memobert_jax import config_utils, sweep
from memobert_jax.training import setup

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import demo  # noqa: E402  (scripts/ is not a package)

# Large enough for one pretraining validation batch (64) and a 10 % training set of one batch (32).
SMALL = dict(num_labelled=700, num_unlabelled=120, workers=1)


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('demo'))
  demo.prepare_data(workdir, **SMALL)
  return workdir


def test_demo_runs_end_to_end_and_prints_the_results_table(demo_dir, capsys):
  demo.main(['--workdir', demo_dir, '--num_labelled', str(SMALL['num_labelled']), '--num_unlabelled',
             str(SMALL['num_unlabelled']), '--pretrain_steps', '3', '--finetune_steps', '4', '--seeds', '1',
             '--workers', '1'])
  printed = capsys.readouterr().out
  assert 'Results on the demo test speaker' in printed and 'results.md' in printed
  # Each of the three claims finds its two rows; one seed gives no verdict.
  claims = [line for line in printed.splitlines() if 'no verdict' in line]
  assert len(claims) == 3 and all('1 run(s), at least 3 needed' in line for line in claims), printed
  runs = os.path.join(demo_dir, 'runs')
  experiments = config_utils.load_config(f'{ROOT}/configs/sweeps/demo.py:data={demo_dir},seeds=1')
  planned = sweep.plan(experiments)
  assert all(run.finished(runs) for run in planned)
  table = [line for line in open(os.path.join(runs, 'results.md')) if line.startswith('| ')][1:]  # no header
  assert len(table) == sum(run.kind == 'finetune' for run in planned)  # one seed: one row per setting
  for run in planned:
    if run.kind == 'finetune':
      for name in ('results.json', 'confusion.png', 'best/memobert_init.json'):
        assert os.path.exists(os.path.join(runs, run.name, name)), (run.name, name)
  assert os.listdir(os.path.join(runs, 'pretrain', 'multimodal', 'tensorboard'))


def test_a_job_keeps_the_compilation_cache_its_caller_set(tmp_path):
  """demo.main in a test session (or under JAX_COMPILATION_CACHE_DIR) must not move the caller's cache."""
  session_cache = jax.config.jax_compilation_cache_dir
  assert session_cache  # conftest sets one
  setup.use_compilation_cache(str(tmp_path / 'demo_cache'))
  assert jax.config.jax_compilation_cache_dir == session_cache
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    setup.use_compilation_cache(str(tmp_path / 'demo_cache'))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'demo_cache')
  finally:
    jax.config.update('jax_compilation_cache_dir', session_cache)


def test_the_default_demo_runs_three_seeds_of_the_claims_rows_and_full_adds_the_papers_other_rows(tmp_path):
  plan = lambda arg: [r for r in sweep.plan(config_utils.load_config(  # noqa: E731
      f'{ROOT}/configs/sweeps/demo.py:data={tmp_path}{arg}')) if r.kind == 'finetune']
  default, full = plan(''), plan(',full=True')
  # prompt from both pretrainings, prompt L, prompt and [CLS] at 10 %: five rows, three seeds each.
  assert len(default) == 5 * 3 and {r.fields['seed'] for r in default} == {0, 1, 2}
  rows = {(r.fields['pretrain'], r.fields['mode'], r.fields.get('train', 'LVA'), r.fields.get('fraction', 1.0))
          for r in default}
  claims = demo.paper_claims([dict(zip(('pretrain', 'mode', 'train', 'fraction'), map(str, row))) for row in rows],
                             ('pretrain', 'mode', 'train', 'fraction'))
  assert all(a is not None and b is not None for _, a, b, _ in claims)
  assert len(full) == 10 * 3 and {r.name for r in default} < {r.name for r in full}


def test_two_axis_sweep_gives_one_row_per_variant_and_does_not_redo_finished_runs(demo_dir, tmp_path):
  sweep_file = tmp_path / 'two_axes.py'
  sweep_file.write_text(f'''
import ml_collections
from configs.sweeps import demo

def get_config(arg=None):
  experiments = demo.get_config('data={demo_dir},pretrain_steps=2,finetune_steps=3')
  experiments.pretrain.variants = ml_collections.ConfigDict(allow_dotted_keys=True, initial_dictionary={{
      'all_tasks': {{}}, 'mlm_only': {{'tasks.weights.visual_regression': 0.0, 'tasks.weights.visual_kl': 0.0,
                                      'tasks.weights.acoustic_regression': 0.0}}}})
  experiments.finetune.variants = [{{}}]
  experiments.finetune.axes = {{'template': ['i_am', 'it_was'], 'seed': [0]}}
  experiments.group_by = ('pretrain', 'template')
  return experiments
''')
  experiments = config_utils.load_config(str(sweep_file))
  root = str(tmp_path / 'runs')
  table = sweep.run_sweep(experiments, root)
  assert [(row['pretrain'], row['template']) for row in table] == [
      ('all_tasks', 'i_am'), ('all_tasks', 'it_was'), ('mlm_only', 'i_am'), ('mlm_only', 'it_was')]
  for row in table:
    assert row['runs'] == 1
    assert all(math.isfinite(row[f'{m}_mean']) for m in sweep.METRICS)
  for run in sweep.plan(experiments):
    with open(os.path.join(root, run.name, 'provenance.json')) as f:
      assert json.load(f)['git_revision']
  results = {run.name: os.path.getmtime(os.path.join(root, run.name, 'provenance.json'))
             for run in sweep.plan(experiments)}
  assert sweep.run_sweep(experiments, root) == table
  assert results == {run.name: os.path.getmtime(os.path.join(root, run.name, 'provenance.json'))
                     for run in sweep.plan(experiments)}
  # The same sweep with longer finetuning must not pass the shorter runs off as its own.
  longer = tmp_path / 'two_axes_longer.py'
  longer.write_text(sweep_file.read_text().replace('finetune_steps=3', 'finetune_steps=5'))
  with pytest.raises(ValueError, match=r'4 finished runs .* other settings(.|\n)*optim.total_steps: 3 -> 5'):
    sweep.run_sweep(config_utils.load_config(str(longer)), root)


def test_ablation_sweep_plans_each_variant_after_its_start_and_every_override_names_a_config_key(tmp_path):
  experiments = config_utils.load_config(f'{ROOT}/configs/sweeps/ablation.py:data={tmp_path}')
  planned = sweep.plan(experiments)
  pretraining = [run for run in planned if run.kind == 'pretrain']
  assert pretraining[0].name == 'pretrain/text_only' and pretraining[0].needs is None
  assert len(pretraining) == 9 and all(run.needs == 'pretrain/text_only' for run in pretraining[1:])
  finetuning = [run for run in planned if run.kind == 'finetune']
  # Nine pretrained models and none, each with all labels and 10 %; templates and modality subsets on 'all'.
  assert len(finetuning) == 10 * 2 + 5
  assert {run.fields['pretrain'] for run in finetuning} == {'none'} | {run.name.split('/')[1] for run in pretraining}
  for run in planned:  # apply_overrides refuses a key the config does not have
    sweep.build_config(run, str(tmp_path))
