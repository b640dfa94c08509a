"""Finetuning on one fold: `python -m memobert_jax.finetune --config configs/finetune.py:prompt,fold=3 --workdir DIR`.

Results (validation-selected model, scored once on the test speaker) go to DIR/results.json.
"""

import os
import sys

from absl import app, logging

from memobert_jax import config_utils
from memobert_jax.training import finetuning

_CONFIG, _WORKDIR, _ALLOW_CONFIG_CHANGE = config_utils.define_run_flags(
    'Folder for results, the selected model and TensorBoard logs.')


def main(argv):
  config_utils.refuse_extra_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  results = finetuning.finetune(_CONFIG.value, os.path.abspath(_WORKDIR.value),
                                allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  print(f"fold {results['fold']}: best step {results['best_step']}, valid UA {100 * results['valid']['ua']:.2f}, "
        f"test WA {100 * results['test']['wa']:.2f} UA {100 * results['test']['ua']:.2f} -> {_WORKDIR.value}")


if __name__ == '__main__':
  config_utils.check_command_line(sys.argv)
  app.run(main)
