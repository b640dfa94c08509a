"""Paired A/B measurements of the speed changes in docs/PERFORMANCE.md, kept and rejected alike.

  python -m benchmarks.experiments VARIANT [--model base] [--batch 16] [--pairs 4] [--json out.json]

Each run builds two train steps in one process, A (the project as it is) and B
(one change), compiles both, then alternates A and B steps so that both see the
same machine load; the per-pair time ratios A/B give B's speed-up and its spread,
in wall time and in this process's CPU time (which other jobs on a shared
machine disturb less).
Changes that are not in the project (rejected ones, or the code a kept change
replaced) are recreated here for the B side only, by a config override, a batch
transform, or a patch applied while B is traced.

  python -m benchmarks.experiments qkv_microbench    # fused (4-D, 2-D) vs separate QKV projection, fwd+bwd
  python -m benchmarks.experiments dropout_microbench  # dropout fwd+bwd with 32, 16 and 8 random bits per element
  python -m benchmarks.experiments transfer_guard    # the pretraining loop under jax.transfer_guard('disallow')
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_step
from configs import common
from memobert_jax.model import layers
from memobert_jax.training import setup, tasks as tasks_lib


def _all_text_positions(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """MLM logits at every text position instead of the gathered targets (the same targets and loss)."""
  a, b, length = batch['text_ids'].shape
  targets = np.zeros((a, b, length), np.int32)
  weights = np.zeros((a, b, length), np.float32)
  for i in range(a):
    for j in range(b):
      real = batch['mlm_weights'][i, j] > 0
      targets[i, j, batch['mlm_positions'][i, j][real]] = batch['mlm_targets'][i, j][real]
      weights[i, j, batch['mlm_positions'][i, j][real]] = 1.0
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (a, b, length)).copy()
  return {**batch, 'mlm_positions': positions, 'mlm_targets': targets, 'mlm_weights': weights}


@contextlib.contextmanager
def _frame_heads_at_targets(cap: int):
  """Frame regression heads applied to at most `cap` target frames per example, gathered, not to every frame."""

  def regression(modality: str):

    def loss(model, batch, deterministic, dropout_key):
      encoded = model(batch, deterministic=deterministic, dropout_key=dropout_key)
      hidden = encoded.visual if modality == 'visual' else encoded.acoustic
      mask = batch[f'{modality}_target_mask']
      positions = jnp.argsort(~mask, axis=1, stable=True)[:, :cap]  # target frames first
      weights = jnp.take_along_axis(mask, positions, axis=1).astype(jnp.float32)
      picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)
      regress = model.visual_regression if modality == 'visual' else model.acoustic_regression
      target = jnp.take_along_axis(batch[f'{modality}_targets'], positions[..., None], axis=1)
      per_frame = jnp.square(regress(picked) - target).mean(-1)
      return (per_frame * weights).sum(), weights.sum(), {}

    return loss

  saved = dict(tasks_lib.TASKS)
  tasks_lib.TASKS.update(visual_regression=regression('visual'), acoustic_regression=regression('acoustic'))
  try:
    yield
  finally:
    tasks_lib.TASKS.update(saved)


@contextlib.contextmanager
def _bernoulli_dropout():
  """The dropout the model used before: flax's nnx.Dropout (jax.random.bernoulli, 32 random bits per element)."""
  from flax import nnx
  saved = layers.Dropout.__call__

  def call(self, x, *, deterministic, rngs):
    return nnx.Dropout(self.rate)(x, deterministic=deterministic, rngs=rngs)

  layers.Dropout.__call__ = call
  try:
    yield
  finally:
    layers.Dropout.__call__ = saved


@contextlib.contextmanager
def _erfc_gelu():
  """The GELU the model used before: jax.nn.gelu(approximate=False), which XLA computes through erfc."""
  from memobert_jax.model import encoder, heads
  saved = encoder.gelu
  encoder.gelu = heads.gelu = functools.partial(jax.nn.gelu, approximate=False)
  try:
    yield
  finally:
    encoder.gelu = heads.gelu = saved


