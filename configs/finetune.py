"""Emotion classification finetuning (spec sections 4 and 5): prompt-based or with a [CLS] head.

Variants: `--config configs/finetune.py:<mode>[,key=value...]`
  mode       prompt | prompt_cm (cross-modal 7-case mixture) | cls (the [CLS] head baseline)
  model      tiny | mini | base (default base)
  mesh       cpu | cpu-onednn | gpu | gpu8 | v4-8 | v5p-8 | v5e-8 | v6e-8 | v4-32 | v5e-16 | v5e-256
             (configs/common.py MESHES)
  protocol   iemocap (10 folds) | msp_improv (12 folds) | sessions | given (the dataset's train/valid/test)
  fold       1-based fold of the protocol
  fraction   share of the training utterances kept (low-resource runs: 0.1, 0.2, 0.4, 0.6)
  seed       initialisation, data order, dropout and the low-resource subsample
  template   i_am | it_was | he_is (or any text with one [MASK] via --config.finetune.template)
  train, eval  modality subsets for training and evaluation: L, V, A, LV, LA, VA, LVA
  steps, lr  optimizer steps (default 3000) and peak learning rate (default 3e-5)
Data and initialisation are overrides, e.g.
  --config.data.train=/data/iemocap_shards --config.init.checkpoint=/runs/pretrain/export
  --config.data.tokenizer.path=/runs/pretrain/export/vocab.txt
"""

import ml_collections

from configs import common
from memobert_jax.data.prompt import TEMPLATES

# The variant arguments and their defaults; a bare word sets `mode`.
ARGUMENTS = dict(mode='prompt', model='base', mesh='gpu', protocol='iemocap', fold=1, fraction=1.0, seed=0,
                 template='i_am', train='LVA', eval='LVA', steps=3000, lr=3e-5)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, 'mode', **ARGUMENTS)
  if arg.template not in TEMPLATES:
    raise ValueError(f'unknown template {arg.template!r}; known: {sorted(TEMPLATES)} '
                     f'(any other: --config.finetune.template="... [MASK] .")')
  mesh = common.mesh_preset(arg.mesh)
  config = ml_collections.ConfigDict()
  config.job = 'finetune'  # which loop runs it (memobert_jax/training/setup.py JOBS)
  config.seed = arg.seed
  config.model = common.model_config(arg.model, mesh=arg.mesh)
  config.mesh = mesh
  config.logical_axis_rules = common.LOGICAL_AXIS_RULES

  config.data = common.data_config()
  config.data.update(dict(
      splits='',  # '' loads every split of the dataset; the protocol then decides train/valid/test
      max_text_tokens=118,  # 120 with [CLS] and [SEP] (the paper's downstream length), the prompt included
      drop_long_text=False,  # finetuning truncates the utterance (never the prompt)
      text_buckets=(32, 64, 128),
  ))
  config.finetune = ml_collections.ConfigDict(dict(
      mode=arg.mode,
      template=TEMPLATES[arg.template],
      label_words=(),  # one word per class, in the dataset's label order; () uses the label names
      # The prompt's loss at [MASK]: 'vocabulary' (the paper's softmax over every word) or 'label_words'.
      prompt_loss='vocabulary',
      protocol=arg.protocol,
      fold=arg.fold,
      train_fraction=arg.fraction,
      train_modalities=arg.train,
      eval_modalities=arg.eval,
      select_metric='ua',  # the checkpoint kept is the one with the best validation value of this metric
      eval_batch_size=max(64, mesh.finetune_batch_size),  # a multiple of the data-parallel size
  ))
  config.batch_size = mesh.finetune_batch_size  # the paper's 32 unless the mesh preset needs more
  config.per_device_batch = mesh.per_device_batch
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=arg.lr, warmup_steps=min(100, arg.steps // 10), total_steps=arg.steps,
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=5.0,
      # (regex, multiplier) pairs: a parameter whose path ('acoustic_embeddings/projection/kernel') a regex matches
      # in full trains at that multiple of the learning rate (the first match counts; none matching: 1).
      lr_multipliers=(),
  ))
  # An init checkpoint: a pretraining run's WORKDIR/export, or a converted BERT ('' starts from scratch).
  config.init = ml_collections.ConfigDict(dict(checkpoint=''))
  config.eval_every_steps = 100
  config.log_every_steps = 50
  return config
