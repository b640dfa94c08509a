"""AdamW with linear warm-up and decay, global-norm clipping, no decay on biases and LayerNorm, and optional
per-parameter learning-rate multipliers."""

import re
from collections.abc import Sequence

import jax
import optax
from ml_collections import ConfigDict

# LayerNorm parameters are named scale/bias and dense biases bias: none of them decays.
_NO_DECAY = ('bias', 'scale')


def learning_rate_schedule(cfg: ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to cfg.learning_rate, then linear decay to 0 at cfg.total_steps."""
  if not 0 <= cfg.warmup_steps <= cfg.total_steps:
    raise ValueError(f'warmup_steps {cfg.warmup_steps} must lie in [0, total_steps={cfg.total_steps}]')
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  decay = optax.linear_schedule(cfg.learning_rate, 0.0, max(cfg.total_steps - cfg.warmup_steps, 1))
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _parameter_name(path) -> str:
  """The last name in a key path (an NNX variable adds an attribute key after it)."""
  return next(str(k.key) for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))


def decay_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: _parameter_name(path) not in _NO_DECAY, params)


def _parameter_path(path) -> str:
  """'acoustic_embeddings/projection/kernel': the names of a key path, as checkpoints and patterns write them."""
  return '/'.join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def scale_by_multipliers(multipliers: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
  """Multiplies a parameter's update by the multiplier of the first (regex, multiplier) pair whose regex matches
  its whole path, 1 where none does. After AdamW this scales the learning rate and the decoupled decay together:
  e.g. embedders a checkpoint does not provide can learn faster than the pretrained body."""
  patterns = [(re.compile(regex), float(multiplier)) for regex, multiplier in multipliers]

  def multiplier(path) -> float:
    name = _parameter_path(path)
    return next((m for regex, m in patterns if regex.fullmatch(name)), 1.0)

  def init(params):
    names = [_parameter_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for regex, _ in patterns:
      if not any(regex.fullmatch(name) for name in names):
        raise ValueError(f'optim.lr_multipliers: {regex.pattern!r} matches no parameter of the model '
                         f'(e.g. {names[:3]})')
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda path, u: u * multiplier(path), updates), state

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg: ConfigDict) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  mask=decay_mask),
      *([scale_by_multipliers(cfg.lr_multipliers)] if cfg.lr_multipliers else []),
  )
