"""Train-step throughput of MEmoBERT pretraining, with FLOPs, achieved FLOP/s and the fraction of peak.

  python -m benchmarks.bench_step --model base --batch 16 --task mlm --steps 5 [--torch] [--json out.json]

Each task's step (the project's `make_train_step`: forward, backward, AdamW, one
micro-batch) is compiled ahead of time on one device with the paper's
pretraining shapes (text 32 tokens incl. [CLS]/[SEP], visual 36 x 342, acoustic
64 x 768; the batch comes from the pipeline's own `BatchBuilder`, so masks and
MLM targets are as in training). Reported per task:

  - compile time (lowering + XLA compile), temporary memory from `memory_analysis()`;
  - step time over `--steps` timed steps after one warm-up step (median, min, max);
  - examples/s and tokens/s (valid positions of all three modalities);
  - FLOPs per step from XLA's `cost_analysis()` of the compiled step, achieved FLOP/s;
  - the fraction of the device's peak: on CPU the best dense f32 matmul rate measured in the same run
    (`jnp.dot` of square matrices of several sizes, best of several runs each, at the start and at the end);
    on GPU/TPU pass --peak_tflops (the datasheet's dense figure for the dtype);
  - on CPU also per CPU-second of this process (FLOPs / (user + system CPU time) against the matmul's
    FLOPs per CPU-second): on a machine shared with other jobs the wall-clock fraction mostly measures the
    load, this one the code; and the system CPU time and page faults per step.

`--torch` also times the PyTorch references (benchmarks/torch_reference.py: the one written from the spec, and
the UNITER-style one on transformers' BertEncoder) on the same batch, alternating one JAX step and one step of
each in this process so that all see the same machine load; the per-round ratios give the spread of JAX/torch
examples/s. On CPU the cpu preset's allocator setting (setup.reuse_freed_host_memory) holds for all of them;
`--default_allocator` measures glibc's default instead.

`--torch --isolated_rounds N` runs every framework alone in a process of its own instead, one after the other
and round after round (JAX, then each reference), so that none shares a heap or an OpenMP pool with another;
each round's ratio compares the medians of its processes' timed steps, and the spread is over the rounds.

`--mesh` picks the CPU mesh preset whose XLA options compile the step (and the matmul peak it is measured
against): `cpu`, or `cpu-onednn` for oneDNN's matmuls (configs/common.py). With --isolated_rounds it may
name several, `--mesh cpu,cpu-onednn`: one JAX process each per round, each compared with the references.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from configs import pretrain
from memobert_jax.data import corruption, examples as examples_lib
from memobert_jax.training import metrics as metrics_lib, setup

# The paper's four pretraining tasks (the ITM ablation is left out).
TASKS = ('mlm', 'visual_regression', 'visual_kl', 'acoustic_regression')
# bert-base-uncased's special ids; the benchmark needs no vocabulary file.
BERT_SPECIAL_IDS = dict(pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103)


def make_config(model: str, *, batch: int, dtype: str = 'float32', text_len: int = 32, visual_len: int = 36,
                acoustic_len: int = 64, mesh: str = 'cpu', **model_overrides) -> ConfigDict:
  """The pretraining config for one micro-batch of `batch` examples at one fixed shape per modality."""
  config = pretrain.get_config(f'{model},mesh={mesh}')
  config.batch_size = config.per_device_batch = batch
  config.model.dtype = dtype
  config.model.update(model_overrides)
  config.data.max_text_tokens = text_len - 2
  config.data.max_visual_frames, config.data.max_acoustic_frames = visual_len, acoustic_len
  config.data.text_buckets, config.data.visual_buckets = (text_len,), (visual_len,)
  config.data.acoustic_buckets = (acoustic_len,)
  return config


def synthetic_examples(config: ConfigDict, n: int, rng: np.random.Generator) -> list[examples_lib.Prepared]:
  """Examples filling every modality to its cap; words of one or two word-pieces (whole-word masking sees both)."""
  data, model = config.data, config.model
  examples = []
  for i in range(n):
    pieces = data.max_text_tokens
    word_lengths = rng.integers(1, 3, size=pieces)
    word_ids = np.repeat(np.arange(pieces), word_lengths)[:pieces]
    ids = rng.integers(1000, model.vocab_size, size=pieces)
    soft = rng.dirichlet(np.ones(model.num_visual_classes), size=data.max_visual_frames).astype(np.float32)
    examples.append(examples_lib.Prepared(
        id=f'synthetic{i}',
        ids=np.concatenate([[BERT_SPECIAL_IDS['cls_id']], ids, [BERT_SPECIAL_IDS['sep_id']]]).astype(np.int32),
        word_ids=np.concatenate([[-1], word_ids, [-1]]).astype(np.int32), label=-1, speaker='', session='',
        visual=rng.standard_normal((data.max_visual_frames, model.visual_dim), dtype=np.float32), soft_labels=soft,
        acoustic=rng.standard_normal((data.max_acoustic_frames, model.acoustic_dim), dtype=np.float32)))
  return examples


def host_batch(config: ConfigDict, task: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One [1, batch, ...] step batch of `task`, built by the training pipeline's BatchBuilder."""
  tokenizer = types.SimpleNamespace(vocab_size=config.model.vocab_size, **BERT_SPECIAL_IDS)
  builder = corruption.BatchBuilder(config, tokenizer)
  return builder.build(task, synthetic_examples(config, config.batch_size, rng), 1, rng)


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def matmul_peak(compiler_options: dict | None = None, sizes: tuple[int, ...] = (1024, 2048, 3072),
                repeats: int = 5) -> dict[str, float]:
  """The best dense f32 matmul rate of `jnp.dot` over square sizes, each the best of `repeats` runs, compiled
  with the step's XLA options (its matmul library).

  Two rates: per wall-clock second (the device's peak when nothing else runs) and per CPU-second of this
  process (the peak of one busy core; on a shared machine it still holds when other jobs take cores away).
  """
  best, best_per_cpu = {}, 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot, compiler_options=compiler_options)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
      start, cpu_start = time.perf_counter(), cpu_seconds()
      dot(a, a).block_until_ready()
      times.append(time.perf_counter() - start)
      best_per_cpu = max(best_per_cpu, 2 * n**3 / max(cpu_seconds() - cpu_start, 1e-6))
    best[n] = 2 * n**3 / min(times)
  peak = {'peak_flops': max(best.values()), **{f'matmul_{n}_flops': v for n, v in best.items()}}
  if jax.default_backend() == 'cpu':
    peak['peak_flops_per_cpu_s'] = best_per_cpu
  return peak


