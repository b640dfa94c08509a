"""Throughput of the shard writer and of reading shards back, with the paper's shapes.

  python -m benchmarks.bench_shards [--num_examples 2000] [--workers 1,2] [--num_shards 4]

Per utterance: ~10 words of text, 36 visual frames x 342 with FER+ soft labels,
64 acoustic frames x 768 (wav2vec 2.0) or x the librosa extractor's default
dimension; storage float32 and float16. Reported (examples/s): validation alone,
the whole write job (validation + writing), reading every record with grain's
TFRecord reader and decoding it (`schema.decode_example`), the same without
decoding, and `data_prep.verify` (CRC + decode + checks). Reads are from the
page cache (the shards were just written); the job times include starting the
worker processes (each imports TensorFlow to write). The numbers go to docs/DATA.md.
"""

import argparse
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

from data_prep import manifest as manifest_lib
from data_prep import verify, write_shards
from memobert_jax.data import schema

WORDS = 'i really do not think that we should go there again tonight okay'.split()


def make_corpus(root: Path, num_examples: int, acoustic_dim: int, seed: int = 0) -> Path:
  rng = np.random.default_rng(seed)
  (root / 'feats').mkdir(parents=True)
  with open(root / 'manifest.jsonl', 'w', encoding='utf-8') as f:
    for i in range(num_examples):
      soft = rng.random((36, 8), dtype=np.float32)
      np.save(root / 'feats' / f'v{i}.npy', rng.standard_normal((36, 342), dtype=np.float32))
      np.save(root / 'feats' / f's{i}.npy', soft / soft.sum(axis=1, keepdims=True))
      np.save(root / 'feats' / f'a{i}.npy', rng.standard_normal((64, acoustic_dim), dtype=np.float32))
      text = ' '.join(rng.choice(WORDS, size=int(rng.integers(6, 15))))
      f.write(json.dumps({'id': f'u{i:06d}', 'text': text, 'label': ['anger', 'happy', 'neutral', 'sad'][i % 4],
                          'visual': f'feats/v{i}.npy', 'visual_soft_labels': f'feats/s{i}.npy',
                          'acoustic': f'feats/a{i}.npy'}) + '\n')
  return root / 'manifest.jsonl'


def _rate(count: int, seconds: float) -> float:
  return round(count / seconds, 1)


def bench_one(manifest: Path, output: Path, storage_dtype: str, workers: int, num_shards: int) -> dict:
  options = manifest_lib.FeatureOptions(storage_dtype)
  start = time.perf_counter()
  with manifest_lib.worker_map(workers) as imap:
    validated = manifest_lib.validate(manifest, options=options, imap=imap, progress=False)
  validate_s = time.perf_counter() - start
  n = len(validated.utterances)

  start = time.perf_counter()
  write_shards.write_shards(manifest, output, num_shards=num_shards, workers=workers, storage_dtype=storage_dtype,
                            progress=False)
  write_s = time.perf_counter() - start
  metadata = schema.DatasetMetadata.load(output)
  files = [str(output / f) for split in metadata.splits.values() for f in split.files]
  shard_bytes = sum(os.path.getsize(f) for f in files)

  start = time.perf_counter()
  raw = sum(1 for f in files for _ in grain.experimental.TFRecordIterDataset(f))
  raw_s = time.perf_counter() - start
  start = time.perf_counter()
  decoded = sum(1 for f in files for r in grain.experimental.TFRecordIterDataset(f) if schema.decode_example(r, metadata))
  decode_s = time.perf_counter() - start
  start = time.perf_counter()
  result = verify.verify_dataset(output)
  verify_s = time.perf_counter() - start
  assert raw == decoded == n and result.ok, result.problems
  return {
      'validate_ex_s': _rate(n, validate_s), 'write_job_ex_s': _rate(n, write_s),
      'read_raw_ex_s': _rate(n, raw_s), 'read_decode_ex_s': _rate(n, decode_s), 'verify_ex_s': _rate(n, verify_s),
      'kb_per_example': round(shard_bytes / n / 1024, 1), 'write_mb_s': round(shard_bytes / write_s / 2**20, 1),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--num_examples', type=int, default=2000)
  parser.add_argument('--workers', default='1,2', help='comma-separated worker counts to run')
  parser.add_argument('--num_shards', type=int, default=4)
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  importlib.import_module('tensorflow')  # imported once here, so no timing includes the import in this process
  from data_prep import acoustic_features  # the librosa extractor's default dimension
  librosa_dim = acoustic_features.feature_dim(acoustic_features.AcousticFeatureConfig())
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, acoustic_dim in (('wav2vec', 768), ('librosa', librosa_dim)):
      manifest = make_corpus(Path(tmp) / name, args.num_examples, acoustic_dim)
      for storage_dtype in schema.STORAGE_DTYPES:
        for workers in (int(w) for w in args.workers.split(',')):
          output = Path(tmp) / f'{name}_{storage_dtype}_{workers}'
          result = bench_one(manifest, output, storage_dtype, workers, args.num_shards)
          row = {'acoustic': f'64x{acoustic_dim} ({name})', 'dtype': storage_dtype, 'workers': workers}
          rows.append(row | result)
          print(json.dumps(rows[-1]), flush=True)
  keys = list(rows[0])
  print(f'\n{args.num_examples} examples, {args.num_shards} shards, {os.cpu_count()} CPUs\n')
  print('| ' + ' | '.join(keys) + ' |')
  print('|' + '---|' * len(keys))
  for row in rows:
    print('| ' + ' | '.join(str(row[k]) for k in keys) + ' |')


if __name__ == '__main__':
  main()
