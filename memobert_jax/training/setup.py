"""What every job builds before it iterates, in one place: the pretraining and finetuning loops, the
ahead-of-time compile check and the step benchmark all call these.

  resolve(config, tokenizer, num_classes)   the sizes the data decides (vocabulary, [CLS] head)
  make_trainer(config)                       mesh, micro-batching, optimizer, abstract state, the jitted step
  initial_state(trainer)                     a fresh sharded state, initialised from config.init.checkpoint
  RunOutputs(workdir, ...)                   TensorBoard writer, late metrics, progress bar
"""

import ctypes
import dataclasses
import json
import os

import jax
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from ml_collections import ConfigDict

from memobert_jax import init_checkpoint, modes, sharding, tokenizer as tokenizer_lib
from memobert_jax.training import metrics as metrics_lib, optimizer as optimizer_lib, step as step_lib, train_state
from memobert_jax.training.train_state import TrainState

JOBS = ('pretrain', 'finetune')


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


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_freed_host_memory() -> bool:
  """Makes glibc keep freed memory for the next step instead of returning it to the OS; False where the C
  library is not glibc (nothing changes there).

  XLA:CPU allocates a step's temporary buffer (3.1 GB for the base step at batch 16) afresh every step. glibc
  serves blocks that large with mmap and unmaps them when freed, so every step faults in all of its pages again:
  ~800k page faults and seconds of system time per step (docs/PERFORMANCE.md). With one arena, no mmap and no
  trimming, the next step gets the same pages back. The price: the process keeps its peak heap until it exits.
  Call it before the first step; later calls change nothing.
  """
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # An arena per thread would mmap its large blocks whatever M_MMAP_MAX says; -1 is SIZE_MAX: never trim.
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def prepare_process(config: ConfigDict) -> None:
  """What a job's process sets before it builds anything: the host allocator its mesh preset asks for, and
  the other processes of a multi-host job."""
  if config.mesh.reuse_host_memory:
    reuse_freed_host_memory()
  maybe_initialize_distributed()