def best_matmul_peak(meshes: list[str], model: str) -> dict[str, float]:
  """matmul_peak under each mesh preset's XLA options, the best of them: the peak every step is measured against."""
  peaks = [matmul_peak(setup.compiler_options(make_config(model, batch=1, mesh=mesh))) for mesh in meshes]
  return {key: max(peak[key] for peak in peaks) for key in peaks[0]}


class JaxStep:
  """The project's jitted train step on one device, compiled ahead of time per task."""

  def __init__(self, config: ConfigDict):
    trainer = setup.make_trainer(config, devices=jax.devices()[:1])
    self.mesh, self.step_fn, self.batch_sharding = trainer.mesh, trainer.train_step, trainer.batch_sharding
    self.state = setup.initial_state(trainer)
    self.compiled = {}

  def compile(self, task: str, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Compiles the task's step for this batch's shapes; returns timings, FLOPs and memory."""
    with jax.set_mesh(self.mesh):
      device_batch = jax.device_put(batch, self.batch_sharding)
      start = time.perf_counter()
      lowered = self.step_fn.lower(self.state, device_batch, task)
      lowered_at = time.perf_counter()
      compiled = lowered.compile()
      compiled_at = time.perf_counter()
    self.compiled[task] = compiled
    memory = compiled.memory_analysis()
    return {'lower_s': lowered_at - start, 'compile_s': compiled_at - lowered_at,
            'flops_per_step': metrics_lib.step_flops(compiled, 1),
            'temp_bytes': getattr(memory, 'temp_size_in_bytes', float('nan')),
            'argument_bytes': getattr(memory, 'argument_size_in_bytes', float('nan'))}

  def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return jax.device_put(batch, self.batch_sharding)

  def run(self, task: str, batch: dict[str, jax.Array]) -> float:
    """One step on a device-resident batch; returns its wall time (the step is waited for)."""
    start = time.perf_counter()
    self.state, metrics = self.compiled[task](self.state, batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start


class _Usage:
  """This process's CPU time and page faults, summed over the `with` blocks: a step that spends much system
  time is faulting in fresh memory (on CPU, XLA allocates the step's temporary buffer anew every step)."""

  def __init__(self):
    self.user = self.system = self.faults = 0.0

  def __enter__(self):
    self._start = resource.getrusage(resource.RUSAGE_SELF)

  def __exit__(self, *exc):
    end = resource.getrusage(resource.RUSAGE_SELF)
    self.user += end.ru_utime - self._start.ru_utime
    self.system += end.ru_stime - self._start.ru_stime
    self.faults += end.ru_minflt - self._start.ru_minflt

  def per_step(self, steps: int) -> dict[str, float]:
    return {'user_cpu_s': self.user / steps, 'system_cpu_s': self.system / steps, 'page_faults': self.faults / steps}


def valid_tokens(batch: dict[str, np.ndarray]) -> int:
  return int(sum(batch[k].sum() for k in ('text_mask', 'visual_mask', 'acoustic_mask')))


def _summary(times: list[float], examples: int, tokens: int) -> dict[str, float]:
  median = statistics.median(times)
  return {'step_s_median': median, 'step_s_min': min(times), 'step_s_max': max(times),
          'examples_per_s': examples / median, 'tokens_per_s': tokens / median}


def _timed_steps(run_step: Callable[[], float], steps: int) -> tuple[list[float], _Usage]:
  """`steps` timed calls of `run_step` after one warm-up call, with this process's CPU time and page faults."""
  run_step()
  times, usage = [], _Usage()
  for _ in range(steps):
    with usage:
      times.append(run_step())
  return times, usage


def _torch_runner(trainer, batch: dict, task: str) -> Callable[[], float]:
  def run() -> float:
    start = time.perf_counter()
    trainer.step(batch, task)
    return time.perf_counter() - start
  return run


def bench_task(jax_step: JaxStep, config: ConfigDict, task: str, steps: int,
               torch_trainers: dict | None = None) -> dict:
  """Times the task's JAX step, alternating with each torch reference (by encoder name) step by step."""
  torch_trainers = torch_trainers or {}
  batch = host_batch(config, task, np.random.default_rng(0))
  result = {'task': task, 'mesh': config.mesh.name, **jax_step.compile(task, batch)}
  device_batch = jax_step.device_batch(batch)
  runners = {'jax': lambda: jax_step.run(task, device_batch)}
  if torch_trainers:
    from benchmarks import torch_reference  # Deferred: torch is an optional benchmark dependency.
    torch_batch = torch_reference.to_torch({k: v[0] for k, v in batch.items()})
    runners.update({name: _torch_runner(trainer, torch_batch, task) for name, trainer in torch_trainers.items()})
  for run in runners.values():
    run()  # warm-up (XLA's first run; torch's allocator and oneDNN primitive caches)
  times = {name: [] for name in runners}
  usage = {name: _Usage() for name in runners}
  for _ in range(steps):
    for name, run in runners.items():
      with usage[name]:
        times[name].append(run())
  _add_jax_timings(result, times['jax'], usage['jax'], config.batch_size, valid_tokens(batch))
  result['torch'], result['jax_over_torch'] = {}, {}
  for name in torch_trainers:
    result['torch'][name] = {**_summary(times[name], config.batch_size, valid_tokens(batch)),
                             **usage[name].per_step(steps)}
    result['jax_over_torch'][name] = _spread([t / j for j, t in zip(times['jax'], times[name])])
  return result


def _add_jax_timings(result: dict, times: list[float], usage: _Usage, examples: int, tokens: int) -> None:
  result.update(_summary(times, examples, tokens))
  result.update(usage.per_step(len(times)))
  result['tokens_per_step'] = tokens
  result['achieved_flops'] = result['flops_per_step'] / result['step_s_median']
  result['flops_per_cpu_s'] = result['flops_per_step'] / (result['user_cpu_s'] + result['system_cpu_s'])


def _spread(ratios: list[float]) -> dict[str, float]:
  return {'median': statistics.median(ratios), 'min': min(ratios), 'max': max(ratios)}


def bench_alone(config: ConfigDict, task: str, steps: int, framework: str) -> dict:
  """One framework's step alone in this process: 'jax' or a torch reference's encoder name."""
  batch = host_batch(config, task, np.random.default_rng(0))
  examples, tokens = config.batch_size, valid_tokens(batch)
  if framework == 'jax':
    jax_step = JaxStep(config)
    result = {'task': task, 'mesh': config.mesh.name, **jax_step.compile(task, batch)}
    device_batch = jax_step.device_batch(batch)
    times, usage = _timed_steps(lambda: jax_step.run(task, device_batch), steps)
    _add_jax_timings(result, times, usage, examples, tokens)
  else:
    from benchmarks import torch_reference  # Deferred: torch is an optional benchmark dependency.
    trainer = torch_reference.TorchTrainer(config.model, config.optim, seed=config.seed, encoder=framework)
    torch_batch = torch_reference.to_torch({k: v[0] for k, v in batch.items()})
    times, usage = _timed_steps(_torch_runner(trainer, torch_batch, task), steps)
    result = {'task': task, **_summary(times, examples, tokens), **usage.per_step(steps)}
  result['step_s'] = times
  return result


def bench_isolated(step_options: list[str], task: str, rounds: int, meshes: list[str], encoders: list[str],
                   torch_allocators: list[str]) -> list[dict]:
  """Rounds of one process per framework, one after the other: JAX's timings under each mesh preset of `meshes`,
  each reference's (under each of `torch_allocators`: 'preset', the cpu preset's as JAX has it, or glibc's
  'default'), and per JAX mesh the spread over the rounds of the ratio of their median steps."""
  # Row name -> (framework, its process's options).
  processes = {f'jax {mesh}': ('jax', step_options + [f'--mesh={mesh}']) for mesh in meshes}
  for encoder in encoders:
    for allocator in torch_allocators:
      name = encoder if allocator == 'preset' else f'{encoder}, glibc default'
      processes[name] = (encoder, step_options + (['--default_allocator'] if allocator == 'default' else []))
  runs = {name: [] for name in processes}
  for round_index in range(rounds):
    for name, (framework, options) in processes.items():
      with tempfile.NamedTemporaryFile(suffix='.json') as output:
        subprocess.run([sys.executable, '-m', 'benchmarks.bench_step', *options, '--task', task,
                        '--alone', framework, '--json', output.name], check=True)
        with open(output.name) as f:
          runs[name].append(json.load(f)['results'][0])
      print(f'round {round_index + 1}/{rounds} {name:30s} step {runs[name][-1]["step_s_median"]:.3f}s', flush=True)
  references = [name for name, (framework, _) in processes.items() if framework != 'jax']
  results = []
  for mesh in meshes:
    jax_runs = runs[f'jax {mesh}']
    # A JAX row: its fastest round's timings (FLOPs and memory are the same in every round).
    result = dict(min(jax_runs, key=lambda r: r['step_s_median']), mesh=mesh)
    result['rounds'] = {name: [r['step_s_median'] for r in timings] for name, timings in runs.items()}
    result['torch'] = {name: min(runs[name], key=lambda r: r['step_s_median']) for name in references}
    result['jax_over_torch'] = {name: _spread([t['step_s_median'] / j['step_s_median']
                                               for j, t in zip(jax_runs, runs[name])]) for name in references}
    results.append(result)
  return results


def _line(result: dict) -> str:
  line = (f'{result["task"]:20s} {result["mesh"]:10s} {result["examples_per_s"]:8.2f} ex/s '
          f'{result["tokens_per_s"]:9.0f} tok/s  step '
          f'{result["step_s_median"]:.3f}s [{result["step_s_min"]:.3f}-{result["step_s_max"]:.3f}]  '
          f'{result["flops_per_step"] / 1e9:8.1f} GFLOP  {result["achieved_flops"] / 1e9:6.1f} GFLOP/s '
          f'({100 * result["fraction_of_peak"]:.0f}% of peak, '
          f'{100 * result.get("fraction_of_peak_cpu_time", float("nan")):.0f}% per CPU-second)  '
          f'compile {result["compile_s"]:.1f}s  sys {result["system_cpu_s"]:.1f}s/step')
  for name, torch_result in result['torch'].items():
    ratio = result['jax_over_torch'][name]
    line += (f'\n{"":20s} torch ({name}) {torch_result["examples_per_s"]:.2f} ex/s step '
             f'{torch_result["step_s_median"]:.3f}s sys {torch_result["system_cpu_s"]:.1f}s/step  '
             f'JAX/torch {ratio["median"]:.2f}x [{ratio["min"]:.2f}-{ratio["max"]:.2f}]')
  return line


def _step_options(args: argparse.Namespace) -> list[str]:
  """The options that shape the step and its timing, for the processes of --isolated_rounds."""
  names = ('model', 'batch', 'dtype', 'steps', 'text_len', 'visual_len', 'acoustic_len', 'attention_impl', 'remat',
           'dropout', 'attention_dropout', 'prng_impl')
  options = [f'--{name}={getattr(args, name)}' for name in names if getattr(args, name) is not None]
  return options + (['--default_allocator'] if args.default_allocator else [])


def _load() -> str:
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='base', choices=('tiny', 'mini', 'base'))
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--task', default='all', choices=('all',) + TASKS)
  parser.add_argument('--mesh', default='cpu',
                      help="the mesh preset whose XLA options compile the step: 'cpu' or 'cpu-onednn' (oneDNN's "
                           "matmuls); with --isolated_rounds a comma-separated list, one JAX process each")
  parser.add_argument('--steps', type=int, default=5, help='timed steps per task, after one warm-up step')
  parser.add_argument('--text_len', type=int, default=32)
  parser.add_argument('--visual_len', type=int, default=36)
  parser.add_argument('--acoustic_len', type=int, default=64)
  parser.add_argument('--attention_impl', default='xla', choices=('xla', 'cudnn'))
  parser.add_argument('--remat', default='none', choices=('none', 'dots', 'full'))
  parser.add_argument('--dropout', type=float, default=None, help='hidden and attention dropout (default: config)')
  parser.add_argument('--attention_dropout', type=float, default=None,
                      help='attention dropout, after --dropout (cudnn attention needs 0)')
  parser.add_argument('--prng_impl', default=None, help='jax_default_prng_impl for the dropout keys (threefry2x32, '
                      'rbg, unsafe_rbg); default: jax\'s')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='the device\'s peak in TFLOP/s (GPU/TPU datasheet, for the dtype); default: measured matmul')
  parser.add_argument('--torch', action='store_true', help='time the PyTorch references alternately with JAX')
  parser.add_argument('--torch_encoders', default='project,transformers',
                      help="with --torch: the references' encoders (torch_reference.ENCODERS): 'project' (written "
                           "from the spec, fused QKV) and 'transformers' (BertEncoder, UNITER-style)")
  parser.add_argument('--default_allocator', action='store_true',
                      help="leave glibc's malloc as it is (the cpu preset makes it reuse freed memory, for both "
                           'JAX and torch in this process)')
  parser.add_argument('--isolated_rounds', type=int, default=0,
                      help='with --torch: run JAX and each reference alone in a process of its own, one after the '
                      'other, this many rounds (0: all in this process, step by step)')
  parser.add_argument('--torch_allocators', default='preset',
                      help="with --isolated_rounds: the references' allocators, each a process of its own: 'preset' "
                      "(JAX's, the cpu preset's) and/or 'default' (glibc's as it is)")
  parser.add_argument('--alone', default=None, help=argparse.SUPPRESS)  # An --isolated_rounds process: its framework.
  parser.add_argument('--json', default=None, help='also write the results to this file')
  args = parser.parse_args(argv)

  if args.prng_impl:
    jax.config.update('jax_default_prng_impl', args.prng_impl)
  overrides = {'attention_impl': args.attention_impl, 'remat': args.remat}
  if args.dropout is not None:
    overrides.update(dropout_rate=args.dropout, attention_dropout_rate=args.dropout)
  if args.attention_dropout is not None:
    overrides['attention_dropout_rate'] = args.attention_dropout
  meshes = args.mesh.split(',')
  if len(meshes) > 1 and not args.isolated_rounds:
    parser.error('several --mesh presets need --torch --isolated_rounds (one JAX process each)')
  config = make_config(args.model, batch=args.batch, dtype=args.dtype, text_len=args.text_len,
                       visual_len=args.visual_len, acoustic_len=args.acoustic_len, mesh=meshes[0], **overrides)
  reuse_host_memory = (config.mesh.reuse_host_memory and not args.default_allocator
                       and setup.reuse_freed_host_memory())
  report = {'device': str(jax.devices()[0].device_kind), 'platform': jax.default_backend(), 'model': args.model,
            'batch': args.batch, 'dtype': args.dtype, 'shapes': [args.text_len, args.visual_len, args.acoustic_len],
            'overrides': overrides, 'prng_impl': jax.config.jax_default_prng_impl, 'reuse_host_memory': reuse_host_memory,
            'load_before': _load()}
  if args.alone:
    report['results'] = [bench_alone(config, args.task, args.steps, args.alone)]
    with open(args.json, 'w') as f:
      json.dump(report, f)
    return
  if args.peak_tflops:
    report['peak_flops'] = args.peak_tflops * 1e12
  else:
    report.update(best_matmul_peak(meshes, args.model))
  tasks = TASKS if args.task == 'all' else (args.task,)
  encoders = args.torch_encoders.split(',') if args.torch else []
  if args.isolated_rounds:
    if not args.torch:
      parser.error('--isolated_rounds compares JAX with the torch references: add --torch')
    report['results'] = [result for task in tasks
                         for result in bench_isolated(_step_options(args), task, args.isolated_rounds, meshes, encoders,
                                                      args.torch_allocators.split(','))]
  else:
    torch_trainers = {}
    if args.torch:
      import torch  # Deferred: torch is an optional benchmark dependency.

      from benchmarks import torch_reference
      torch_trainers = {encoder: torch_reference.TorchTrainer(config.model, config.optim, seed=config.seed,
                                                              encoder=encoder) for encoder in encoders}
      report['torch_version'], report['torch_threads'] = torch.__version__, torch.get_num_threads()
    jax_step = JaxStep(config)
    report['results'] = [bench_task(jax_step, config, task, args.steps, torch_trainers) for task in tasks]
  if not args.peak_tflops:
    # Measured again at the end, the best of both: a peak measured while other jobs ran would flatter the step.
    again = best_matmul_peak(meshes, args.model)
    report.update({k: max(v, again[k]) for k, v in report.items() if k in again})
  report['load_after'] = _load()
  for result in report['results']:
    result['fraction_of_peak'] = result['achieved_flops'] / report['peak_flops']
    if 'peak_flops_per_cpu_s' in report:
      result['fraction_of_peak_cpu_time'] = result['flops_per_cpu_s'] / report['peak_flops_per_cpu_s']
    print(_line(result), flush=True)
  per_cpu = report.get('peak_flops_per_cpu_s', float('nan')) / 1e9
  print(f'peak {report["peak_flops"] / 1e9:.1f} GFLOP/s ({per_cpu:.1f} per CPU-second) on {report["device"]}; '
        f'load {report["load_before"]} -> {report["load_after"]}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main(sys.argv[1:])
