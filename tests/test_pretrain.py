"""The pretraining loop end to end: mesh independence, exact resume after SIGKILL, resharding restore, metrics."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import pretrain
from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.training import checkpointing, loop, metrics
from tests import corpus_helpers

pytestmark = pytest.mark.slow
STEPS = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('corpus'))
  shards = corpus_helpers.write_corpus(directory, 160, num_shards=4,
                                       split_of=lambda i: 'valid' if i % 10 == 0 else 'train')
  return shards, corpus_helpers.write_vocab(directory)


def overrides(shards: str, vocab: str, mesh: tuple[int, int, int], per_device_batch: int) -> dict:
  """A tiny run with one shape per modality (few compilations), checkpoints every 2 steps, metrics every step."""
  vocab_size = tokenizer_lib.load_tokenizer('wordpiece', vocab).vocab_size
  return {
      'data.train': shards, 'data.valid': '', 'data.tokenizer.path': vocab,
      'data.text_buckets': (32,), 'data.visual_buckets': (36,), 'data.acoustic_buckets': (64,),
      'model.visual_dim': 12, 'model.acoustic_dim': 10, 'model.vocab_size': vocab_size,
      'mesh.shape': mesh, 'batch_size': 16, 'per_device_batch': per_device_batch,
      'checkpoint.every_steps': 2, 'checkpoint.keep': 10, 'checkpoint.async_save': True, 'log_every_steps': 1,
      'optim.warmup_steps': 2,
  }


def make_config(values: dict, steps: int = STEPS):
  config = pretrain.get_config(f'tiny,mesh=cpu,steps={steps}')
  for key, value in values.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def losses(workdir: str) -> dict[int, float]:
  return metrics.read_scalars(os.path.join(workdir, 'tensorboard'))['loss']


def final_params(workdir: str) -> tuple[dict, dict]:
  """The last checkpoint's parameters and data-iterator state (grain writes one JSON file per process)."""
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state',))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  with open(os.path.join(workdir, 'checkpoints', str(step), 'data', 'process_0-of-1.json')) as f:
    return restored.state['params'], json.loads(f.read())


@pytest.fixture(scope='module')
def reference(corpus, tmp_path_factory):
  """One run on the (data=4, fsdp=2) mesh, with validation, that several tests compare against."""
  shards, vocab = corpus
  workdir = str(tmp_path_factory.mktemp('reference'))
  values = overrides(shards, vocab, (4, 2, 1), 2)
  values.update({'data.valid': shards, 'eval_every_steps': 4, 'eval_batches': 1})
  final = loop.pretrain(make_config(values), workdir)
  return workdir, final


def test_one_device_and_eight_devices_give_the_same_losses(corpus, reference, tmp_path):
  shards, vocab = corpus
  eight_dir, eight = reference
  one = loop.pretrain(make_config(overrides(shards, vocab, (1, 1, 1), 16)), str(tmp_path / 'one'))
  one_losses, eight_losses = losses(str(tmp_path / 'one')), losses(eight_dir)
  assert sorted(one_losses) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([eight_losses[s] for s in one_losses], list(one_losses.values()), atol=1e-5, rtol=0)
  assert one['data/examples_seen'] == eight['data/examples_seen'] == STEPS * 16


def test_event_files_hold_the_training_metrics(reference):
  scalars = metrics.read_scalars(os.path.join(reference[0], 'tensorboard'))
  for tag in ('loss', 'learning_rate', 'grad_norm', 'examples_per_second', 'tokens_per_second', 'valid_loss',
              'valid/mlm', 'valid/visual_regression', 'valid/visual_kl', 'valid/acoustic_regression'):
    assert tag in scalars, tag
  assert set(scalars['valid_loss']) == {4, 8}
  per_task = [t for t in scalars if t.endswith('/loss')]
  assert per_task and all(np.isfinite(list(scalars[t].values())).all() for t in per_task)
  # Warm-up then linear decay to zero.
  learning_rate = scalars['learning_rate']
  assert learning_rate[1] == 0.0 and max(learning_rate.values()) > learning_rate[STEPS] > 0


def resume_copy(reference_dir: str, workdir: str, keep_up_to: int) -> None:
  """A copy of the reference workdir as it was after `keep_up_to` steps (later checkpoints and logs removed)."""
  shutil.copytree(reference_dir, workdir, ignore=shutil.ignore_patterns('events.out.*', 'export'))
  for step in range(keep_up_to + 1, STEPS + 1):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)), ignore_errors=True)


def test_checkpoint_from_one_mesh_restores_onto_others_and_training_continues_identically(corpus, reference,
                                                                                         tmp_path):
  shards, vocab = corpus
  expected = losses(reference[0])
  for name, mesh, per_device in (('data8', (8, 1, 1), 2), ('single', (1, 1, 1), 16)):
    workdir = str(tmp_path / name)
    resume_copy(reference[0], workdir, 4)
    loop.pretrain(make_config(overrides(shards, vocab, mesh, per_device)), workdir)
    resumed = losses(workdir)
    assert sorted(resumed) == list(range(5, STEPS + 1)), name
    np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed], atol=1e-5, rtol=0,
                               err_msg=name)


