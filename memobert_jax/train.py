"""MEmoBERT pretraining: `python -m memobert_jax.train --config configs/pretrain.py:tiny,mesh=cpu --workdir DIR`.

The run resumes by itself from the latest complete checkpoint in DIR/checkpoints.
"""

import os
import sys

from absl import app, logging

from memobert_jax import config_utils
from memobert_jax.training import pretraining

_CONFIG, _WORKDIR, _ALLOW_CONFIG_CHANGE = config_utils.define_run_flags(
    'Folder for checkpoints, TensorBoard logs and the config.')


def main(argv):
  config_utils.refuse_extra_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  pretraining.pretrain(_CONFIG.value, os.path.abspath(_WORKDIR.value), allow_config_change=_ALLOW_CONFIG_CHANGE.value)


if __name__ == '__main__':
  config_utils.check_command_line(sys.argv)
  app.run(main)