@contextlib.contextmanager
def _separate_qkv():
  """Query, key and value as three matmuls with the slices of the same fused [H, 3, heads, d] kernel
  (the XLA attention path of memobert_jax/model/encoder.py otherwise unchanged)."""
  from memobert_jax.model import encoder
  saved = encoder.SelfAttention.__call__

  def call(self, x, valid, *, deterministic, rngs):
    dtype = self.qkv.dtype
    kernel, bias = self.qkv.kernel[...].astype(dtype), self.qkv.bias[...].astype(dtype)
    q, k, v = (jnp.einsum('blh,hnd->blnd', x.astype(dtype), kernel[:, i]) + bias[i] for i in range(3))
    logits = jnp.einsum('bqnd,bknd->bnqk', q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = self.dropout(jax.nn.softmax(logits, axis=-1), deterministic=deterministic, rngs=rngs).astype(v.dtype)
    return self.out(jnp.einsum('bnqk,bknd->bqnd', probs, v))

  encoder.SelfAttention.__call__ = call
  try:
    yield
  finally:
    encoder.SelfAttention.__call__ = saved


@contextlib.contextmanager
def _autodiff_layer_norm():
  """The LayerNorm the model used before: its backward left to autodiff."""
  saved = layers.LayerNorm.__call__

  def call(self, x):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)

  layers.LayerNorm.__call__ = call
  try:
    yield
  finally:
    layers.LayerNorm.__call__ = saved


@contextlib.contextmanager
def _batched_dense():
  """The Dense layer the model used before: contracting its input as [batch, length, in], so the weight
  gradient contracts two leading axes."""
  saved = layers.Dense.__call__

  def call(self, x):
    n = self.num_in_axes
    contract = (tuple(range(x.ndim - n, x.ndim)), tuple(range(n)))
    y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype), (contract, ((), ())))
    return y + self.bias[...].astype(self.dtype) if self.bias is not None else y

  layers.Dense.__call__ = call
  try:
    yield
  finally:
    layers.Dense.__call__ = saved


@contextlib.contextmanager
def _prng(impl: str):
  saved = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', impl)
  try:
    yield
  finally:
    jax.config.update('jax_default_prng_impl', saved)


@dataclasses.dataclass(frozen=True)
class Variant:
  description: str
  task: str = 'mlm'
  config: dict = dataclasses.field(default_factory=dict)  # make_config arguments of B
  transform: Callable[[dict], dict] | None = None  # B's batch from A's
  patch: Callable[[dict], contextlib.AbstractContextManager] | None = None  # active while B is traced
  xla_options: dict | None = None  # B's mesh.xla_options (its step's compile options)


def _target_cap(batch: dict, task: str) -> int:
  modality = task.split('_')[0]
  return int(batch[f'{modality}_target_mask'].sum(-1).max())


VARIANTS = {
    'mlm_all_positions': Variant('MLM logits at all 32 text positions (B) vs at the 12 gathered ones (A)',
                                 transform=_all_text_positions),
    'frame_targets_only': Variant('acoustic regression head at the gathered target frames only (B) vs at all 64 '
                                  'frames (A)', task='acoustic_regression',
                                  patch=lambda batch: _frame_heads_at_targets(_target_cap(batch, 'acoustic'))),
    'bernoulli_dropout': Variant('dropout with jax.random.bernoulli / nnx.Dropout (B) vs 16-bit dropout (A)',
                                 patch=lambda batch: _bernoulli_dropout()),
    'rbg_dropout_keys': Variant('dropout keys from the rbg PRNG (B) vs threefry (A)',
                                patch=lambda batch: _prng('rbg')),
    'erfc_gelu': Variant('GELU through erfc, jax.nn.gelu(approximate=False) (B) vs through erf (A)',
                         patch=lambda batch: _erfc_gelu()),
    'separate_qkv': Variant('three Q/K/V matmuls on slices of the fused kernel (B) vs one fused matmul (A)',
                            patch=lambda batch: _separate_qkv()),
    'autodiff_layer_norm': Variant("LayerNorm's backward by autodiff (B) vs written out (A)",
                                   patch=lambda batch: _autodiff_layer_norm()),
    'batched_dense': Variant('Dense contracting [batch, length, in] (B) vs a [batch * length, in] view (A)',
                             patch=lambda batch: _batched_dense()),
    'eigen_dots': Variant("XLA:CPU's own (Eigen) matmuls (B) vs YNNPACK matmul fusions (A)",
                          xla_options={'xla_cpu_experimental_ynn_fusion_type': ''}),
    'onednn_dots': Variant("oneDNN's matmuls, the cpu-onednn preset's (B) vs YNNPACK matmul fusions (A)",
                           xla_options=common.ONEDNN_MATMULS),
    'no_dropout': Variant('no dropout at all (B) vs dropout 0.1 (A): what dropout costs',
                          config=dict(dropout_rate=0.0, attention_dropout_rate=0.0)),
    'bf16': Variant('bfloat16 compute (B) vs float32 (A)', config=dict(dtype='bfloat16')),
    'remat_dots': Variant('remat policy dots (B) vs none (A)', config=dict(remat='dots')),
    'remat_full': Variant('remat policy full (B) vs none (A)', config=dict(remat='full')),
    'text_bucket_16': Variant('text padded to the 16-token bucket (B) vs 32 (A), visual 36, acoustic 64',
                              config=dict(text_len=16)),
    'short_bucket': Variant('the smallest buckets text 16, visual 12, acoustic 32 (B) vs the largest (A)',
                            config=dict(text_len=16, visual_len=12, acoustic_len=32)),
}


