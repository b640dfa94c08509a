"""Validates a manifest and writes it as TFRecord shards (the format of memobert_jax/data/schema.py).

  python -m data_prep.write_shards --manifest corpus/manifest.jsonl --output data/corpus \
      --num_shards 16 --workers 8 [--labels anger,happy,neutral,sad] [--storage_dtype float16] \
      [--on_error fail|skip] [--max_visual_frames N] [--max_acoustic_frames N]
      [--wav2vec2 CHECKPOINT | --whisper CHECKPOINT [--encoder_layer -1] | librosa flags: --kinds ...]

Every example is validated before any shard is written; with `--on_error fail`
(default) any problem stops the job and all problems are listed, with `skip`
the examples with problems are left out and listed in `summary.json`.

Shard assignment is deterministic: within a split, utterances are ordered by the
SHA-256 of their id and dealt round-robin, example k to shard k mod N (equal
shard sizes; the hash order also spreads a session over all shards). Each shard
is written to a temporary file in the output folder and renamed into place;
`.state/<shard>.json`, written after the rename, records its content digest,
size and SHA-256. A re-run keeps every shard whose file and record still match
and writes only the others, so a job killed at any point can simply be run again.
`metadata.json` is removed when writing starts and written last: its presence
means the folder is complete.
"""

import argparse
import collections
import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep import manifest as manifest_lib
from memobert_jax.data import normalization, schema

STATE_DIR = '.state'
CACHE_DIR = '.cache'
SUMMARY_FILE = 'summary.json'


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """One shard to write: its file, its utterances in order, and a digest of everything that goes into it."""
  split: str
  file: str
  utterances: tuple[manifest_lib.Utterance, ...]
  digest: str


def assign_shards(utterances: Sequence[manifest_lib.Utterance], num_shards: int) -> list[list[manifest_lib.Utterance]]:
  """Deterministic assignment: order by SHA-256 of the id, then round-robin (shard sizes differ by at most one)."""
  ordered = sorted(utterances, key=lambda u: hashlib.sha256(u.id.encode('utf-8')).digest())
  return [ordered[i::num_shards] for i in range(num_shards)]


def plan_shards(validated: manifest_lib.ValidatedManifest, num_shards: int,
                options: manifest_lib.FeatureOptions) -> list[ShardPlan]:
  """The shards of every split, each with a digest of the job options and of its utterances' fingerprints."""
  settings = {
      'schema_version': schema.SCHEMA_VERSION, 'storage_dtype': options.storage_dtype,
      'max_visual_frames': options.max_visual_frames, 'max_acoustic_frames': options.max_acoustic_frames,
      'labels': validated.label_names, 'visual_dim': validated.visual_dim, 'acoustic_dim': validated.acoustic_dim,
      'acoustic_config': _acoustic_config_if_used(validated, options),
  }
  plans = []
  for split, utterances in validated.by_split().items():
    for index, shard in enumerate(assign_shards(utterances, num_shards)):
      digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
      for utt in shard:
        digest.update(validated.infos[utt.id].fingerprint.encode())
      plans.append(ShardPlan(split, schema.shard_file_name(split, index, num_shards), tuple(shard), digest.hexdigest()))
  return plans


def _acoustic_config_if_used(validated: manifest_lib.ValidatedManifest,
                             options: manifest_lib.FeatureOptions) -> dict[str, Any] | None:
  if any(validated.infos[u.id].acoustic_from_wav for u in validated.utterances):
    return options.acoustic_config_dict()
  return None


