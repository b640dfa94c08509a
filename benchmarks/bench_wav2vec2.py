"""Throughput of the wav2vec 2.0 acoustic extractor (memobert_jax/features/wav2vec2.py) at base size.

  JAX_PLATFORMS=cpu python -m benchmarks.bench_wav2vec2 [--batch 8] [--seconds 10] [--repeats 3] [--json out.json]

Writes a wav2vec2-base config.json (12 layers, 768 wide, the base feature encoder) and
random weights under the checkpoint's own names (model.safetensors) to a temporary
folder, loads it through the extractor like a downloaded model, and times batches of
`--batch` noise waveforms of `--seconds` each with the paper's settings (last layer,
pool 3, first 64 frames, 10 s cap). Reported: load time (reading, conversion, sha256),
the first call (compile included), the median / min / max of the timed calls, seconds
of audio per second of extraction (the median call) and per CPU-second of this process
(user + system; on a machine shared with other jobs the wall-clock rate mostly measures
the load). Values of the weights do not change the work done. Prints one JSON object.
"""

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np
from safetensors.numpy import save_file

from memobert_jax.features import wav2vec2

# facebook/wav2vec2-base's architecture (transformers' Wav2Vec2Config defaults), as its config.json states it.
BASE_CONFIG = dict(model_type='wav2vec2', architectures=['Wav2Vec2ForPreTraining'], hidden_size=768,
                   num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act='gelu',
                   layer_norm_eps=1e-5, feat_extract_norm='group', feat_extract_activation='gelu',
                   conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                   conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                   do_stable_layer_norm=False)
PREPROCESSOR = dict(feature_extractor_type='Wav2Vec2FeatureExtractor', feature_size=1, sampling_rate=16000,
                    padding_value=0.0, do_normalize=True, return_attention_mask=False)


def write_checkpoint(folder: pathlib.Path) -> None:
  """config.json, preprocessor_config.json and random model.safetensors in transformers' names and shapes."""
  (folder / 'config.json').write_text(json.dumps(BASE_CONFIG, indent=1))
  (folder / wav2vec2.PREPROCESSOR_FILE).write_text(json.dumps(PREPROCESSOR, indent=1))
  rng = np.random.default_rng(0)
  tensors = {}
  for name, shape in wav2vec2.checkpoint_shapes(wav2vec2.Wav2Vec2Config.from_hf(BASE_CONFIG)).items():
    if name.endswith('norm.weight') or name.endswith('weight_g'):
      value = np.ones(shape)
    elif len(shape) == 1:
      value = np.zeros(shape)
    else:
      # He-scaled, so activations keep their size through the unnormalised convolutions (no denormals).
      value = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))
    tensors[name] = value.astype(np.float32)
  save_file(tensors, str(folder / 'model.safetensors'))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', help='also write the result here')
  args = parser.parse_args()
  rng = np.random.default_rng(1)
  waves = [(0.1 * rng.standard_normal(round(args.seconds * 16000))).astype(np.float32) for _ in range(args.batch)]
  with tempfile.TemporaryDirectory() as tmp:
    write_checkpoint(pathlib.Path(tmp))
    start = time.perf_counter()
    features = wav2vec2.Wav2Vec2Features(tmp, batch_size=args.batch)
    load_s = time.perf_counter() - start
  start = time.perf_counter()
  out = features(waves)
  first_s = time.perf_counter() - start
  times, cpu_times = [], []
  for _ in range(args.repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    features(waves)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  median = statistics.median(times)
  result = dict(
      model='wav2vec2-base shape, random weights', device=str(jax.devices()[0]), cpus=os.cpu_count(),
      batch=args.batch, seconds_per_waveform=args.seconds, output_shape=list(out[0].shape), load_s=round(load_s, 2),
      first_call_s=round(first_s, 2), call_s_median=round(median, 2), call_s_min=round(min(times), 2),
      call_s_max=round(max(times), 2), audio_s_per_s=round(args.batch * args.seconds / median, 2),
      audio_s_per_cpu_s=round(args.batch * args.seconds / statistics.median(cpu_times), 2))
  print(json.dumps(result))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
  main()
