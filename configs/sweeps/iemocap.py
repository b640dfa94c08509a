"""Cross-validation tables on IEMOCAP or MSP-IMPROV: every fold, several seeds, low-resource fractions.

  python -m memobert_jax.sweep --workdir runs/iemocap_cv \
      --sweep configs/sweeps/iemocap.py:data=/data/shards/iemocap,init=runs/pretrain/export,vocab=VOCAB

Arguments (lists are '+'-separated, since ',' separates arguments):
  data       labelled dataset folder (data_prep.write_shards)
  init       init checkpoint: a pretraining export, a converted BERT, or '' (scratch)
  vocab      the tokenizer's vocab.txt (WordPiece) or .model (SentencePiece, with tokenizer=sentencepiece)
  protocol   iemocap (10 folds) | msp_improv (12 folds)
  modes      e.g. prompt+cls (the paper's comparison) or prompt+prompt_cm+cls
  fractions  training-data fractions, e.g. 0.1+0.2+0.4+0.6+1.0 (the low-resource table)
  seeds      how many seeds per fold (0..seeds-1)
  model, mesh, steps   passed to configs/finetune.py
Rows of the table: mode x fraction; mean and std over folds and seeds. The model of every
run is selected on its fold's validation speaker, never on the test speaker.
"""

import ml_collections

from configs import common

ARGUMENTS = dict(data='', init='', vocab='', tokenizer='wordpiece', protocol='iemocap', modes='prompt+cls',
                 fractions='1.0', seeds=3, model='base', mesh='gpu', steps=3000)
FOLDS = {'iemocap': 10, 'msp_improv': 12}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, 'data', **ARGUMENTS)
  if arg.protocol not in FOLDS:
    raise ValueError(f'protocol {arg.protocol!r} is not one of {sorted(FOLDS)}')
  if not arg.data or not arg.vocab:
    raise ValueError('give data=<labelled dataset folder> and vocab=<tokenizer file>')
  sweep = ml_collections.ConfigDict(allow_dotted_keys=True)
  sweep.finetune = ml_collections.ConfigDict(allow_dotted_keys=True, initial_dictionary=dict(
      config=f'configs/finetune.py:model={arg.model},mesh={arg.mesh},protocol={arg.protocol},steps={arg.steps}',
      overrides={'data.train': arg.data, 'data.tokenizer.path': arg.vocab, 'data.tokenizer.kind': arg.tokenizer,
                 'init.checkpoint': arg.init},
      axes={'mode': arg.modes.split('+'), 'fraction': [float(f) for f in arg.fractions.split('+')],
            'fold': list(range(1, FOLDS[arg.protocol] + 1)), 'seed': list(range(arg.seeds))},
      init=('none',),  # the init checkpoint is the override above, not a pretraining run of this sweep
  ))
  sweep.group_by = ('mode', 'fraction')
  return sweep
