"""Everything about laying the run out on devices: the mesh, logical-axis rules, shardings, placement.

Parameters carry logical axis names (Dense(..., ('embed', 'mlp'))); the config's
`logical_axis_rules` table maps them onto the mesh axes ('data', 'fsdp', 'tensor'). The model
also pins its hidden states to ('batch', 'length', 'activation_embed'): without that, XLA's
propagation may follow an FSDP-sharded kernel and split the hidden axis, gathering activations
instead of the kernels.

The rules are flax's logical-axis-rules context (`nnx.logical_axis_rules`, thread-local): a
jitted function enters `axis_rules(rules)` while it is traced. A pin traced under a mesh without
the rules is an error rather than a silently dropped constraint.

Batches are [A, b, ...]: A micro-batches (replicated) of b examples, the example axis split over
the data-parallel mesh axes. `to_global` places each host's own part of a global batch;
`replicated_to_global` places a batch that every host holds whole.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
axis_rules = nnx.logical_axis_rules


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all); one -1 in `shape` takes the remaining devices.

  A shape without -1 that needs fewer devices than there are uses the first ones (e.g. a one-device
  debug run on a multi-GPU host).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if -1 not in shape and int(np.prod(shape)) < len(devices):
    devices = devices[:int(np.prod(shape))]
  if shape.count(-1) > 1:
    raise ValueError(f'mesh shape {tuple(shape)} has more than one -1')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'mesh shape {tuple(shape)} does not divide {len(devices)} devices')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f'mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, there are {len(devices)}')
  # Auto axes: shardings follow from the rules and XLA's propagation (Explicit axes
  # would make every embedding lookup state its output sharding).
  return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
                       devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
  """The mesh axes of each logical axis; an axis the rules do not name is an error (never left unsharded)."""
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


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Pins x's sharding by the rules in force; a no-op without a mesh (eager calls, single-device tests).

  Raises:
    RuntimeError: traced under a mesh outside `axis_rules`, where the pin would be lost.
  """
  if jax.sharding.get_abstract_mesh().empty:
    return x
  rules = spmd.get_logical_axis_rules()
  if not rules:
    raise RuntimeError('an activation is pinned under a mesh but no logical-axis rules are in force: trace the '
                       'function inside sharding.axis_rules(config.logical_axis_rules)')
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, rules))


def _fit_to_mesh(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Replicates a dimension whose size the mesh axes do not divide (e.g. 8 classes over 16 devices)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else (axes or ())
    size = int(np.prod([mesh.shape[a] for a in names]))
    fitted.append(axes if dim % size == 0 else None)
  return PartitionSpec(*fitted)


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules) -> NamedSharding:
  axes = variable.get_metadata().get('out_sharding') or (None,) * variable.ndim
  return NamedSharding(mesh, _fit_to_mesh(logical_to_spec(axes, rules), variable.shape, mesh))


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """Shardings for a tree of NNX variables (laid out by their logical axes) and plain arrays (replicated),
  e.g. a parameter state or a whole train state with its optimizer moments and step counter."""
  is_variable = lambda x: isinstance(x, nnx.Variable)
  return jax.tree.map(
      lambda x: x.replace(variable_sharding(x, mesh, rules)) if is_variable(x) else replicated(mesh),
      tree, is_leaf=is_variable)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """[A, b, ...] arrays: micro-batch axis replicated, example axis split over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(None, *logical_to_spec(('batch',), rules)))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the example axis is split."""
  axes = logical_to_spec(('batch',), rules)[0]
  names = (axes,) if isinstance(axes, str) else (axes or ())
  return int(np.prod([mesh.shape[a] for a in names]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Host-local [A, b_local, ...] numpy arrays -> global [A, b, ...] arrays laid out on the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicated_to_global(batch: dict, sharding: NamedSharding) -> dict:
  """The same whole [A, b, ...] batch on every host -> global arrays; each host places only its own shards."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index]) for k, v in batch.items()}
