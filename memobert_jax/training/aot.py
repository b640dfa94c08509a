"""Ahead-of-time compile of the real train step: does a config fit its devices, and how fast could it run?

The step compiled is the one training runs (setup.make_trainer), with the real
state shardings and abstract batches of the largest shapes the data pipeline
produces (the batch contract), so nothing is allocated. What XLA
reports about the compiled program is measured; step time and MFU are estimates
from published chip figures and an assumed efficiency (see `Report.estimate`).
"""

import dataclasses
import re
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from memobert_jax import modes
from memobert_jax.data import batch as batch_lib, pipeline, schema
from memobert_jax.training import metrics as metrics_lib, setup, topology
from memobert_jax.training.topology import GiB

_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
# An HLO instruction's result type(s), then a collective's name (the synchronous op or the end of an async pair).
_COLLECTIVE_LINE = re.compile(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s(' + '|'.join(_COLLECTIVES) + r')(?:-done)?\(')
_SHAPE = re.compile(r'\b([a-z]+[0-9]*)\[([0-9,]*)\]')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$')
_WHILE_BODY = re.compile(r'\bbody=%([^,\s]+)')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
# What the data decides at training time, assumed here: the [CLS] head's classes (IEMOCAP and MSP-IMPROV
# have 4) and, where the config leaves it to the tokenizer (0), the vocabulary (bert-base-uncased's).
ASSUMED_CLASSES = 4
ASSUMED_VOCABULARY = 30522


def batch_spec(config: ConfigDict, task: str, micro_batches: int, micro_batch_size: int,
               modalities: str = 'LVA') -> dict[str, jax.ShapeDtypeStruct]:
  """The abstract [micro_batches, micro_batch_size, ...] batch of `task` at the largest buckets the data can
  fill (the batch contract of memobert_jax/data/batch.py; a modality left out has length 0)."""
  data = config.data
  frames = {m: batch_lib.bucket(data[f'max_{m}_frames'] if m[0].upper() in modalities else 0, data[f'{m}_buckets'], m)
            for m in ('visual', 'acoustic')}
  modality = batch_lib.FRAME_TASKS.get(task)
  if modality and not frames[modality]:
    raise ValueError(f'task {task} needs {modality} frames, which data.modalities={modalities!r} leaves out')
  sizes = {'Lt': batch_lib.bucket(data.max_text_tokens + 2, data.text_buckets, 'text'), 'Lv': frames['visual'],
           'La': frames['acoustic'], 'Dv': config.model.visual_dim, 'Da': config.model.acoustic_dim,
           'C': len(schema.SOFT_LABEL_CLASSES), 'P': data.mlm_max_predictions if task == 'mlm' else 1,
           # The label words: the config's, else one per assumed class (the data's names are not read here).
           'K': (len(config.finetune.label_words) if config.get('finetune') and config.finetune.label_words
                 else ASSUMED_CLASSES)}
  lead = (micro_batches, micro_batch_size)
  return {key: jax.ShapeDtypeStruct(lead + shape, dtype)
          for key, (shape, dtype) in batch_lib.shapes(task, sizes).items()}


def default_tasks(config: ConfigDict) -> list[str]:
  """The tasks a config trains: the pretraining tasks with positive weight, or the finetuning mode's loss."""
  if config.job == 'finetune':
    return [modes.get(config.finetune.mode).training_task(config.finetune.prompt_loss)]
  return pipeline.task_schedule(config.tasks.weights)[0]


@dataclasses.dataclass
class Report:
  """What XLA says about one compiled train step (per device), and the estimates built on it."""
  task: str
  mesh: dict[str, int]
  devices: str
  chip: topology.Chip | None
  batch_size: int
  micro_batches: int
  positions: int  # padded sequence length (text + visual + acoustic)
  memory: dict[str, int]  # bytes per device, from compiled.memory_analysis()
  flops: float  # per device per step: XLA's count, scaled by the micro-batches (see compile_step)
  collective_bytes: dict[str, float]  # per device per step, from the compiled HLO
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Live bytes on a device: inputs, outputs not aliased to (donated) inputs, scratch and the program."""
    m = self.memory
    return m['arguments'] + m['outputs'] - m['aliased'] + m['temporaries'] + m['generated_code']

  @property
  def fits(self) -> bool | None:
    return None if self.chip is None else self.total_bytes <= self.chip.hbm_bytes

  def estimate(self, efficiency: float) -> dict[str, float] | None:
    """Estimated step time, throughput and MFU (None without the chip's figures).

    Assumes the FLOPs run at `efficiency` of the chip's bf16 peak and the collectives at its share of the
    slice's all-reduce bandwidth (an all-reduce moves about twice its bytes, the others once), one after the
    other. MFU counts XLA's FLOPs, which include any remat recomputation (then it is hardware FLOP utilisation).
    """
    if self.chip is None:
      return None
    compute = self.flops / (self.chip.peak_bf16_flops * efficiency)
    traffic = sum(b * (2 if kind == 'all-reduce' else 1) for kind, b in self.collective_bytes.items())
    communicate = traffic / self.chip.allreduce_bytes_per_s if self.chip.allreduce_bytes_per_s else 0.0
    seconds = compute + communicate
    return {'compute_s': compute, 'collective_s': communicate, 'step_s': seconds,
            'examples_per_s': self.batch_size / seconds, 'mfu': self.flops / (seconds * self.chip.peak_bf16_flops)}

  def to_dict(self, efficiency: float) -> dict:
    values = dataclasses.asdict(self)
    values.update(chip=self.chip and self.chip.name, total_bytes=self.total_bytes, fits=self.fits,
                  efficiency=efficiency, estimate=self.estimate(efficiency))
    return values


def collective_bytes(hlo_text: str, loop_trips: int) -> dict[str, float]:
  """Result bytes of each kind of collective in a compiled module, per device per execution.

  Collectives inside a while loop count `loop_trips` times unless XLA recorded the trip count (the train step's
  only loop is the gradient-accumulation scan, whose length TPU HLO does not carry).
  """
  totals: dict[str, float] = {}
  bodies = {}
  for line in hlo_text.splitlines():
    if ' while(' in line and (body := _WHILE_BODY.search(line)):
      trips = _TRIP_COUNT.search(line)
      bodies[body.group(1)] = int(trips.group(1)) if trips else loop_trips
  computation = ''
  for line in hlo_text.splitlines():
    if header := _COMPUTATION.match(line):
      computation = header.group(1)
    elif match := _COLLECTIVE_LINE.match(line):
      size = sum(_itemsize(d) * int(np.prod([int(s) for s in dims.split(',') if s]))
                 for d, dims in _SHAPE.findall(match.group(1)))
      totals[match.group(2)] = totals.get(match.group(2), 0.0) + size * bodies.get(computation, 1)
  return totals


def _itemsize(hlo_type: str) -> int:
  """Bytes per element of an HLO element type ('f32', 'bf16', 's8', 'pred', ...)."""
  return 1 if hlo_type == 'pred' else max(1, int(re.search(r'\d+', hlo_type).group()) // 8)


def _with_data_sizes(config: ConfigDict) -> ConfigDict:
  """A copy of the config with the sizes training takes from the data filled in (ASSUMED_*)."""
  config = ConfigDict(config.to_dict())
  config.model.vocab_size = config.model.vocab_size or ASSUMED_VOCABULARY
  if config.job == 'finetune':
    config.model.num_classes = modes.get(config.finetune.mode).head_classes(ASSUMED_CLASSES)
  return config


class DoesNotFit(Exception):
  """The step needs more memory per device than the chip has."""


def compile_step(config: ConfigDict, task: str, devices: Sequence[jax.Device]) -> Report:
  """Lowers and compiles the train step of `task` for `devices` from shapes alone; measures the result.

  Raises:
    DoesNotFit: XLA refused the program for lack of device memory (the TPU compiler checks HBM itself).
  """
  config = _with_data_sizes(config)
  trainer = setup.make_trainer(config, devices)
  micro_batches, mesh = trainer.micro_batches, trainer.mesh
  modalities = config.finetune.train_modalities if config.job == 'finetune' else config.data.modalities
  batch = batch_spec(config, task, micro_batches, trainer.micro_batch_size, modalities)
  start = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      compiled = trainer.train_step.lower(trainer.abstract_state, batch, task).compile()
  except jax.errors.JaxRuntimeError as error:
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    raise DoesNotFit(f'task {task}: {str(error).splitlines()[0]}\n  to fit: {advice(config)}') from error
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  memory = {'arguments': stats.argument_size_in_bytes, 'outputs': stats.output_size_in_bytes,
            'aliased': stats.alias_size_in_bytes, 'temporaries': stats.temp_size_in_bytes,
            'generated_code': stats.generated_code_size_in_bytes}
  flops = metrics_lib.step_flops(compiled, micro_batches)
  positions = batch['text_ids'].shape[-1] + batch['visual'].shape[-2] + batch['acoustic'].shape[-2]
  return Report(task=task, mesh=dict(mesh.shape), devices=topology.describe(devices),
                chip=topology.chip_of(devices[0]), batch_size=micro_batches * trainer.micro_batch_size,
                micro_batches=micro_batches, positions=positions, memory=memory, flops=flops,
                collective_bytes=collective_bytes(compiled.as_text(), micro_batches), compile_seconds=seconds)


def advice(config: ConfigDict, memory: dict[str, int] | None = None) -> str:
  """What to change when a step does not fit, led by what takes the most memory (when known)."""
  steps = [f'lower --config.per_device_batch (now {config.per_device_batch}; batch_size stays {config.batch_size}, '
           f'reached by more micro-batches)',
           f'recompute activations: --config.model.remat=dots or full (now {config.model.remat!r})',
           "shard parameters and Adam moments over F chips: --config.mesh.shape='(-1,F,1)' (fsdp; more "
           'communication, see docs/SCALING.md)']
  if memory and memory['arguments'] > memory['temporaries']:
    steps.reverse()  # the state dominates: sharding it helps most
  return '; or '.join(steps)


def check(config: ConfigDict, task_names: Sequence[str], *, local: bool, efficiency: float,
          log: Callable[[str], None] = print) -> tuple[list[Report], list[str]]:
  """Compiles each task's step for the preset's TPU topology (or the local devices) and logs what it costs.

  Returns:
    The reports of the steps that compiled, and a message for each step that does not fit.
  """
  on_topology = bool(config.mesh.topology) and not local
  devices = topology.topology_devices(config.mesh) if on_topology else jax.devices()
  kind = 'finetuning' if config.job == 'finetune' else 'pretraining'
  log(f'{kind}: {config.model.num_layers} layers x {config.model.hidden_size}, dtype {config.model.dtype}, '
      f'remat {config.model.remat}; mesh preset {config.mesh.name} for '
      f'{"TPU topology " + config.mesh.topology if on_topology else "the local devices"}')
  reports, failures = [], []
  for task in task_names or default_tasks(config):
    try:
      report = compile_step(config, task, devices)
    except DoesNotFit as error:
      failures.append(f'{kind} {error}')
      log(f'{kind} {error}')
      continue
    reports.append(report)
    log(format_report(report, config, efficiency))
    if report.fits is False:
      failures.append(f'{kind} task {task} needs {_gib(report.total_bytes)} per device, the '
                      f'{report.chip.name} has {_gib(report.chip.hbm_bytes)}: {advice(config, report.memory)}')
  return reports, failures


def _gib(n: float) -> str:
  return f'{n / GiB:.2f} GiB' if n >= GiB / 10 else f'{n / 2 ** 20:.1f} MiB'


def format_report(report: Report, config: ConfigDict, efficiency: float) -> str:
  """The report as indented lines: measured figures first, then the fit check and the estimate."""
  m = report.memory
  mesh = ', '.join(f'{k}={v}' for k, v in report.mesh.items())
  lines = [
      f'task {report.task}: mesh {config.mesh.name} ({mesh}) on {report.devices}; compiled in '
      f'{report.compile_seconds:.0f} s',
      f'  batch: {report.batch_size} examples per step = {report.micro_batches} micro-batch(es) of '
      f'{report.batch_size // report.micro_batches}, {report.positions} positions each (largest buckets)',
      f'  memory per device (compiled): arguments {_gib(m["arguments"])}, outputs {_gib(m["outputs"])} '
      f'({_gib(m["aliased"])} aliased to donated inputs), temporaries {_gib(m["temporaries"])}, '
      f'code {_gib(m["generated_code"])}; total {_gib(report.total_bytes)}',
      f'  FLOPs per device per step (XLA count): {report.flops:.3e}',
      '  collectives per device per step (compiled HLO): '
      + (', '.join(f'{k} {_gib(v)}' for k, v in sorted(report.collective_bytes.items())) or 'none'),
  ]
  if report.chip is None:
    lines.append('  no memory or peak figures for this kind of device (topology.CHIPS): no fit check, no estimate')
    return '\n'.join(lines)
  chip = report.chip
  lines.append(f'  fits: {"yes" if report.fits else "NO"}: {_gib(report.total_bytes)} of {_gib(chip.hbm_bytes)} '
               f'HBM ({100 * report.total_bytes / chip.hbm_bytes:.0f}%)')
  estimate = report.estimate(efficiency)
  network = (f'collectives at {chip.allreduce_bytes_per_s / 1e9:.0f} GB/s, not overlapped'
             if chip.allreduce_bytes_per_s else 'collectives not estimated')
  lines.append(f'  estimate ({chip.name}: {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 peak at '
               f'{100 * efficiency:.0f}%; {network}): compute {1e3 * estimate["compute_s"]:.1f} ms + collectives '
               f'{1e3 * estimate["collective_s"]:.1f} ms = step {1e3 * estimate["step_s"]:.1f} ms, '
               f'{estimate["examples_per_s"]:.0f} examples/s, MFU {100 * estimate["mfu"]:.0f}%')
  if not report.fits:
    lines.append(f'  does not fit: {advice(config, report.memory)}')
  return '\n'.join(lines)
