"""TFDS builder for MSP-IMPROV, 4 classes (spec section 5), from the licensed release in the manual dir."""

import dataclasses

import tensorflow_datasets as tfds

from data_prep.tfds_builders import base

EMOTIONS = ('anger', 'happy', 'neutral', 'sad')


@dataclasses.dataclass
class MspImprovConfig(base.ManifestConfig):
  """Where the release's parts are, relative to the manual dir (see data_prep.corpora.msp_improv)."""
  evaluation_file: str = 'Evalution.txt'
  transcript_dir: str = 'Transcripts'
  wav_dir: str = 'Audio'


class Builder(base.ManifestBuilder):
  """MSP-IMPROV through data_prep.corpora.msp_improv; acoustic features from the wavs (librosa) by default."""

  BUILDER_CONFIGS = [MspImprovConfig(name='default', labels=EMOTIONS)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  MSP-IMPROV is licensed (https://ecs.utdallas.edu/research/researchgroups/msp-lab/): put the release in the
  manual dir (`--manual_dir`) with the evaluation file, the transcripts and the audio at the paths of the
  builder config (default `Evalution.txt`, `Transcripts/`, `Audio/`).
  """

  def _manifest(self, dl_manager: tfds.download.DownloadManager) -> str:
    from data_prep.corpora import msp_improv  # the adapter is only needed when building this corpus
    config, release = self.builder_config, dl_manager.manual_dir
    output = dl_manager.download_dir / f'{self.name}_manifest' / 'manifest.jsonl'
    output.parent.mkdir(parents=True, exist_ok=True)
    msp_improv.build_manifest(release / config.evaluation_file, output,
                              transcript_dir=release / config.transcript_dir, wav_dir=release / config.wav_dir)
    return str(output)
