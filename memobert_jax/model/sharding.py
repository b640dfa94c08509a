"""Logical axis names -> mesh axes, for the parameters and for the activations the model pins.

Parameters carry logical names (Dense(..., ('embed', 'mlp'))); the config's rules table maps
them onto mesh axes. The model also pins its hidden states to ('batch', 'length',
'activation_embed'): without that, XLA's propagation may follow an FSDP-sharded kernel and
split the hidden axis, gathering activations instead of the kernels.
"""

import contextlib
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_active_rules: Rules | None = None  # set while a step is traced under `activation_rules`


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
  table = dict(rules)
  mesh_axes = []
  for name in logical_axes:
    if name is None:
      mesh_axes.append(None)
    elif name not in table:
      raise KeyError(f'logical axis {name!r} has no entry in the logical_axis_rules {sorted(table)}')
    else:
      mesh_axes.append(table[name])
  used = [a for m in mesh_axes if m for a in ((m,) if isinstance(m, str) else m)]
  if len(used) != len(set(used)):
    raise ValueError(f'logical axes {tuple(logical_axes)} map to the mesh axes {mesh_axes} more than once')
  return PartitionSpec(*mesh_axes)


@contextlib.contextmanager
def activation_rules(rules: Rules) -> Iterator[None]:
  """Enter while tracing a step (inside its jitted function), under jax.set_mesh."""
  global _active_rules
  previous, _active_rules = _active_rules, rules
  try:
    yield
  finally:
    _active_rules = previous


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Pins x's sharding by the active rules; a no-op outside `activation_rules` or without a mesh
  (eager calls, single-device tests)."""
  if _active_rules is None or jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, _active_rules))
