"""The TFDS builder shared by every corpus kind: a manifest, validated like the shard writer does, -> TFDS.

The features mirror memobert_jax/data/schema.py: id, text, speaker, session
(Text), label (int64, -1 unlabelled; names in `info.metadata['label_names']`),
visual and acoustic (Tensor [None, D] stored as raw bytes in the storage dtype;
D from the BuilderConfig, or [None, None] with the shape stored per example
when the config leaves it to the data) and visual_soft_labels (float32 [None, 8]).
The feature dimensions found in the data, the label names and any skipped
example are recorded in `info.metadata`.

Generation runs locally (a Python iterator) unless the download config names a
Beam runner or Beam options (`tfds build --beam_pipeline_options=...`, or
`DownloadConfig(beam_runner=...)`): then `_generate_examples` returns a
`beam.PTransform` and TFDS runs it in its own pipeline. Validation always runs
first, on this machine (`workers` processes), before any example is generated.
"""

import abc
import dataclasses
import functools
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_prep import manifest as manifest_lib
from memobert_jax.data import schema


@dataclasses.dataclass
class ManifestConfig(tfds.core.BuilderConfig):
  """What to build from a corpus manifest.

  Attributes:
    labels: label set in index order (None: the sorted distinct labels of the manifest).
    storage_dtype: 'float32' or 'float16' for the visual and acoustic features.
    visual_dim: the visual feature dimension (None: taken from the data).
    acoustic_dim: likewise for the acoustic features.
    max_visual_frames: store only the first frames (None: all).
    max_acoustic_frames: likewise.
    acoustic_config: `AcousticFeatureConfig` for utterances with a wav and no acoustic .npy (None: defaults).
    on_error: 'fail' or 'skip', as in data_prep.write_shards.
    workers: local processes validating the manifest.
  """
  labels: tuple[str, ...] | None = None
  storage_dtype: str = 'float32'
  visual_dim: int | None = None
  acoustic_dim: int | None = None
  max_visual_frames: int | None = None
  max_acoustic_frames: int | None = None
  acoustic_config: Any = None
  on_error: str = 'fail'
  workers: int = 1


def _frames(array: np.ndarray | None, dim: int | None, dtype: np.dtype) -> np.ndarray:
  return np.zeros((0, dim or 0), dtype) if array is None else array


def tfds_example(utt: manifest_lib.Utterance, options: manifest_lib.FeatureOptions, label_names: Sequence[str],
                 visual_dim: int | None, acoustic_dim: int | None) -> tuple[str, dict[str, Any]]:
  """(key, feature dict) of one utterance: the same loading code and values as the shard writer."""
  features = manifest_lib.load_features(utt, options)
  dtype = np.dtype(options.storage_dtype)
  return utt.id, {
      'id': utt.id,
      'text': utt.text,
      'label': manifest_lib.label_index(utt, label_names),
      'speaker': utt.speaker or '',
      'session': utt.session or '',
      'visual': _frames(features.visual, visual_dim, dtype),
      'visual_soft_labels': _frames(features.visual_soft_labels, len(schema.SOFT_LABEL_CLASSES), np.float32),
      'acoustic': _frames(features.acoustic, acoustic_dim, dtype),
  }


class ManifestBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the corpus builders: subclasses say where their manifest comes from (`_manifest`)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Schema version 1 of memobert_jax/data/schema.py.'}
  BUILDER_CONFIGS = [ManifestConfig(name='default')]
  _use_beam = False  # set per download_and_prepare call

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's own code_path needs the `importlib_resources` backport for any builder that lives in a
    # package (it lists it only for Python < 3.9); the file of the class is what it computes anyway.
    return epath.Path(inspect.getfile(cls))

  @abc.abstractmethod
  def _manifest(self, dl_manager: tfds.download.DownloadManager) -> str:
    """Path of the manifest to build from (written by a corpus adapter if needed)."""

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    dtype = np.dtype(config.storage_dtype)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'text': tfds.features.Text(doc='raw transcript; tokenized by the loader'),
            'label': tfds.features.Scalar(np.int64, doc='index into metadata["label_names"], -1 if unlabelled'),
            'speaker': tfds.features.Text(),
            'session': tfds.features.Text(),
            'visual': tfds.features.Tensor(shape=(None, config.visual_dim), dtype=dtype, encoding='bytes'),
            'visual_soft_labels': tfds.features.Tensor(shape=(None, len(schema.SOFT_LABEL_CLASSES)),
                                                       dtype=np.float32, encoding='bytes'),
            'acoustic': tfds.features.Tensor(shape=(None, config.acoustic_dim), dtype=dtype, encoding='bytes'),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config):
    # TFDS uses Beam exactly when the download config names a runner or options; generation follows suit.
    self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
    return super()._download_and_prepare(dl_manager, download_config)

  def _feature_options(self, dl_manager: tfds.download.DownloadManager) -> manifest_lib.FeatureOptions:
    config = self.builder_config
    # Features extracted from wavs during validation are cached so generation does not extract them again.
    return manifest_lib.FeatureOptions(config.storage_dtype, config.max_visual_frames, config.max_acoustic_frames,
                                       config.acoustic_config,
                                       cache_dir=os.fspath(dl_manager.download_dir / f'{self.name}_acoustic_cache'))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    options = self._feature_options(dl_manager)
    with manifest_lib.worker_map(config.workers) as imap:
      validated = manifest_lib.validate(self._manifest(dl_manager), labels=config.labels, options=options,
                                        on_error=config.on_error, imap=imap, visual_dim=config.visual_dim,
                                        acoustic_dim=config.acoustic_dim)
    self.info.metadata.update({
        'schema_version': schema.SCHEMA_VERSION, 'label_names': validated.label_names,
        'visual_dim': validated.visual_dim, 'acoustic_dim': validated.acoustic_dim,
        'storage_dtype': config.storage_dtype, 'soft_label_classes': list(schema.SOFT_LABEL_CLASSES),
        'skipped': [p.to_dict() for p in validated.problems],
    })
    make_example = functools.partial(tfds_example, options=options, label_names=validated.label_names,
                                     visual_dim=validated.visual_dim, acoustic_dim=validated.acoustic_dim)
    return {split: self._generate_examples(utterances, make_example)
            for split, utterances in validated.by_split().items()}

  def _generate_examples(self, utterances: Sequence[manifest_lib.Utterance], make_example):
    if self._use_beam:
      beam = tfds.core.lazy_imports.apache_beam
      return beam.Create(list(utterances)) | beam.Map(make_example)
    return map(make_example, utterances)