def test_an_interrupted_checkpoint_write_is_never_taken_as_the_latest(corpus, reference, tmp_path):
  shards, vocab = corpus
  workdir = str(tmp_path / 'crashed')
  resume_copy(reference[0], workdir, 5)
  directory = os.path.join(workdir, 'checkpoints')
  # What a crash during the write of step 6 leaves: its temporary folder, partly written.
  partial = os.path.join(directory, f'6{ocp.path.atomicity.TMP_DIR_SUFFIX}-1700000000')
  shutil.copytree(os.path.join(reference[0], 'checkpoints', '6'), partial)
  shutil.rmtree(os.path.join(partial, 'state'))
  assert checkpointing.Checkpointer(directory, every_steps=2, keep=10).latest_step() == 4
  loop.pretrain(make_config(overrides(shards, vocab, (4, 2, 1), 2)), workdir)
  resumed, expected = losses(workdir), losses(reference[0])
  assert sorted(resumed) == [5, 6, 7, 8]
  np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed], atol=1e-6, rtol=0)


def test_a_workdir_of_another_model_config_is_refused(corpus, tmp_path):
  shards, vocab = corpus
  values = overrides(shards, vocab, (1, 1, 1), 16)
  loop.pretrain(make_config(values, steps=2), str(tmp_path))
  values['model.num_layers'] = 3
  with pytest.raises(ValueError, match='different model config.*num_layers: saved 2, now 3'):
    loop.pretrain(make_config(values, steps=4), str(tmp_path))


def run_command(values: dict, workdir: str, steps: int) -> list[str]:
  args = [sys.executable, '-m', 'memobert_jax.train', f'--config={ROOT}/configs/pretrain.py:tiny,mesh=cpu,steps={steps}',
          f'--workdir={workdir}']
  for key, value in values.items():
    text = ','.join(map(str, value)) if isinstance(value, tuple) else value
    args.append(f'--config.{key}={text}' if not isinstance(value, tuple) else f'--config.{key}=({text},)')
  return args


def subprocess_env() -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # one real CPU device, like a debug run
  return env


def test_sigkill_and_restart_reproduce_the_uninterrupted_run_exactly(corpus, tmp_path):
  shards, vocab = corpus
  steps = 20
  values = overrides(shards, vocab, (1, 1, 1), 16)
  values['checkpoint.every_steps'] = 1
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  subprocess.run(run_command(values, straight, steps), env=subprocess_env(), check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  process = subprocess.Popen(run_command(values, interrupted, steps), env=subprocess_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  checkpoints = os.path.join(interrupted, 'checkpoints')
  while time.time() < deadline and process.poll() is None:
    done = [int(d) for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
    if done and max(done) >= 10:
      break
    time.sleep(0.05)
  assert process.poll() is None, 'the run ended before it could be killed'
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  assert 10 <= killed_at < steps
  subprocess.run(run_command(values, interrupted, steps), env=subprocess_env(), check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  expected, resumed = losses(straight), losses(interrupted)
  assert sorted(resumed) == list(range(1, steps + 1))
  assert [resumed[s] for s in sorted(resumed)] == [expected[s] for s in sorted(expected)]
  straight_params, straight_data = final_params(straight)
  resumed_params, resumed_data = final_params(interrupted)
  assert jax.tree.all(jax.tree.map(np.array_equal, straight_params, resumed_params))
  # Same examples in the same order: none skipped, none seen twice.
  assert resumed_data['ids_digest'] == straight_data['ids_digest']
  assert resumed_data['examples_seen'] == straight_data['examples_seen'] == steps * 16


def test_two_processes_train_together_like_two_hosts(corpus, tmp_path):
  """Multi-host as on a pod: jax.distributed joins two processes of one CPU device each; every process
  reads its own shards and contributes its share of each global batch."""
  shards, vocab = corpus
  steps = 4
  values = overrides(shards, vocab, (-1, 1, 1), 8)
  workdir = str(tmp_path / 'two_hosts')
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    port = probe.getsockname()[1]
  processes = []
  for index in range(2):
    env = dict(subprocess_env(), JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(index))
    processes.append(subprocess.Popen(run_command(values, workdir, steps), env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  for process in processes:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]
  assert sorted(losses(workdir)) == list(range(1, steps + 1))
  assert np.isfinite(list(losses(workdir).values())).all()
  data = os.path.join(workdir, 'checkpoints', str(steps), 'data')
  states = [json.load(open(os.path.join(data, f'process_{i}-of-2.json'))) for i in range(2)]
  # Each process consumed its half of every global batch of 16, from its own shards.
  assert [s['examples_seen'] for s in states] == [steps * 8, steps * 8]
  assert states[0]['ids_digest'] != states[1]['ids_digest']