def extract_from_wavs(manifest: str | os.PathLike, options: manifest_lib.FeatureOptions, progress: bool) -> dict:
  """Extracts the acoustic frames of every utterance that has a wav and no acoustic .npy into the cache, in
  batches (wav2vec 2.0 runs jitted, on the accelerator when there is one), before validation reads them.

  Returns what the summary says of the audio: how many wavs were resampled, from which rates.
  """
  utterances, _ = manifest_lib.read_manifest(manifest)
  wavs = [u for u in utterances if u.wav and not u.acoustic and os.path.isfile(u.wav)]
  if not wavs:
    return {'from_wav': 0}
  from data_prep import acoustic_features  # librosa, jax and PyAV only where a manifest has wavs
  from memobert_jax.features import media
  config = options.resolved_acoustic_config()
  target = acoustic_features.sample_rate(config)
  rates = collections.Counter()
  for utt in wavs:
    with contextlib.suppress(media.MediaError):  # an unreadable wav is validation's to report, naming it
      rates[media.probe(utt.wav).audio_sample_rate] += 1
  todo = [(u, manifest_lib.wav_cache_path(u, options)) for u in wavs]
  todo = [(u, cache) for u, cache in todo if not os.path.exists(cache)]
  if isinstance(config, acoustic_features.SpeechEncoderConfig):
    batch = config.batch_size * 8  # the extractor sorts each chunk by length into its own batches
    for start in tqdm(range(0, len(todo), batch), desc=config.model, unit=f' x{batch} wavs', disable=not progress):
      chunk = todo[start:start + batch]
      with contextlib.suppress(Exception):  # validation extracts a failing chunk one wav at a time, naming it
        for (_, cache), features in zip(chunk, acoustic_features.extract_batch([u.wav for u, _ in chunk], config)):
          manifest_lib.save_cached(cache, features)
  return {'from_wav': len(wavs), 'sample_rate': target,
          'resampled': {str(rate): count for rate, count in sorted(rates.items()) if rate != target}}


def _recorded_extractors(manifest: str | os.PathLike) -> dict:
  """MANIFEST.features.json: how the job that wrote the manifest made its features (data_prep/corpora/video.py)."""
  path = f'{os.fspath(manifest)}.features.json'
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _state_path(output_dir: str, file: str) -> str:
  return os.path.join(output_dir, STATE_DIR, file + '.json')


def finished_shard(output_dir: str, plan: ShardPlan) -> tuple[schema.ShardInfo, dict] | None:
  """The shard's record and frame moments if its file exists and matches what this plan would write, else None."""
  try:
    with open(_state_path(output_dir, plan.file), encoding='utf-8') as f:
      state = json.load(f)
    path = os.path.join(output_dir, plan.file)
    if (state['digest'] != plan.digest or state['num_examples'] != len(plan.utterances) or
        os.path.getsize(path) != state['num_bytes'] or schema.sha256_file(path) != state['sha256']):
      return None
  except (OSError, ValueError, KeyError):
    return None
  return schema.ShardInfo(plan.file, state['num_examples'], state['num_bytes'], state['sha256']), state['moments']


def _write_records(path: str, plan: ShardPlan, options: manifest_lib.FeatureOptions,
                   label_names: Sequence[str]) -> dict[str, list]:
  """Writes the plan's examples to a TFRecord file and fsyncs it; returns the moments of their stored frames."""
  import tensorflow as tf  # only shard-writing processes pay for the import
  dtype = schema.storage_dtype(options.storage_dtype)
  moments = {'visual': [], 'acoustic': []}
  with tf.io.TFRecordWriter(path) as writer:
    for utt in plan.utterances:
      features = manifest_lib.load_features(utt, options)
      for name in moments:
        frames = getattr(features, name)
        if frames is not None and len(frames):
          moments[name].append(normalization.moments(frames.astype(dtype)))
      writer.write(schema.encode_example(
          example_id=utt.id, text=utt.text, label=manifest_lib.label_index(utt, label_names), speaker=utt.speaker,
          session=utt.session, visual=features.visual, visual_soft_labels=features.visual_soft_labels,
          acoustic=features.acoustic, dtype=dtype))
  with open(path, 'rb') as f:
    os.fsync(f.fileno())
  return moments


