"""MEmoBERT pretraining (spec section 3): four tasks, one drawn per optimizer step.

Variants: `--config configs/pretrain.py:<model>[,mesh=<preset>][,key=value...]`
  model  tiny | mini | base (default base: the paper's bert-base)
  mesh   cpu | cpu-onednn | gpu | gpu8 | v4-8 | v5p-8 | v5e-8 | v6e-8 | v4-32 | v5e-16 | v5e-256
         (configs/common.py MESHES)
  steps  optimizer steps (default 40000, the paper's)
  stage  multimodal (the four MEmoBERT tasks) | text (the paper's stage 1: masked words on text alone,
         e.g. to train the MLM head of a checkpoint that has none before prompting; any shards, frames unread)
Everything else is overridden with `--config.key=value`, e.g.
  --config.data.train=/data/pretrain_shards --config.init.checkpoint=/ckpt/bert-base-uncased
"""

import ml_collections

from configs import common


# The variant arguments and their defaults; a bare word sets `model`.
ARGUMENTS = dict(model='base', mesh='gpu', steps=40000, stage='multimodal')
STAGES = ('multimodal', 'text')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, 'model', **ARGUMENTS)
  if arg.stage not in STAGES:
    raise ValueError(f'unknown stage {arg.stage!r}; known: {STAGES}')
  mesh = common.mesh_preset(arg.mesh)
  config = ml_collections.ConfigDict()
  config.job = 'pretrain'  # which loop runs it (memobert_jax/training/setup.py JOBS)
  config.seed = 0
  config.model = common.model_config(arg.model, mesh=arg.mesh)
  config.mesh = mesh
  config.logical_axis_rules = common.LOGICAL_AXIS_RULES

  config.data = common.data_config()
  config.tasks = ml_collections.ConfigDict(dict(
      # Sampling weights of the task drawn for each optimizer step; 0 drops a task.
      weights=ml_collections.ConfigDict(dict(mlm=2.0, visual_regression=1.0, visual_kl=1.0,
                                             acoustic_regression=1.0, itm=0.0)),
      # itm (ablation; needs model.itm_head=True): with this probability an example's frames are
      # swapped for another example's of the batch, and the pooled [CLS] must tell.
      itm_negative_rate=0.5,
      mlm_probability=0.15,
      whole_word_masking=True,
      visual_span=3,
      visual_ratio=0.20,
      acoustic_span=3,
      acoustic_ratio=0.15,
  ))

  if arg.stage == 'text':
    config.data.modalities = 'L'
    config.tasks.weights.update(visual_regression=0.0, visual_kl=0.0, acoustic_regression=0.0)

  # Examples per optimizer step: the paper's 640 (160 x 4 accumulation), or what the mesh preset needs.
  config.batch_size = mesh.batch_size
  config.per_device_batch = mesh.per_device_batch  # examples per device per micro-batch
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=5e-5, warmup_steps=min(4000, arg.steps // 10), total_steps=arg.steps,
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=5.0,
      # (regex, multiplier) pairs: a parameter whose path ('acoustic_embeddings/projection/kernel') a regex matches
      # in full trains at that multiple of the learning rate (the first match counts; none matching: 1).
      lr_multipliers=(),
  ))
  # Initialisation: a folder written by `python -m memobert_jax.convert_bert` ('' trains from scratch).
  config.init = ml_collections.ConfigDict(dict(checkpoint=''))
  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, keep_best=1, async_save=True))
  config.log_every_steps = 50
  # Peak FLOP/s of one device for the MFU the loop logs; 0 takes the chip's figure (training/topology.py CHIPS),
  # and logs no MFU where there is none (CPUs: give the matmul peak benchmarks/bench_step.py measures).
  config.peak_flops_per_device = 0.0
  config.eval_every_steps = 1000
  config.eval_batches = 20
  return config
