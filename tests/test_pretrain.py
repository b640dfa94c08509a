"""The pretraining loop end to end: mesh independence, exact resume after SIGKILL, resharding restore, metrics."""

import json
import os
import re
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

from configs import finetune as finetune_config
from configs import pretrain
from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.training import checkpointing, finetuning, metrics, pretraining, workdir as workdir_lib
from tests import corpus_helpers, process_helpers

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
      'optim.warmup_steps': 2, 'peak_flops_per_device': 1e11,
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


def final_state(workdir: str) -> tuple[dict, dict]:
  """The last checkpoint's train state (parameters, optimizer, step) and data-iterator state (grain writes one
  JSON file per process)."""
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state',))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  with open(os.path.join(workdir, 'checkpoints', str(step), 'data', 'process_0-of-1.json')) as f:
    return restored.state, json.loads(f.read())


@pytest.fixture(scope='module')
def reference(corpus, tmp_path_factory):
  """One run on the (data=4, fsdp=2) mesh, with validation, that several tests compare against."""
  shards, vocab = corpus
  workdir = str(tmp_path_factory.mktemp('reference'))
  values = overrides(shards, vocab, (4, 2, 1), 2)
  values.update({'data.valid': shards, 'eval_every_steps': 4, 'eval_batches': 1})
  final = pretraining.pretrain(make_config(values), workdir)
  return workdir, final


def test_one_device_and_eight_devices_give_the_same_losses(corpus, reference, tmp_path):
  shards, vocab = corpus
  eight_dir, eight = reference
  one = pretraining.pretrain(make_config(overrides(shards, vocab, (1, 1, 1), 16)), str(tmp_path / 'one'))
  one_losses, eight_losses = losses(str(tmp_path / 'one')), losses(eight_dir)
  assert sorted(one_losses) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([eight_losses[s] for s in one_losses], list(one_losses.values()), atol=1e-5, rtol=0)
  assert one['data/examples_seen'] == eight['data/examples_seen'] == STEPS * 16


def test_event_files_hold_the_training_metrics(reference):
  scalars = metrics.read_scalars(os.path.join(reference[0], 'tensorboard'))
  for tag in ('loss', 'learning_rate', 'grad_norm', 'examples_per_second', 'tokens_per_second', 'valid_loss',
              'valid/mlm', 'valid/visual_regression', 'valid/visual_kl', 'valid/acoustic_regression',
              'tflops_per_device', 'mfu', 'goodput'):
    assert tag in scalars, tag
  # MFU is the achieved FLOP/s per device over the given peak; goodput the share of wall time in steps.
  for step, mfu in scalars['mfu'].items():
    assert mfu == pytest.approx(scalars['tflops_per_device'][step] * 1e12 / 1e11, rel=1e-4) and mfu > 0
  final = reference[1]
  assert 0 < final['goodput'] < 1 and final['time/compile_s'] > 0 and final['time/setup_s'] > 0
  assert set(scalars['valid_loss']) == {4, 8}
  per_task = [t for t in scalars if t.endswith('/loss')]
  assert per_task and all(np.isfinite(list(scalars[t].values())).all() for t in per_task)
  # Warm-up then linear decay to zero.
  learning_rate = scalars['learning_rate']
  assert learning_rate[1] == 0.0 and max(learning_rate.values()) > learning_rate[STEPS] > 0


def test_the_jobs_write_event_files_without_importing_tensorflow(tmp_path):
  """TensorFlow would add seconds to the start of every run and could take the GPU from JAX."""
  script = (f'import sys\n'
            f'from memobert_jax import inference, train\n'
            f'from memobert_jax.training import finetuning, metrics, pretraining\n'
            f'writer = metrics.SummaryWriter({str(tmp_path)!r})\n'
            f'writer.scalars(3, {{"loss": 1.5}})\n'
            f'writer.close()\n'
            f'assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tensorflow"))\n')
  subprocess.run([sys.executable, '-c', script], env=process_helpers.one_device_env(), check=True, cwd=ROOT)
  assert metrics.read_scalars(str(tmp_path)) == {'loss': {3: 1.5}}