def write_shard(plan: ShardPlan, output_dir: str, options: manifest_lib.FeatureOptions,
                label_names: Sequence[str]) -> tuple[schema.ShardInfo, dict]:
  """Writes one shard atomically (temporary file, fsync, rename), then its state record.

  Also returns the moments of its frames (as stored), from which the split's feature statistics follow.
  A failed or interrupted write removes its temporary file (only a killed process leaves one, for the next run).
  """
  final = os.path.join(output_dir, plan.file)
  tmp = os.path.join(output_dir, f'.{plan.file}.tmp-{os.getpid()}')
  try:
    moments = _write_records(tmp, plan, options, label_names)
    info = schema.ShardInfo(plan.file, len(plan.utterances), os.path.getsize(tmp), schema.sha256_file(tmp))
    os.replace(tmp, final)
  except BaseException:  # KeyboardInterrupt too
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  moments = {name: normalization.merge(parts) for name, parts in moments.items()}
  state = dataclasses.asdict(info) | {'digest': plan.digest, 'moments': moments}
  schema.atomic_write_text(_state_path(output_dir, plan.file), json.dumps(state))
  return info, moments


def _clean_leftovers(output_dir: str, plans: Sequence[ShardPlan]) -> list[str]:
  """Removes temporary files of killed runs and shards of earlier runs that this plan does not have.

  Only files this job writes are touched: temporaries (`*.tmp-<pid>`) and shards that have a state record.
  """
  state_dir = os.path.join(output_dir, STATE_DIR)
  for directory in (output_dir, state_dir):
    for name in os.listdir(directory):
      if '.tmp-' in name:
        os.remove(os.path.join(directory, name))
  wanted = {p.file for p in plans}
  removed = []
  for state in sorted(glob.glob(os.path.join(state_dir, '*.tfrecord.json'))):
    file = os.path.basename(state)[:-len('.json')]
    if file not in wanted:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, file))
      os.remove(state)
      removed.append(file)
  return removed


def _stats(values: Sequence[float]) -> dict[str, float | int]:
  if not values:
    return {'count': 0}
  array = np.asarray(values, np.float64)
  return {'count': len(values), 'min': float(array.min()), 'mean': round(float(array.mean()), 2),
          'p50': float(np.percentile(array, 50)), 'p95': float(np.percentile(array, 95)), 'max': float(array.max())}


def _count_over(lengths: Sequence[int], cap: int | None) -> int:
  return 0 if cap is None else sum(n > cap for n in lengths)


def summarize(validated: manifest_lib.ValidatedManifest, options: manifest_lib.FeatureOptions) -> dict[str, Any]:
  """Counts per split and label, length statistics (full lengths, before caps) and the skipped examples."""
  infos = [validated.infos[u.id] for u in validated.utterances]
  splits = {}
  for split, utterances in validated.by_split().items():
    labels = collections.Counter(u.label if u.label is not None else '<unlabelled>' for u in utterances)
    splits[split] = {'num_examples': len(utterances), 'labels': dict(sorted(labels.items()))}
  labels = collections.Counter(u.label if u.label is not None else '<unlabelled>' for u in validated.utterances)
  visual = [i.visual_frames for i in infos if i.visual_dim is not None]
  acoustic = [i.acoustic_frames for i in infos if i.acoustic_dim is not None]
  summary = {
      'manifest': os.path.abspath(validated.path),
      'num_examples': len(validated.utterances),
      'splits': splits,
      'labels': dict(sorted(labels.items())),
      'label_names': validated.label_names,
      'feature_dims': {'visual': validated.visual_dim, 'acoustic': validated.acoustic_dim},
      'storage_dtype': options.storage_dtype,
      'modalities': {
          'visual': len(visual), 'visual_soft_labels': sum(i.has_soft_labels for i in infos),
          'acoustic': len(acoustic), 'acoustic_from_wav': sum(i.acoustic_from_wav for i in infos),
      },
      'lengths': {
          'text_chars': _stats([len(u.text) for u in validated.utterances]),
          'text_words': _stats([len(u.text.split()) for u in validated.utterances]),
          'visual_frames': _stats(visual),
          'acoustic_frames': _stats(acoustic),
      },
      'frame_caps': {'max_visual_frames': options.max_visual_frames,
                     'max_acoustic_frames': options.max_acoustic_frames},
      'truncated': {'visual': _count_over(visual, options.max_visual_frames),
                    'acoustic': _count_over(acoustic, options.max_acoustic_frames)},
      'skipped': [p.to_dict() for p in validated.problems],
  }
  return summary


