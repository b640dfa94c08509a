"""Ahead-of-time compile checks: batch shapes, mesh presets, the CPU path and (with libtpu) TPU topologies."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from configs import common, finetune, pretrain
from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax import sharding
from memobert_jax.data import corruption, examples as examples_lib, finetuning_data
from memobert_jax.training import aot, setup, topology
from tests import corpus_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Chips (JAX devices) and host VMs of each TPU preset's slice, from the Cloud TPU docs.
TPU_SLICES = {'v4-8': (4, 1), 'v5p-8': (4, 1), 'v5e-8': (8, 1), 'v6e-8': (8, 1), 'v4-32': (16, 4),
              'v5e-16': (16, 4), 'v5e-256': (256, 64)}
# The persistent compilation cache (conftest) stores compile-only TPU executables but cannot load them back
# without a TPU client: jax warns and compiles again.
pytestmark = pytest.mark.filterwarnings('ignore:Error reading persistent compilation cache')
needs_libtpu = pytest.mark.skipif(not topology.libtpu_available(),
                                  reason='libtpu is not installed (pip install -r requirements-tpu.txt): '
                                  'no TPU topology to compile for')


def tiny(module, arg: str, **overrides):
  config = module.get_config(arg)
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  return tokenizer_lib.load_tokenizer('wordpiece', corpus_helpers.write_vocab(str(tmp_path_factory.mktemp('vocab'))))


def assert_same_layout(spec: dict, batch: dict):
  assert sorted(spec) == sorted(batch)
  for key, value in batch.items():
    assert (spec[key].shape, spec[key].dtype) == (value.shape, value.dtype), key


@pytest.mark.parametrize('task', ['mlm', 'visual_regression', 'visual_kl', 'acoustic_regression'])
def test_pretraining_batch_spec_matches_the_pipeline(task, tokenizer):
  config = tiny(pretrain, 'tiny,mesh=cpu')
  data = config.data
  words = data.max_text_tokens
  ids = np.array([tokenizer.cls_id] + [tokenizer.token_to_id('happy')] * words + [tokenizer.sep_id], np.int32)
  longest = examples_lib.Prepared(
      id='u', ids=ids, word_ids=np.array([-1, *range(words), -1]), label=0, speaker='s', session='1',
      visual=np.ones((data.max_visual_frames, config.model.visual_dim), np.float32),
      soft_labels=np.full((data.max_visual_frames, 8), 1 / 8, np.float32),
      acoustic=np.ones((data.max_acoustic_frames, config.model.acoustic_dim), np.float32))
  batch = corruption.BatchBuilder(config, tokenizer).build(task, [longest] * 6, 2, np.random.default_rng(0))
  assert_same_layout(aot.batch_spec(config, task, 2, 3), batch)


@pytest.mark.parametrize('mode, prompt_loss', [('prompt', 'vocabulary'), ('prompt', 'label_words'),
                                               ('cls', 'vocabulary')])
def test_finetuning_batch_spec_matches_the_batcher(mode, prompt_loss, tokenizer):
  config = tiny(finetune, f'{mode},model=tiny,mesh=cpu')
  config.finetune.prompt_loss = prompt_loss
  utterance = finetuning_data.Utterance(
      id='u', words=((tokenizer.token_to_id('happy'),),) * 200, label=1, speaker='s', session='1', split='train',
      visual=np.ones((config.data.max_visual_frames, config.model.visual_dim), np.float32),
      acoustic=np.ones((config.data.max_acoustic_frames, config.model.acoustic_dim), np.float32))
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, corpus_helpers.LABELS)
  batch = batcher.batch([(utterance, 'LVA')] * 4, 4)
  assert_same_layout(aot.batch_spec(config, aot.default_tasks(config)[0], 1, 4), batch)


@pytest.mark.parametrize('preset', sorted(TPU_SLICES))
def test_tpu_presets_split_their_batches_over_the_slice(preset):
  chips = TPU_SLICES[preset][0]
  for module, arg in ((pretrain, f'base,mesh={preset}'), (finetune, f'prompt,mesh={preset}')):
    config = module.get_config(arg)
    shape = [chips // int(np.prod([s for s in config.mesh.shape if s != -1])) if s == -1 else s
             for s in config.mesh.shape]
    mesh = AbstractMesh(tuple(shape), tuple(config.mesh.axes))
    if module is pretrain:
      micro_batches, micro_size = setup.step_batching(config, mesh)
      assert micro_size == config.per_device_batch * sharding.data_parallel_size(mesh, config.logical_axis_rules)
    else:
      assert config.batch_size % sharding.data_parallel_size(mesh, config.logical_axis_rules) == 0
      assert config.finetune.eval_batch_size % sharding.data_parallel_size(mesh, config.logical_axis_rules) == 0
    assert config.model.dtype == 'bfloat16'


@needs_libtpu
@pytest.mark.parametrize('preset', sorted(TPU_SLICES))
def test_tpu_preset_topologies_have_one_device_per_chip(preset):
  devices = topology.topology_devices(common.mesh_preset(preset))
  assert (len(devices), len({d.process_index for d in devices})) == TPU_SLICES[preset]
  assert topology.chip_of(devices[0]) is not None


def test_topology_without_libtpu_names_the_fix(monkeypatch):
  monkeypatch.setattr(topology, 'libtpu_available', lambda: False)
  with pytest.raises(RuntimeError, match='requirements-tpu.txt'):
    topology.topology_devices(common.mesh_preset('v5e-16'))
  with pytest.raises(ValueError, match='--local'):
    topology.topology_devices(common.mesh_preset('gpu'))


def test_collective_bytes_count_loop_bodies_once_per_trip():
  hlo = '\n'.join([
      '%body.1 (p: (s32[], f32[8])) -> (s32[], f32[8]) {',
      '  %all-reduce.1 = (bf16[4,8]{1,0}, f32[2]{0}) all-reduce(%a, %b), replica_groups={}, to_apply=%add',
      '}',
      'ENTRY %main.2 (q: f32[8]) -> f32[16] {',
      '  %while.1 = (s32[], f32[8]) while(%t), condition=%cond.1, body=%body.1',
      '  %all-gather-start.1 = (f32[8]{0}, f32[16]{0}) all-gather-start(%x), dimensions={0}',
      '  ROOT %all-gather-done.1 = f32[16]{0} all-gather-done(%all-gather-start.1)',
      '}',
  ])
  assert aot.collective_bytes(hlo, loop_trips=3) == {'all-reduce': 3 * (4 * 8 * 2 + 2 * 4), 'all-gather': 16 * 4}


def check_report(report: aot.Report):
  memory = report.memory
  # Scratch and code sizes can be 0 (a tiny step's scratch kept out of TPU HBM; CPU code is not counted).
  assert memory['arguments'] > 0 and memory['outputs'] > 0
  assert min(memory.values()) >= 0 and report.total_bytes > memory['arguments']
  assert report.flops > 0
  assert report.collective_bytes.get('all-reduce', 0) > 0  # data-parallel gradients


def test_cpu_compile_reports_memory_and_flops():
  config = tiny(pretrain, 'tiny,mesh=cpu', batch_size=32, per_device_batch=2)
  report = aot.compile_step(config, 'mlm', jax.devices())
  check_report(report)
  assert (report.micro_batches, report.batch_size, report.mesh['data']) == (2, 32, 8)
  assert report.chip is None and report.fits is None and report.estimate(0.4) is None


@pytest.fixture(scope='module')
def tpu_reports():
  """The tiny pretraining MLM step and the prompt finetuning step, compiled for a 2x2 v5e slice."""
  if not topology.libtpu_available():
    pytest.skip('libtpu is not installed (pip install -r requirements-tpu.txt): no TPU topology to compile for')
  reports = {}
  for module, arg, task in ((pretrain, 'tiny,mesh=v5e-8', 'mlm'), (finetune, 'prompt,model=tiny,mesh=v5e-8', 'prompt')):
    config = tiny(module, arg, batch_size=16, per_device_batch=4)
    config.mesh.update(topology='v5e:2x2', chips_per_host=())
    reports[task] = (config, aot.compile_step(config, task, topology.topology_devices(config.mesh)))
  return reports


@pytest.mark.parametrize('task', ['mlm', 'prompt'])
def test_tpu_compile_reports_memory_flops_and_an_estimate(task, tpu_reports):
  config, report = tpu_reports[task]
  check_report(report)
  assert report.devices == '4 x TPU v5 lite on 1 host' and report.chip.name == 'v5e'
  assert report.fits
  estimate = report.estimate(0.5)
  assert 0 < estimate['mfu'] <= 0.5 and estimate['step_s'] > 0
  assert 'fits: yes' in aot.format_report(report, config, 0.5)


def test_a_step_larger_than_the_chip_is_refused_with_what_to_change(tpu_reports):
  config, report = tpu_reports['mlm']
  small = dataclasses.replace(report, chip=dataclasses.replace(report.chip, hbm_bytes=report.total_bytes - 1))
  assert small.fits is False
  text = aot.format_report(small, config, 0.4)
  assert 'fits: NO' in text and 'per_device_batch' in text and 'remat' in text and 'fsdp' in text


def test_command_line_compiles_for_the_local_devices(tmp_path):
  out = tmp_path / 'report.json'
  result = subprocess.run(
      [sys.executable, '-m', 'memobert_jax.aot_compile', f'--config={ROOT}/configs/pretrain.py:tiny,mesh=cpu',
       '--config.batch_size=16', '--config.per_device_batch=2', '--task=acoustic_regression', '--local',
       f'--json={out}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'task acoustic_regression' in result.stdout and 'FLOPs per device per step' in result.stdout
  (report,) = json.loads(out.read_text())
  assert report['task'] == 'acoustic_regression' and report['flops'] > 0 and report['fits'] is None


def test_cpu_compile_of_the_cls_finetuning_step():
  config = tiny(finetune, 'cls,model=tiny,mesh=cpu', batch_size=8)
  report = aot.compile_step(config, 'cls', jax.devices())
  check_report(report)
  assert (report.micro_batches, report.batch_size) == (1, 8)


@needs_libtpu
def test_command_line_exits_non_zero_when_the_tpu_compiler_runs_out_of_memory():
  # 60000 examples of 64 acoustic frames per chip: far beyond a v5e's 16 GiB; the TPU compiler refuses at once.
  result = subprocess.run(
      [sys.executable, '-m', 'memobert_jax.aot_compile', f'--config={ROOT}/configs/pretrain.py:tiny,mesh=v5e-8',
       '--config.batch_size=480000', '--config.per_device_batch=60000', '--task=acoustic_regression'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert 'does not fit' in result.stderr and 'RESOURCE_EXHAUSTED' in result.stderr
  assert 'per_device_batch' in result.stderr and 'remat' in result.stderr
