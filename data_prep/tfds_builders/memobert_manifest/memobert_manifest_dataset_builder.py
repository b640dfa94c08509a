"""TFDS builder for any corpus given as a manifest (the input contract of docs/DATA.md)."""

import tensorflow_datasets as tfds

from data_prep.tfds_builders import base

MANIFEST_FILE = 'manifest.jsonl'


class Builder(base.ManifestBuilder):
  """A corpus manifest: `manifest.jsonl` in the manual dir, feature paths relative to it."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put the corpus manifest as `{MANIFEST_FILE}` in the manual dir (`--manual_dir`), with the feature files
  it names at their paths relative to that folder (see docs/DATA.md for the format).
  """

  def _manifest(self, dl_manager: tfds.download.DownloadManager) -> str:
    return str(dl_manager.manual_dir / MANIFEST_FILE)
