"""Ablations on the demo corpus: what each pretraining task, masking choice, template and modality buys.

  python -m memobert_jax.sweep --sweep configs/sweeps/ablation.py:data=demo_out --workdir runs/ablation

Needs the demo data (`make demo` or scripts/demo.py writes DATA/data and DATA/tokenizer).
Pretraining variants (tiny model, same steps each), all but text_only starting from the
text_only stage (the demo's "BERT", as in configs/sweeps/demo.py):
  all            the four tasks (2:1:1:1)
  no_mlm, no_visual_regression, no_visual_kl, no_acoustic_regression   one task dropped
  token_mlm      token-level instead of whole-word masking
  single_frame   single frames (span 1) instead of spans of 3
  with_itm       the four tasks plus text-to-frames matching (weight 1), which the authors dropped
  text_only      the first stage alone (no face or voice in pretraining)
and no pretraining at all ('none'), each finetuned by prompt ("I am [MASK] .", all modalities)
with all labels and with 10 %;
on the full model ('all') also the other two templates and the modality subsets L, LV, LA.
"""

import ml_collections

from configs import common
from configs.sweeps import demo

# Fewer steps than the demo's: eleven pretraining runs.
ARGUMENTS = dict(data='demo_out', pretrain_steps=600, finetune_steps=300, seeds=1)
_DROP = {f'no_{task}': {f'tasks.weights.{task}': 0.0}
         for task in ('mlm', 'visual_regression', 'visual_kl', 'acoustic_regression')}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, 'data', **ARGUMENTS)
  sweep = demo.get_config(f'data={arg.data},pretrain_steps={arg.pretrain_steps},finetune_steps={arg.finetune_steps},'
                          f'seeds={arg.seeds}')
  variants = {
      'all': {},
      **_DROP,
      'token_mlm': {'tasks.whole_word_masking': False},
      'single_frame': {'tasks.visual_span': 1, 'tasks.acoustic_span': 1},
      'with_itm': {'tasks.weights.itm': 1.0, 'model.itm_head': True},
  }
  sweep.pretrain.variants = ml_collections.ConfigDict(allow_dotted_keys=True, initial_dictionary={
      'text_only': dict(sweep.pretrain.variants.text_only),
      **{name: {**settings, 'init_from': 'text_only'} for name, settings in variants.items()},
  })
  sweep.finetune.init = ('pretrain', 'none')
  # Every pretraining variant with the default prompt (all labels, 10 %); templates and modality subsets on the
  # full model.
  sweep.finetune.variants = [
      {'template': 'i_am'}, {'template': 'i_am', 'fraction': 0.1},
      {'template': 'it_was', 'pretrain': ['all']}, {'template': 'he_is', 'pretrain': ['all']},
      {'train': 'L', 'eval': 'L', 'pretrain': ['all']}, {'train': 'LV', 'eval': 'LV', 'pretrain': ['all']},
      {'train': 'LA', 'eval': 'LA', 'pretrain': ['all']},
  ]
  sweep.group_by = ('pretrain', 'template', 'train', 'fraction')
  return sweep
