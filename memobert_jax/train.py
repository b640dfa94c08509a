"""MEmoBERT pretraining: `python -m memobert_jax.train --config configs/pretrain.py:tiny,mesh=cpu --workdir DIR`.

The run resumes by itself from the latest complete checkpoint in DIR/checkpoints.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from memobert_jax import config_utils
from memobert_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (and :variant arguments).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, TensorBoard logs and the config.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue a workdir started with other settings (recorded in WORKDIR/run.json).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  loop.pretrain(_CONFIG.value, os.path.abspath(_WORKDIR.value),
                allow_config_change=_ALLOW_CONFIG_CHANGE.value)


if __name__ == '__main__':
  config_utils.check_command_line(sys.argv)
  app.run(main)