def run_variant(name: str, model: str, batch_size: int, pairs: int) -> dict:
  variant = VARIANTS[name]
  config_a = bench_step.make_config(model, batch=batch_size)
  b_args = dict(variant.config)
  shape_args = {k: b_args.pop(k) for k in ('text_len', 'visual_len', 'acoustic_len', 'dtype') if k in b_args}
  config_b = bench_step.make_config(model, batch=batch_size, **shape_args, **b_args)
  if variant.xla_options is not None:
    config_b.mesh.xla_options = variant.xla_options
  batch_a = bench_step.host_batch(config_a, variant.task, np.random.default_rng(0))
  batch_b = bench_step.host_batch(config_b, variant.task, np.random.default_rng(0))
  if variant.transform:
    batch_b = variant.transform(batch_b)
  step_a, step_b = bench_step.JaxStep(config_a), bench_step.JaxStep(config_b)
  info_a = step_a.compile(variant.task, batch_a)
  with variant.patch(batch_b) if variant.patch else contextlib.nullcontext():
    info_b = step_b.compile(variant.task, batch_b)
  device_a, device_b = step_a.device_batch(batch_a), step_b.device_batch(batch_b)
  if pairs:  # warm-up; --pairs 0 only compiles (FLOPs, memory, compile time)
    step_a.run(variant.task, device_a)
    step_b.run(variant.task, device_b)
  times = {'a': [], 'b': []}
  cpu = {'a': [], 'b': []}  # CPU seconds of this process per step: less sensitive to other jobs than wall time
  for _ in range(pairs):
    for side, step, batch in (('a', step_a, device_a), ('b', step_b, device_b)):
      start = bench_step.cpu_seconds()
      times[side].append(step.run(variant.task, batch))
      cpu[side].append(bench_step.cpu_seconds() - start)
  result = {'variant': name, 'description': variant.description, 'task': variant.task, 'model': model,
            'batch': batch_size, 'a': {**info_a, 'step_s': times['a'], 'cpu_s': cpu['a']},
            'b': {**info_b, 'step_s': times['b'], 'cpu_s': cpu['b']}}
  if pairs:
    spread = lambda x: {'median': statistics.median(x), 'min': min(x), 'max': max(x)}
    result['speedup_b_over_a'] = spread([a / b for a, b in zip(times['a'], times['b'])])
    result['cpu_time_speedup_b_over_a'] = spread([a / b for a, b in zip(cpu['a'], cpu['b'])])
  return result


