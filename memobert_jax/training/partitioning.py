"""Mesh construction and logical-axis -> mesh-axis resolution."""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memobert_jax.model.sharding import Rules, logical_to_spec


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


def _fit_to_mesh(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Replicates a dimension whose size the mesh axes do not divide (e.g. 8 classes over 16 devices)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else (axes or ())
    size = int(np.prod([mesh.shape[a] for a in names]))
    fitted.append(axes if dim % size == 0 else None)
  return PartitionSpec(*fitted)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
  """NamedShardings for every variable of an NNX state, from its `out_sharding` logical axes."""

  def sharding(variable: nnx.Variable) -> nnx.Variable:
    axes = variable.get_metadata().get('out_sharding') or (None,) * variable.ndim
    spec = _fit_to_mesh(logical_to_spec(axes, rules), variable.shape, mesh)
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Shards the leading (example) axis of every batch array over the data-parallel axes."""
  return NamedSharding(mesh, logical_to_spec(('batch',), rules))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the example axis is split."""
  axes = logical_to_spec(('batch',), rules)[0]
  names = (axes,) if isinstance(axes, str) else (axes or ())
  return int(np.prod([mesh.shape[a] for a in names]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
