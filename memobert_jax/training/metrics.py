"""Metric logging that never makes the host wait for the device.

The loop hands each step's metrics (device arrays) to `LateMetrics`, which
returns the previous step's values: by then that step has finished, so reading
them costs no stall while the current step runs.
"""

import collections
import contextlib
import glob
import itertools
import os
import socket
import time

import jax
import numpy as np
import tqdm
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util


class LateMetrics:

  def __init__(self):
    self._pending: tuple[int, dict] | None = None

  def push(self, step: int, metrics: dict) -> tuple[int, dict[str, float]] | None:
    """Queues this step's metrics; returns the previous step's (step, host values), if any."""
    previous, self._pending = self._pending, (step, metrics)
    return None if previous is None else _to_host(*previous)

  def flush(self) -> tuple[int, dict[str, float]] | None:
    previous, self._pending = self._pending, None
    return None if previous is None else _to_host(*previous)


def _to_host(step: int, metrics: dict) -> tuple[int, dict[str, float]]:
  return step, {k: float(v) for k, v in jax.device_get(metrics).items()}


class SummaryWriter:
  """TensorBoard scalars, written by process 0 only.

  Writes the records tf.summary.scalar writes (scalar-plugin tensor summaries in a TFRecord event file)
  without importing TensorFlow, which would cost every run seconds at start and could take the GPU."""

  _files_opened = itertools.count()  # Two writers of one process in one second still get their own files.

  def __init__(self, logdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      folder = epath.Path(logdir)
      folder.mkdir(parents=True, exist_ok=True)
      name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.'
              f'{next(self._files_opened)}.v2')
      self._records = record_writer.RecordWriter((folder / name).open('wb'))
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
      self._metadata = scalar_metadata.create_summary_metadata(display_name='', description='')

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, metadata=self._metadata,
                                  tensor=tensor_util.make_tensor_proto(np.float32(value)))
        for name, value in values.items()])
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    if self.enabled:
      self._records.flush()

  def close(self) -> None:
    if self.enabled:
      self._records.close()


def progress_bar(total: int, initial: int, description: str) -> tqdm.tqdm:
  """A console bar with ETA, shown by process 0 only."""
  return tqdm.tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True,
                   disable=jax.process_index() != 0, mininterval=1.0)


def step_flops(compiled, micro_batches: int) -> float:
  """FLOPs per device of one train step, from XLA's cost analysis of the compiled step. XLA counts a while
  loop's body once, and the gradient-accumulation scan runs it once per micro-batch (the optimizer update
  outside the loop is then counted micro_batches times: < 0.1 % of a base step)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)) * micro_batches


class Goodput:
  """A run's wall time split into training steps and the time lost to anything else (compiles, input waits,
  checkpoints, evaluation), as MaxText reports it: goodput = share of the wall time left to the steps."""

  def __init__(self):
    self.start = time.perf_counter()
    self.lost = collections.Counter()

  @contextlib.contextmanager
  def losing(self, what: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.lost[what] += time.perf_counter() - start

  @property
  def lost_seconds(self) -> float:
    return sum(self.lost.values())

  def summary(self) -> dict[str, float]:
    total = time.perf_counter() - self.start
    return {'goodput': 1.0 - self.lost_seconds / total, 'time/total_s': total,
            **{f'time/{what}_s': seconds for what, seconds in sorted(self.lost.items())}}


def throughput(examples: int, tokens: int, seconds: float) -> dict[str, float]:
  seconds = max(seconds, 1e-9)
  return {'examples_per_second': examples / seconds, 'tokens_per_second': tokens / seconds}


def batch_tokens(batch: dict) -> int:
  """Valid (non-padding) positions of all modalities in a host batch."""
  return int(sum(np.asarray(batch[k]).sum() for k in ('text_mask', 'visual_mask', 'acoustic_mask') if k in batch))


def read_scalars(logdir: str) -> dict[str, dict[int, float]]:
  """Every scalar in a TensorBoard log folder: {tag: {step: value}} (a later write of a step wins)."""
  from tensorboard.backend.event_processing import event_accumulator  # Only readers need it.
  scalars: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    events = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    for tag in events.Tags()['tensors']:
      for event in events.Tensors(tag):
        scalars.setdefault(tag, {})[event.step] = float(tensor_util.make_ndarray(event.tensor_proto))
  return scalars