@pytest.mark.parametrize('reuse', [True, False])
def test_the_cpu_preset_reuses_freed_host_memory_instead_of_faulting_it_in_again(reuse):
  """What saves the CPU step its per-step page faults (docs/PERFORMANCE.md): a freed 256 MB block comes back
  without faulting its pages in again; glibc's default unmaps it and faults every page again."""
  script = ('import resource\n'
            'import numpy as np\n'
            'from memobert_jax.training import setup\n'
            f'assert setup.reuse_freed_host_memory() if {reuse} else True\n'
            'faults = []\n'
            'for _ in range(3):\n'
            '  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
            '  block = np.ones(64 * 2**20, np.float32)\n'
            '  del block\n'
            '  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n'
            'print(faults)\n')
  result = subprocess.run([sys.executable, '-c', script], env=process_helpers.one_device_env(), check=True,
                          cwd=ROOT, capture_output=True, text=True)
  first, *again = json.loads(result.stdout.strip().splitlines()[-1])
  if reuse:
    assert max(again) <= first // 10, (first, again)
  else:
    assert min(again) >= first // 2, (first, again)
  assert pretrain.get_config('tiny,mesh=cpu').mesh.reuse_host_memory
  assert not pretrain.get_config('base,mesh=gpu').mesh.reuse_host_memory


def resume_copy(reference_dir: str, workdir: str, keep_up_to: int) -> None:
  """A copy of the reference workdir as it was after `keep_up_to` steps (later checkpoints and logs removed),
  without its run record: the tests resume it without the reference's validation settings."""
  ignore = shutil.ignore_patterns('events.out.*', 'export', workdir_lib.RUN_FILE)
  shutil.copytree(reference_dir, workdir, ignore=ignore)
  for step in range(keep_up_to + 1, STEPS + 1):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)), ignore_errors=True)


def test_checkpoint_from_one_mesh_restores_onto_others_and_training_continues_identically(corpus, reference,
                                                                                         tmp_path):
  shards, vocab = corpus
  expected = losses(reference[0])
  for name, mesh, per_device in (('data8', (8, 1, 1), 2), ('single', (1, 1, 1), 16)):
    workdir = str(tmp_path / name)
    resume_copy(reference[0], workdir, 4)
    pretraining.pretrain(make_config(overrides(shards, vocab, mesh, per_device)), workdir)
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
  assert checkpointing.Checkpointer(directory, every_steps=2, keep=10).manager.latest_step() == 4
  pretraining.pretrain(make_config(overrides(shards, vocab, (4, 2, 1), 2)), workdir)
  resumed, expected = losses(workdir), losses(reference[0])
  assert sorted(resumed) == [5, 6, 7, 8]
  np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed], atol=1e-6, rtol=0)


def test_a_workdir_of_another_model_config_is_refused(corpus, tmp_path):
  shards, vocab = corpus
  values = overrides(shards, vocab, (1, 1, 1), 16)
  pretraining.pretrain(make_config(values, steps=2), str(tmp_path))
  values['model.num_layers'] = 3
  with pytest.raises(ValueError, match='different model config.*num_layers: saved 2, now 3'):
    pretraining.pretrain(make_config(values, steps=4), str(tmp_path))


def run_command(values: dict, workdir: str, steps: int) -> list[str]:
  args = [sys.executable, '-m', 'memobert_jax.train',
          f'--config={ROOT}/configs/pretrain.py:tiny,mesh=cpu,steps={steps}', f'--workdir={workdir}']
  for key, value in values.items():
    text = ','.join(map(str, value)) if isinstance(value, tuple) else value
    args.append(f'--config.{key}={text}' if not isinstance(value, tuple) else f'--config.{key}=({text},)')
  return args


