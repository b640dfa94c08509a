"""Integrity check of a dataset folder: every record of every shard against its CRCs and metadata.json.

  python -m data_prep.verify DATA_DIR [--skip_sha256]

The grain reader (grain.experimental.TFRecordIterDataset) does not check the
TFRecord CRCs, so this command is the integrity check. For each shard listed in
metadata.json it checks the file's size and SHA-256 against the metadata, the
framing of every record (length field and its masked CRC32C, no truncation),
every record's data CRC32C (through tf.data.TFRecordDataset, which verifies
it), and that every record decodes with the schema: feature dimensions and
frame counts agree, values are finite, labels are in range, ids are unique,
and the counts match the metadata. Problems name the file and the record
index and byte offset. Exit status 1 if any problem is found.
"""

import argparse
import dataclasses
import hashlib
import os
import struct
import sys
from collections.abc import Sequence

import numpy as np

from memobert_jax.data import schema

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK_DELTA = 0xA282EAD8  # TFRecord's CRC mask


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C in pure Python: fine for the 8-byte length fields; record data is checked by TensorFlow."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def scan_records(path: str) -> tuple[list[int], str | None]:
  """Walks the TFRecord framing (uint64 length, uint32 masked CRC of it, data, uint32 data CRC).

  Returns:
    The byte offset of every well-framed record, and a description of the first framing problem
    (a length whose CRC does not match, or a truncated record), if any.
  """
  offsets, size = [], os.path.getsize(path)
  with open(path, 'rb') as f:
    offset = 0
    while offset < size:
      header = f.read(12)
      if len(header) < 12:
        return offsets, f'record {len(offsets)} (offset {offset}): truncated header ({len(header)} of 12 bytes)'
      length, length_crc = struct.unpack('<QI', header)
      if masked_crc32c(header[:8]) != length_crc:
        return offsets, f'record {len(offsets)} (offset {offset}): length field fails its CRC (corrupted)'
      end = offset + 12 + length + 4
      if end > size:
        return offsets, f'record {len(offsets)} (offset {offset}): truncated ({length} data bytes announced, ' \
                        f'{size - offset - 12} left)'
      offsets.append(offset)
      offset = end
      f.seek(offset)
  return offsets, None


def _check_example(example: dict, metadata: schema.DatasetMetadata) -> str | None:
  if not -1 <= example['label'] < len(metadata.label_names):
    return f'label {example["label"]} out of range for {len(metadata.label_names)} labels'
  for name in ('visual', 'visual_soft_labels', 'acoustic'):
    if not np.isfinite(example[name]).all():
      return f'{name} has non-finite values'
  return None


@dataclasses.dataclass
class VerifyResult:
  problems: list[str]
  num_examples: dict[str, int]  # per split, as read
  num_shards: int

  @property
  def ok(self) -> bool:
    return not self.problems


def _verify_shard(directory: str, shard: schema.ShardInfo, metadata: schema.DatasetMetadata, seen: dict[str, str],
                  check_sha256: bool) -> tuple[int, list[str]]:
  """Returns the number of records read and the problems of one shard."""
  import tensorflow as tf  # its TFRecord reader checks the data CRCs in C++
  path = os.path.join(directory, shard.file)
  if not os.path.exists(path):
    return 0, [f'{shard.file}: missing']
  problems = []
  if os.path.getsize(path) != shard.num_bytes:
    problems.append(f'{shard.file}: {os.path.getsize(path)} bytes, metadata says {shard.num_bytes}')
  if check_sha256:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
    if digest.hexdigest() != shard.sha256:
      problems.append(f'{shard.file}: SHA-256 differs from metadata.json (content changed)')
  offsets, framing_problem = scan_records(path)
  if framing_problem:
    problems.append(f'{shard.file}: {framing_problem}')
  count = 0
  try:
    for serialized in tf.data.TFRecordDataset(path).take(len(offsets)).as_numpy_iterator():
      where = f'{shard.file}: record {count} (offset {offsets[count]})'
      count += 1
      try:
        example = schema.decode_example(serialized, metadata)
      except Exception as e:  # any parse failure of a record that passed its CRC is a schema problem
        problems.append(f'{where}: does not decode ({type(e).__name__}: {e})')
        continue
      if example['id'] in seen:
        problems.append(f'{where}: duplicate id {example["id"]!r} (also in {seen[example["id"]]})')
      seen[example['id']] = shard.file
      bad = _check_example(example, metadata)
      if bad:
        problems.append(f'{where}: {example["id"]}: {bad}')
  except tf.errors.DataLossError as e:
    problems.append(f'{shard.file}: record {count} (offset {offsets[count]}): data CRC mismatch (corrupted): '
                    f'{e.message}')
  if not problems and count != shard.num_examples:
    problems.append(f'{shard.file}: {count} records, metadata says {shard.num_examples}')
  return count, problems


def verify_dataset(directory: str | os.PathLike, *, check_sha256: bool = True) -> VerifyResult:
  """Reads every shard of the dataset folder and lists every problem found (empty: intact)."""
  directory = os.fspath(directory)
  try:
    metadata = schema.DatasetMetadata.load(directory)
  except (OSError, ValueError, TypeError, KeyError) as e:
    return VerifyResult([f'{schema.METADATA_FILE}: unreadable ({type(e).__name__}: {e})'], {}, 0)
  problems, counts, seen, num_shards = [], {}, {}, 0
  for split, info in metadata.splits.items():
    counts[split] = 0
    for shard in info.shards:
      count, shard_problems = _verify_shard(directory, shard, metadata, seen, check_sha256)
      counts[split] += count
      problems += shard_problems
      num_shards += 1
    if counts[split] != info.num_examples:
      problems.append(f'split {split}: {counts[split]} records read, metadata says {info.num_examples}')
  return VerifyResult(problems, counts, num_shards)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('directory', help='dataset folder (with metadata.json)')
  parser.add_argument('--skip_sha256', action='store_true', help='do not hash whole files (records are still checked)')
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  result = verify_dataset(args.directory, check_sha256=not args.skip_sha256)
  for problem in result.problems:
    print(problem)
  counts = ', '.join(f'{split} {n}' for split, n in result.num_examples.items())
  status = 'OK' if result.ok else f'{len(result.problems)} PROBLEM(S)'
  print(f'{status}: {result.num_shards} shards, {sum(result.num_examples.values())} records ({counts})')
  return 0 if result.ok else 1


if __name__ == '__main__':
  sys.exit(main())