def use_compilation_cache(directory: str) -> None:
  """XLA's persistent cache in `directory`, so that a job of many runs compiles each step once; a cache the
  caller set (JAX_COMPILATION_CACHE_DIR, a test session's) is kept."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def load_tokenizer(config: ConfigDict) -> tokenizer_lib.Tokenizer:
  spec = config.data.tokenizer
  return tokenizer_lib.load_tokenizer(spec.kind, spec.path, spec.lowercase)


def resolve(config: ConfigDict, tokenizer: tokenizer_lib.Tokenizer, num_classes: int = 0) -> ConfigDict:
  """A copy of the config with what the data decides: model.vocab_size 0 ('the tokenizer's') and, for a
  finetuning mode with a [CLS] head, its number of classes."""
  config = ConfigDict(config.to_dict())
  if config.model.vocab_size == 0:
    config.model.vocab_size = tokenizer.vocab_size
  tokenizer_lib.check_vocabulary(tokenizer, config.model)
  if config.job == 'finetune':
    config.model.num_classes = modes.get(config.finetune.mode).head_classes(num_classes)
  return config


def step_batching(config: ConfigDict, mesh: Mesh) -> tuple[int, int]:
  """(micro-batches per step, examples per micro-batch).

  Pretraining accumulates micro-batches of per_device_batch per data-parallel device up to batch_size;
  a finetuning step is one micro-batch of batch_size (its corpora are small).
  """
  data_parallel = sharding.data_parallel_size(mesh, config.logical_axis_rules)
  micro = config.batch_size if config.job == 'finetune' else min(config.per_device_batch * data_parallel,
                                                                  config.batch_size)
  if config.batch_size % micro or micro % data_parallel:
    raise ValueError(f'batch_size {config.batch_size} must split into micro-batches of per_device_batch '
                     f'{config.per_device_batch} x {data_parallel} data-parallel devices')
  return config.batch_size // micro, micro


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The pieces of a training job that follow from its (resolved) config and its devices."""
  config: ConfigDict
  mesh: Mesh
  micro_batches: int
  micro_batch_size: int
  optimizer: optax.GradientTransformation
  graphdef: nnx.GraphDef
  abstract_state: TrainState  # shapes and shardings only: the restore target and the AOT input
  train_step: step_lib.StepFn

  @property
  def rules(self) -> sharding.Rules:
    return self.config.logical_axis_rules

  @property
  def state_shardings(self) -> TrainState:
    return jax.tree.map(lambda a: a.sharding, self.abstract_state)

  @property
  def batch_sharding(self) -> NamedSharding:
    return sharding.batch_sharding(self.mesh, self.rules)


def compiler_options(config: ConfigDict) -> dict[str, str | bool | int] | None:
  """The XLA options of the job's jitted steps (mesh.xla_options); None keeps XLA's defaults."""
  return dict(config.mesh.xla_options) or None


def make_trainer(config: ConfigDict, devices=None) -> Trainer:
  """Builds the mesh (over `devices`, default all), the optimizer, the state's layout and the jitted step;
  allocates nothing."""
  if config.job not in JOBS:
    raise ValueError(f'config.job {config.job!r} is not one of {JOBS}')
  mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes, devices)
  micro_batches, micro_batch_size = step_batching(config, mesh)
  optimizer = optimizer_lib.make_optimizer(config.optim)
  graphdef, _ = train_state.abstract_model(config.model, config.seed)
  abstract_state = train_state.abstract_train_state(config.model, optimizer, mesh, config.logical_axis_rules)
  train_step = step_lib.make_train_step(graphdef, optimizer, seed=config.seed,
                                        learning_rate=optimizer_lib.learning_rate_schedule(config.optim),
                                        state_shardings=jax.tree.map(lambda a: a.sharding, abstract_state),
                                        mesh=mesh, rules=config.logical_axis_rules,
                                        compiler_options=compiler_options(config))
  return Trainer(config, mesh, micro_batches, micro_batch_size, optimizer, graphdef, abstract_state, train_step)


def initial_state(trainer: Trainer, *, skip: tuple[str, ...] = ()) -> TrainState:
  """A fresh state created in its sharded layout, with the parameters of config.init.checkpoint (if any)
  loaded into it; checkpoint parameters under `skip` are left out."""
  config = trainer.config
  _, state, _ = train_state.create_train_state(config.model, trainer.optimizer, trainer.mesh, trainer.rules,
                                               config.seed)
  if config.init.checkpoint:
    params, loaded = init_checkpoint.restore_into(state.params, config.init.checkpoint, config.model, skip=skip)
    state = state.replace(params=params)
    logging.warning('initialised %d parameters from %s', len(loaded), config.init.checkpoint)
    if not any(name.startswith(init_checkpoint.MLM_HEAD) for name in loaded) and _reads_label_words(config):
      logging.warning('%s has no MLM head: the prompt reads the label words through a random transform. Train '
                      'it first: %s', config.init.checkpoint, init_checkpoint.TEXT_STAGE)
  return state


def _reads_label_words(config: ConfigDict) -> bool:
  return config.job == 'finetune' and modes.get(config.finetune.mode).prompted


def write_config(workdir: str, config: ConfigDict) -> None:
  """WORKDIR/config.json: the resolved config, for people and tools reading the run."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def write_json(path: str, values: dict) -> None:
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(values, f, indent=2)


class RunOutputs:
  """What a loop reports as it goes: TensorBoard scalars, metrics read one step late, a progress bar."""

  def __init__(self, workdir: str, total_steps: int, first_step: int, description: str):
    self.writer = metrics_lib.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    self.late = metrics_lib.LateMetrics()
    self.bar = metrics_lib.progress_bar(total_steps, first_step, description)

  def close(self) -> None:
    self.bar.close()
    self.writer.close()