def run_until_killed(values: dict, workdir: str, steps: int, kill_after: int) -> int:
  """Starts the run and SIGKILLs it once a checkpoint of step >= kill_after exists; returns the latest step then."""
  process = subprocess.Popen(run_command(values, workdir, steps), env=process_helpers.one_device_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = os.path.join(workdir, 'checkpoints')
  saved = lambda: [int(d) for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and max(saved(), default=0) < kill_after:
    time.sleep(0.05)
  assert process.poll() is None, f'the run ended before it could be killed after step {kill_after}'
  process.send_signal(signal.SIGKILL)
  process.wait()
  return max(saved())


def test_chained_sigkills_reproduce_the_uninterrupted_run_exactly(corpus, tmp_path):
  """Killed three times at random steps (async checkpoints, possibly mid-write), resumed each time: the
  losses, parameters, optimizer state and data order equal those of a run never interrupted."""
  shards, vocab = corpus
  steps = 18
  values = overrides(shards, vocab, (1, 1, 1), 16)
  values['checkpoint.every_steps'] = 1
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  subprocess.run(run_command(values, straight, steps), env=process_helpers.one_device_env(), check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  kill_points = sorted(np.random.default_rng().choice(np.arange(3, steps - 2), size=3, replace=False).tolist())
  killed_at = []
  for kill_after in kill_points:
    killed_at.append(run_until_killed(values, interrupted, steps, max(kill_after, max(killed_at, default=0) + 1)))
  subprocess.run(run_command(values, interrupted, steps), env=process_helpers.one_device_env(), check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  context = f'killed after checkpoints {killed_at}'
  expected, resumed = losses(straight), losses(interrupted)
  assert sorted(resumed) == list(range(1, steps + 1)), context
  assert [resumed[s] for s in sorted(resumed)] == [expected[s] for s in sorted(expected)], context
  straight_state, straight_data = final_state(straight)
  resumed_state, resumed_data = final_state(interrupted)
  assert jax.tree.all(jax.tree.map(np.array_equal, straight_state, resumed_state)), context
  # The whole iterator state, the shuffle window's position included: same examples in the same order.
  assert resumed_data == straight_data, context
  assert resumed_data['examples_seen'] == steps * 16


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
    env = dict(process_helpers.one_device_env(), JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
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


def test_a_workdir_resumed_with_other_settings_is_refused_unless_asked(corpus, tmp_path):
  shards, vocab = corpus
  values = overrides(shards, vocab, (1, 1, 1), 16)
  pretraining.pretrain(make_config(values, steps=2), str(tmp_path))
  changes = {'batch_size': 32, 'optim.learning_rate': 1e-3, 'tasks.weights.mlm': 5.0}
  changed = make_config({**values, **changes}, steps=4)
  with pytest.raises(ValueError, match='started with other settings .*--allow_config_change') as refusal:
    pretraining.pretrain(changed, str(tmp_path))
  for key, value in changes.items():
    assert re.search(f'{re.escape(key)}: [^ ]+ -> {re.escape(repr(value))}', str(refusal.value)), key
  pretraining.pretrain(changed, str(tmp_path), allow_config_change=True)
  assert sorted(losses(str(tmp_path))) == [1, 2, 3, 4]
  with open(os.path.join(tmp_path, workdir_lib.RUN_FILE)) as f:
    recorded = json.load(f)['changes']
  assert [sorted(c['changes']) for c in recorded] == [sorted({*changes, 'optim.total_steps'})]


def test_finetuning_refuses_a_pretraining_workdir(corpus, reference):
  shards, vocab = corpus
  config = finetune_config.get_config('prompt,model=tiny,mesh=cpu,steps=2')
  config.data.update(train=shards)
  config.data.tokenizer.path = vocab
  before = open(os.path.join(reference[0], 'config.json')).read()
  with pytest.raises(ValueError, match='holds a pretrain run.*a finetune run needs a workdir of its own'):
    finetuning.finetune(config, reference[0])
  assert open(os.path.join(reference[0], 'config.json')).read() == before


def damage(path: str) -> None:
  """What a full disk or a bad copy leaves: the file cut to half its length."""
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def largest_file(folder: str) -> str:
  files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
  return max(files, key=os.path.getsize)


def test_a_damaged_latest_checkpoint_falls_back_to_the_intact_one_before_it(corpus, reference, tmp_path):
  shards, vocab = corpus
  expected = losses(reference[0])
  for what in ('state', 'data'):
    workdir = str(tmp_path / what)
    resume_copy(reference[0], workdir, 6)
    damage(largest_file(os.path.join(workdir, 'checkpoints', '6', what)))
    pretraining.pretrain(make_config(overrides(shards, vocab, (4, 2, 1), 2)), workdir)
    resumed = losses(workdir)
    np.testing.assert_allclose([resumed[s] for s in (5, 6, 7, 8)], [expected[s] for s in (5, 6, 7, 8)], atol=1e-5,
                               rtol=0, err_msg=what)
    # Nothing is deleted: the damaged checkpoint is kept aside, and step 6 was saved again.
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', f'6{checkpointing.DAMAGED_SUFFIX}'))
    assert checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every_steps=2, keep=10).manager.latest_step() == 8


def test_a_garbage_iterator_state_is_an_error_naming_the_file(corpus, reference, tmp_path):
  shards, vocab = corpus
  workdir = str(tmp_path / 'garbage')
  resume_copy(reference[0], workdir, 2)
  checkpoints = os.path.join(workdir, 'checkpoints')
  for step in os.listdir(checkpoints):  # every checkpoint there is (orbax also keeps the first step)
    with open(os.path.join(checkpoints, step, 'data', 'process_0-of-1.json'), 'w') as f:
      f.write('{"parent": "not a state"')
  data_file = os.path.join(checkpoints, '2', 'data', 'process_0-of-1.json')
  with pytest.raises(ValueError, match=f'no checkpoint .* reads back:\\s+{data_file}: not a data-iterator state'):
    pretraining.pretrain(make_config(overrides(shards, vocab, (4, 2, 1), 2)), workdir)