def write_shards(manifest: str | os.PathLike, output_dir: str | os.PathLike, *, num_shards: int = 1, workers: int = 1,
                 labels: Sequence[str] | None = None, storage_dtype: str = 'float32', on_error: str = 'fail',
                 max_visual_frames: int | None = None, max_acoustic_frames: int | None = None,
                 acoustic_config: Any = None, name: str | None = None, command: Sequence[str] | None = None,
                 progress: bool = True) -> dict[str, Any]:
  """Validates `manifest` and writes its splits as `num_shards` TFRecord shards each into `output_dir`.

  Args:
    manifest: JSONL manifest (docs/DATA.md).
    output_dir: dataset folder; created if needed. Shards finished by an earlier run of the same job are kept.
    num_shards: shards per split (a split with fewer examples gets some empty shards).
    workers: processes validating and writing in parallel.
    labels: the label set in index order; None: the sorted distinct labels of the manifest.
    storage_dtype: 'float32' or 'float16' for visual and acoustic features.
    on_error: 'fail' raises `manifest.ManifestError` before anything is written; 'skip' leaves the examples
      with problems out and lists them in the summary.
    max_visual_frames: store only the first frames (None: full length; the loader caps to its config).
    max_acoustic_frames: likewise.
    acoustic_config: `AcousticFeatureConfig` for utterances with a wav and no acoustic .npy.
    name: dataset name in the metadata (default: the output folder's name).
    command: the command line to record in the metadata.
    progress: show progress bars.

  Returns:
    The summary, also written to `output_dir/summary.json`.
  """
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  start = time.time()
  output_dir = os.path.abspath(os.fspath(output_dir))
  options = manifest_lib.FeatureOptions(storage_dtype, max_visual_frames, max_acoustic_frames, acoustic_config,
                                        cache_dir=os.path.join(output_dir, CACHE_DIR))
  audio = extract_from_wavs(manifest, options, progress)
  with manifest_lib.worker_map(workers) as imap:
    validated = manifest_lib.validate(manifest, labels=labels, options=options, on_error=on_error, imap=imap,
                                      progress=progress)
    plans = plan_shards(validated, num_shards, options)
    os.makedirs(os.path.join(output_dir, STATE_DIR), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(output_dir, schema.METADATA_FILE))
    removed = _clean_leftovers(output_dir, plans)
    done = {p.file: finished_shard(output_dir, p) for p in plans}
    todo = [p for p in plans if done[p.file] is None]
    task = functools.partial(write_shard, output_dir=output_dir, options=options,
                             label_names=validated.label_names)
    for info, moments in tqdm((imap or map)(task, todo), total=len(todo), desc='writing shards', unit=' shards',
                              disable=not progress):
      done[info.file] = info, moments
  split_infos, split_moments = {}, {}
  for plan in plans:
    info, moments = done[plan.file]
    split = split_infos.setdefault(plan.split, schema.SplitInfo(0, []))
    split.shards.append(info)
    split.num_examples += info.num_examples
    split_moments.setdefault(plan.split, []).append(moments)
  for name, split in split_infos.items():
    for modality in ('visual', 'acoustic'):
      stats = normalization.from_moments(normalization.merge(m[modality] for m in split_moments[name]))
      if stats is not None:
        split.feature_stats[modality] = stats.to_json()
  metadata = schema.DatasetMetadata(
      name=name or os.path.basename(output_dir), label_names=validated.label_names, visual_dim=validated.visual_dim,
      acoustic_dim=validated.acoustic_dim, storage_dtype=storage_dtype, splits=split_infos,
      max_visual_frames=max_visual_frames, max_acoustic_frames=max_acoustic_frames,
      acoustic_extractor=_acoustic_config_if_used(validated, options),
      visual_extractor=_recorded_extractors(manifest).get('visual'),
      created_by={'command': list(command) if command is not None else None,
                  'manifest': os.path.abspath(os.fspath(manifest)), 'num_shards': num_shards, 'on_error': on_error})
  summary = summarize(validated, options)
  summary['audio'] = audio
  written = [p.file for p in todo]
  summary['shards'] = {'written': written, 'kept': [p.file for p in plans if p.file not in written],
                       'removed_stale': removed}
  summary['seconds'] = round(time.time() - start, 2)
  schema.atomic_write_text(os.path.join(output_dir, SUMMARY_FILE), json.dumps(summary, indent=2))
  metadata.save(output_dir)
  return summary


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  from data_prep import acoustic_features  # its flags configure the extractor used for wav-only utterances
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--manifest', required=True, help='JSONL manifest (paths relative to its folder)')
  parser.add_argument('--output', required=True, help='dataset folder')
  parser.add_argument('--num_shards', type=int, default=1, help='shards per split')
  parser.add_argument('--workers', type=int, default=1, help='local worker processes')
  parser.add_argument('--labels', default=None, help='comma-separated label set in index order (default: the data)')
  parser.add_argument('--storage_dtype', choices=schema.STORAGE_DTYPES, default='float32')
  parser.add_argument('--on_error', choices=('fail', 'skip'), default='fail')
  parser.add_argument('--max_visual_frames', type=int, default=None, help='store only the first N (default: all)')
  parser.add_argument('--max_acoustic_frames', type=int, default=None, help='store only the first N (default: all)')
  parser.add_argument('--name', default=None, help='dataset name (default: the output folder name)')
  parser.add_argument('--quiet', action='store_true', help='no progress bars')
  group = parser.add_argument_group('acoustic frames of utterances with a wav and no acoustic .npy: a speech '
                                    'encoder (--wav2vec2 or --whisper) or the librosa extractor')
  encoders = group.add_mutually_exclusive_group()
  encoders.add_argument('--wav2vec2', default=None, help='a Hugging Face wav2vec 2.0 / HuBERT checkpoint folder')
  encoders.add_argument('--whisper', default=None, help='a Hugging Face or CTranslate2 Whisper checkpoint folder')
  group.add_argument('--encoder_layer', '--wav2vec2_layer', type=int, default=-1,
                     help='the speech encoder\'s hidden state taken (-1: the last)')
  group.add_argument('--encoder_batch_size', '--wav2vec2_batch_size', type=int, default=8,
                     help='waveforms per jitted batch of the speech encoder')
  acoustic_features.add_config_flags(group)
  args = parser.parse_args(argv)
  checkpoint, model = (args.wav2vec2, 'wav2vec2') if args.wav2vec2 else (args.whisper, 'whisper')
  args.acoustic_config = (acoustic_features.SpeechEncoderConfig(checkpoint, layer=args.encoder_layer, pool=args.pool,
                                                                max_frames=args.max_frames or None,
                                                                max_seconds=args.max_seconds,
                                                                batch_size=args.encoder_batch_size, model=model)
                          if checkpoint else acoustic_features.config_from_args(args))
  return args


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before the workers spawn: they inherit it
  args = _parse_args(argv)
  try:
    summary = write_shards(
        args.manifest, args.output, num_shards=args.num_shards, workers=args.workers,
        labels=args.labels.split(',') if args.labels else None, storage_dtype=args.storage_dtype,
        on_error=args.on_error, max_visual_frames=args.max_visual_frames, max_acoustic_frames=args.max_acoustic_frames,
        acoustic_config=args.acoustic_config, name=args.name, command=sys.argv if argv is None else list(argv),
        progress=not args.quiet)
  except manifest_lib.ManifestError as e:
    print(e, file=sys.stderr)
    return 1
  for problem in summary['skipped']:
    print(f'skipped {problem["id"]}: {problem["file"]}: {problem["problem"]}', file=sys.stderr)
  splits = ', '.join(f'{name} {s["num_examples"]}' for name, s in summary['splits'].items())
  print(f'{summary["num_examples"]} examples ({splits}), {len(summary["skipped"])} skipped; shards written '
        f'{len(summary["shards"]["written"])}, kept {len(summary["shards"]["kept"])} -> {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