def _timed_runs(fn: Callable, args: tuple, repeats: int) -> list[float]:
  """Seconds of `repeats` calls of a jitted fn, after one call that compiles it."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def qkv_microbench(batch: int = 16, length: int = 132, hidden: int = 768, heads: int = 12,
                   repeats: int = 10) -> dict:
  """Forward + backward of the attention input projection, three ways: the model's fused 4-D kernel
  [H, 3, heads, d], the same flattened to one [H, 3H] matmul, and three separate [H, H] matmuls."""
  x = jax.random.normal(jax.random.key(0), (batch, length, hidden))
  fused = jax.random.normal(jax.random.key(1), (hidden, 3, heads, hidden // heads)) * 0.02
  separate = [fused[:, i].reshape(hidden, hidden) for i in range(3)]

  def fused_loss(kernel, x):
    return jnp.sum(jnp.einsum('blh,hcnd->blcnd', x, kernel) ** 2)

  def flat_loss(kernel, x):
    return jnp.sum((x @ kernel.reshape(hidden, -1)) ** 2)

  def separate_loss(kernels, x):
    return sum(jnp.sum((x @ k) ** 2) for k in kernels)

  timings = {}
  for name, fn, params in (('fused_4d', fused_loss, fused), ('fused_2d', flat_loss, fused),
                           ('separate', separate_loss, separate)):
    times = _timed_runs(jax.jit(jax.grad(fn, argnums=(0, 1))), (params, x), repeats)
    timings[name] = {'median_s': statistics.median(times), 'min_s': min(times)}
  return {'variant': 'qkv_microbench', 'timings': timings}


def dropout_microbench(shape: tuple[int, ...] = (16, 12, 132, 132), rate: float = 0.1, repeats: int = 5) -> dict:
  """Dropout forward + backward on base attention probabilities: random bits per element 32 (bernoulli), 16, 8."""

  def bernoulli(key, x):
    return jnp.where(jax.random.bernoulli(key, 1 - rate, x.shape), x / (1 - rate), 0)

  def narrow(bits_per_element: int):
    per_word = 32 // bits_per_element

    def dropout(key, x):
      words = jax.random.bits(key, x.shape[:-1] + (x.shape[-1] // per_word,), jnp.uint32)
      mask = (1 << bits_per_element) - 1
      parts = jnp.concatenate([(words >> (i * bits_per_element)) & mask for i in range(per_word)], axis=-1)
      return jnp.where(parts >= round(rate * (1 << bits_per_element)), x / (1 - rate), 0)

    return dropout

  x = jax.random.normal(jax.random.key(0), shape)
  timings = {}
  for impl in ('threefry2x32', 'rbg'):
    key = jax.random.key(1, impl=impl)
    for name, fn in (('32_bit_bernoulli', bernoulli), ('16_bit', narrow(16)), ('8_bit', narrow(8))):
      grad = jax.jit(jax.value_and_grad(lambda x, k, fn=fn: (fn(k, x) * x).sum()))
      timings[f'{impl}/{name}'] = min(_timed_runs(grad, (x, key), repeats))
  return {'variant': 'dropout_microbench', 'shape': shape, 'fwd_bwd_best_s': timings}


def transfer_guard_check(steps: int = 4) -> dict:
  """Runs the real pretraining loop (tiny model, checkpoints, metrics, export) under jax.transfer_guard('disallow').

  The guard raises on any implicit host<->device transfer (a numpy array fed to a jitted function, float() of a
  device array, ...) and lets explicit ones (device_put, device_get, make_array_from_process_local_data) pass.
  """
  import tempfile
  from pathlib import Path

  from benchmarks import bench_loader
  from configs import pretrain
  from memobert_jax.training import pretraining

  with tempfile.TemporaryDirectory() as scratch:
    root = Path(scratch)
    vocab = bench_loader.default_vocab()
    config = pretrain.get_config(f'tiny,mesh=cpu,steps={steps}')
    config.data.train = str(bench_loader.make_corpus(root, vocab, 64, (3, 12)))
    config.data.tokenizer.path = vocab
    config.data.shuffle_window = 32
    config.batch_size = config.per_device_batch = 8
    config.checkpoint.every_steps, config.log_every_steps = 2, 1
    try:
      with jax.transfer_guard('disallow'):
        pretraining.pretrain(config, str(root / 'work'))
      return {'variant': 'transfer_guard', 'steps': steps, 'implicit_transfers': 'none'}
    except Exception as e:  # the guard's error names the offending transfer
      return {'variant': 'transfer_guard', 'steps': steps, 'implicit_transfers': f'{type(e).__name__}: {e}'}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('variant', choices=sorted(VARIANTS) + ['qkv_microbench', 'dropout_microbench', 'transfer_guard'])
  parser.add_argument('--model', default='base', choices=('tiny', 'mini', 'base'))
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--pairs', type=int, default=4,
                      help='timed A/B step pairs after one warm-up step each; 0 only compiles both')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  setup.reuse_freed_host_memory()  # as the cpu preset's jobs run (A and B alike)
  with open('/proc/loadavg') as f:
    load_before = ' '.join(f.read().split()[:3])
  if args.variant == 'qkv_microbench':
    result = qkv_microbench()
  elif args.variant == 'dropout_microbench':
    result = dropout_microbench()
  elif args.variant == 'transfer_guard':
    result = transfer_guard_check()
  else:
    result = run_variant(args.variant, args.model, args.batch, args.pairs)
  with open('/proc/loadavg') as f:
    result['load'] = [load_before, ' '.join(f.read().split()[:3])]
  print(json.dumps(result, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main(sys.argv[1:])
