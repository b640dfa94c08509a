"""Builds one of these TFDS datasets without the `tfds` CLI.

  python -m data_prep.tfds_builders memobert_manifest --manual_dir CORPUS [--data_dir ~/tensorflow_datasets]

TFDS 4.9.10's `tfds build` imports apache-beam and mlcroissant at start-up,
whether Beam is used or not; this entry point needs neither: it calls
`download_and_prepare` as `tfds build` does, without Beam. Other settings
(float16, label set, skip mode, workers) are a `ManifestConfig` passed from
Python (docs/DATA.md).
"""

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

BUILDERS = ('memobert_manifest', 'iemocap_memobert', 'msp_improv_memobert')


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('builder', choices=BUILDERS)
  parser.add_argument('--manual_dir', required=True, help='the manifest folder, or the licensed release')
  parser.add_argument('--data_dir', default=None, help='TFDS data dir (default: ~/tensorflow_datasets)')
  parser.add_argument('--config', default=None, help='builder config name (default: the first)')
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow_datasets as tfds  # after the log level is set
  module = importlib.import_module(f'data_prep.tfds_builders.{args.builder}.{args.builder}_dataset_builder')
  builder = module.Builder(config=args.config, data_dir=args.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f'{builder.info.full_name}: {splits} -> {builder.data_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
