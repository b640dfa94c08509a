"""Accelerator facts and the devices an ahead-of-time compile targets.

A mesh preset with a `topology` (configs/common.py MESHES) names a TPU slice in
libtpu's spelling ('v5e:4x4'); with libtpu installed (requirements-tpu.txt),
`jax.experimental.topologies` turns it into compile-only TPU devices on any
machine, so a pod config can be compiled and measured without the pod.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Sequence

import jax
from jax.experimental import topologies
from ml_collections import ConfigDict

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published figures of one JAX device (a chip; v4/v5p megacore chips count as one device)."""
  name: str
  hbm_bytes: int
  peak_bf16_flops: float  # dense, per second
  # Per-chip share of the slice's published all-reduce bandwidth, bytes/s (0: unknown, no estimate).
  allreduce_bytes_per_s: float = 0.0


# Keyed by jax.Device.device_kind. Sources: the Cloud TPU system-architecture pages (peak bf16, HBM, and
# "all-reduce bandwidth per Pod" / chips: v4 1.1 PB/s / 4096, v5e 51.2 TB/s / 256, v6e 102.4 TB/s / 256;
# v5p publishes 1200 GB/s bidirectional ICI per chip, halved as for v5e and v6e) and NVIDIA's datasheets.
CHIPS = {
    'TPU v4': Chip('v4', 32 * GiB, 275e12, 270e9),
    'TPU v5 lite': Chip('v5e', 16 * GiB, 197e12, 200e9),
    'TPU v5': Chip('v5p', 95 * GiB, 459e12, 600e9),
    'TPU v5p': Chip('v5p', 95 * GiB, 459e12, 600e9),
    'TPU v6 lite': Chip('v6e', 32 * GiB, 918e12, 400e9),
    'NVIDIA H100 80GB HBM3': Chip('h100', 80 * GiB, 989e12),
    'NVIDIA H200': Chip('h200', 141 * GiB, 989e12),
    'NVIDIA A100-SXM4-80GB': Chip('a100', 80 * GiB, 312e12),
    'NVIDIA A100-SXM4-40GB': Chip('a100', 40 * GiB, 312e12),
}


def chip_of(device: jax.Device) -> Chip | None:
  """The device's figures, or None (CPU, or an accelerator missing from the table).

  A local accelerator that reports its memory limit is believed over the table.
  """
  chip = CHIPS.get(device.device_kind)
  try:
    stats = device.memory_stats() or {}
  except Exception:  # compile-only TPU devices and CPUs have no memory statistics
    stats = {}
  if chip and stats.get('bytes_limit'):
    chip = dataclasses.replace(chip, hbm_bytes=int(stats['bytes_limit']))
  return chip


def libtpu_available() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def topology_devices(mesh_cfg: ConfigDict) -> list[jax.Device]:
  """Compile-only TPU devices of the preset's slice (one per chip), on any machine with libtpu installed."""
  if not mesh_cfg.topology:
    raise ValueError(f'mesh preset {mesh_cfg.name!r} names no TPU topology: compile it for the local devices '
                     f'(--local) or pick a TPU preset')
  if not libtpu_available():
    raise RuntimeError('compiling for a TPU topology needs libtpu: pip install -r requirements-tpu.txt '
                       '(or run with --local to compile for this machine\'s devices)')
  # libtpu takes a lockfile meant for real chips; compile-only devices need none, so let other processes
  # (tests, a second check) load it too.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  options = {}
  if mesh_cfg.chip_config:
    options['chip_config_name'] = mesh_cfg.chip_config
  if mesh_cfg.chips_per_host:
    options['chips_per_host_bounds'] = tuple(mesh_cfg.chips_per_host)
  return list(topologies.get_topology_desc(topology_name=mesh_cfg.topology, platform='tpu', **options).devices)


def describe(devices: Sequence[jax.Device]) -> str:
  """'16 x TPU v5 lite on 4 hosts'."""
  hosts = len({d.process_index for d in devices})
  return f'{len(devices)} x {devices[0].device_kind} on {hosts} host{"s" if hosts > 1 else ""}'
