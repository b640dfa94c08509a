"""TFDS builder for IEMOCAP, 4 classes (spec section 5), from the licensed release in the manual dir."""

import dataclasses

import tensorflow_datasets as tfds

from data_prep.tfds_builders import base

EMOTIONS = ('anger', 'happy', 'neutral', 'sad')


@dataclasses.dataclass
class IemocapConfig(base.ManifestConfig):
  """`sessions`: the release's sessions to read (all five by default)."""
  sessions: tuple[int, ...] = (1, 2, 3, 4, 5)


class Builder(base.ManifestBuilder):
  """IEMOCAP through data_prep.corpora.iemocap; acoustic features from the wavs (librosa) by default."""

  BUILDER_CONFIGS = [IemocapConfig(name='default', labels=EMOTIONS)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  IEMOCAP is licensed (https://sail.usc.edu/iemocap/): put the release folder holding Session1..Session5
  in the manual dir (`--manual_dir`).
  """

  def _manifest(self, dl_manager: tfds.download.DownloadManager) -> str:
    from data_prep.corpora import iemocap  # the adapter is only needed when building this corpus
    output = dl_manager.download_dir / f'{self.name}_manifest' / 'manifest.jsonl'
    output.parent.mkdir(parents=True, exist_ok=True)
    iemocap.build_manifest(dl_manager.manual_dir, output, sessions=self.builder_config.sessions)
    return str(output)
