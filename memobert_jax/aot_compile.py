"""Ahead-of-time compile check: does a config's train step fit its accelerators, and how fast could it run?

  python -m memobert_jax.aot_compile --config configs/pretrain.py:base,mesh=v5e-256 [--config.key=value ...]
      [--task mlm|visual_regression|visual_kl|acoustic_regression|all]
      [--finetune configs/finetune.py:prompt,mesh=v5e-16] [--local] [--efficiency 0.4] [--json report.json]

A preset with a TPU topology compiles for that slice on any machine with libtpu
(pip install -r requirements-tpu.txt); `--local`, or a preset without one (cpu,
gpu, gpu8), compiles for this machine's devices. Prints per-device memory and
FLOPs as XLA reports them, and estimated step time and MFU; exits non-zero when a
step does not fit, naming what to change. See docs/SCALING.md.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from memobert_jax import config_utils
from memobert_jax.training import aot, tasks

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A pretraining or finetuning config (and :variant).')
_FINETUNE = config_flags.DEFINE_config_file('finetune', None, 'A finetuning config, compiled after --config.')
_TASK = flags.DEFINE_string('task', 'all', "--config's tasks, comma-separated, or 'all' (those with positive weight).")
_LOCAL = flags.DEFINE_bool('local', False, "Compile for this machine's devices instead of the preset's topology.")
_EFFICIENCY = flags.DEFINE_float('efficiency', 0.4, 'Assumed share of the peak FLOP/s the matmuls reach (estimate).')
_JSON = flags.DEFINE_string('json', None, 'Also write the reports to this JSON file.')


def main(argv):
  config_utils.refuse_extra_arguments(argv)
  configs = [(c, _TASK.value) for c in (_CONFIG.value,) if c is not None]
  configs += [(c, 'all') for c in (_FINETUNE.value,) if c is not None]
  if not configs:
    sys.exit('error: give --config (and/or --finetune)')
  results, failures = [], []
  for config, task_arg in configs:
    names = [] if task_arg == 'all' else task_arg.split(',')
    unknown = sorted(set(names) - set(tasks.TASKS))
    if unknown:
      sys.exit(f'error: unknown task(s) {unknown}; known: {sorted(tasks.TASKS)}')
    reports, failed = aot.check(config, names, local=_LOCAL.value, efficiency=_EFFICIENCY.value)
    results += [r.to_dict(_EFFICIENCY.value) for r in reports]
    failures += failed
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)
  if failures:
    sys.exit('\n'.join(['error: does not fit:'] + failures))


if __name__ == '__main__':
  config_utils.check_command_line(sys.argv, ('config', 'finetune'))
  app.run(main)
