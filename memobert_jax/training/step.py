"""The jitted train step: gradient accumulation over micro-batches, one task per step.

Train batches are [A, b, ...]: A micro-batches of b examples, the b axis sharded
over the data-parallel mesh axes. The task is a static argument, so each task
(and each length bucket) compiles once.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from memobert_jax import sharding
from memobert_jax.training.tasks import TASKS
from memobert_jax.training.train_state import TrainState

StepFn = Callable[[TrainState, dict, str], tuple[TrainState, dict]]


def dropout_key(seed: int, step: jax.Array, micro_batch: jax.Array) -> jax.Array:
  """Reproducible from (seed, step) alone, so a resumed run draws the same masks; differs per step and
  micro-batch. Keys are split over the sharded batch, so every device draws different bits."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), micro_batch)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *, seed: int,
                    learning_rate: optax.Schedule, state_shardings: TrainState, mesh: Mesh,
                    rules: sharding.Rules, compiler_options: dict[str, str | bool | int] | None = None) -> StepFn:

  def step(state: TrainState, batch: dict, task: str) -> tuple[TrainState, dict]:
    task_fn = TASKS[task]

    def loss_sum(params, micro_batch, key):
      model = nnx.merge(graphdef, params)
      with sharding.axis_rules(rules):
        total, count, metrics = task_fn(model, micro_batch, False, key)
      return total, (count, metrics)

    value_and_grad = jax.value_and_grad(loss_sum, has_aux=True)

    def micro_step(index, micro_batch):
      return value_and_grad(state.params, micro_batch, dropout_key(seed, state.step, index))

    def accumulate(carry, inputs):
      return jax.tree.map(jnp.add, carry, micro_step(*inputs)), None

    num_micro = jax.tree.leaves(batch)[0].shape[0]
    first = jax.tree.map(lambda x: x[0], batch)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(micro_step, 0, first))
    ((total, (count, metric_sums)), grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_micro), batch))
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': total / count, f'{task}/loss': total / count, f'{task}/targets': count}
    metrics.update({f'{task}/{name}': value / count for name, value in metric_sums.items()})
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['learning_rate'] = learning_rate(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(step, static_argnames='task', donate_argnums=0,
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), compiler_options=compiler_options)


def make_eval_step(graphdef: nnx.GraphDef, *, state_shardings: TrainState, mesh: Mesh, rules: sharding.Rules,
                   compiler_options: dict[str, str | bool | int] | None = None
                   ) -> Callable[[TrainState, dict, str], tuple[jax.Array, jax.Array]]:
  """(loss sum, target count) of a task over an [A, b, ...] batch, without dropout."""

  def evaluate(state: TrainState, batch: dict, task: str) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state.params)

    def add(carry, micro_batch):
      with sharding.axis_rules(rules):
        total, count, _ = TASKS[task](model, micro_batch, True, None)
      return (carry[0] + total, carry[1] + count), None

    (total, count), _ = jax.lax.scan(add, (jnp.zeros(()), jnp.zeros(())), batch)
    return total, count

  return jax.jit(evaluate, static_argnames='task',
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
                 out_shardings=sharding.replicated(mesh), compiler_options=compiler_options)
