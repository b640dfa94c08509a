"""The demo's experiments on the embedded demo corpus (scripts/demo.py prepares the data).

  python -m memobert_jax.sweep --sweep configs/sweeps/demo.py:data=DEMO_DIR --workdir DEMO_DIR/runs

The two pretraining stages mirror the paper, which starts MEmoBERT from BERT:
  text_only    masked-word pretraining of the tiny model on the clips' transcripts alone:
               the demo's "BERT", and the baseline without multimodal pretraining
  multimodal   MEmoBERT: the four tasks over text, face and voice, starting from text_only
Finetuning, each on the demo's given split (IEMOCAP fold 9: session 5, 5F valid, 5M test),
over `seeds` seeds: the rows the paper's three claims compare (scripts/demo.py) -- prompt
from either model with all labels, from MEmoBERT prompt with the text alone (L), and prompt
and the [CLS] head with 10 % of the labels. `full=True` adds the rest of the paper's table:
the [CLS] head with all labels, the cross-modal prompt mixture, prompting the text-only
model with 10 %, and either model with 3 %.
The tiny model learns from scratch, so both stages use a larger learning rate than the
paper's 5e-5 for a pretrained BERT-base.
"""

import ml_collections

from configs import common

# pretrain_steps: steps of each stage; seeds: finetuning seeds per row (3: a verdict for each claim).
ARGUMENTS = dict(data='demo_out', pretrain_steps=600, finetune_steps=200, seeds=3, full=False)


CLAIM_ROWS = [
    {'mode': 'prompt'},  # from both pretrainings
    {'mode': 'prompt', 'train': 'L', 'eval': 'L', 'pretrain': ['multimodal']},
    {'mode': 'prompt', 'fraction': 0.1, 'pretrain': ['multimodal']},
    {'mode': 'cls', 'fraction': 0.1, 'pretrain': ['multimodal']},
]
FULL_TABLE_ROWS = [
    {'mode': 'cls', 'pretrain': ['multimodal']},
    {'mode': 'prompt_cm', 'pretrain': ['multimodal']},
    {'mode': 'prompt', 'fraction': 0.1, 'pretrain': ['text_only']},
    {'mode': 'prompt', 'fraction': 0.03},
]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, 'data', **ARGUMENTS)
  data = arg.data
  shared = {
      'data.tokenizer.kind': 'sentencepiece', 'data.tokenizer.path': f'{data}/tokenizer/spm.model',
      'model.vocab_size': 0,  # set by scripts/demo.py from the trained tokenizer
      'model.visual_dim': 342, 'model.acoustic_dim': 43,
      'data.max_visual_frames': 24, 'data.max_acoustic_frames': 40, 'data.visual_buckets': (24,),
      'data.acoustic_buckets': (40,), 'model.dropout_rate': 0.1, 'model.attention_dropout_rate': 0.1,
  }
  # Dotted keys: the overrides name config keys as on the command line.
  sweep = ml_collections.ConfigDict(allow_dotted_keys=True)
  sweep.pretrain = ml_collections.ConfigDict(allow_dotted_keys=True, initial_dictionary=dict(
      config=f'configs/pretrain.py:tiny,mesh=cpu,steps={arg.pretrain_steps}',
      overrides={**shared, 'data.train': f'{data}/data/unlabelled', 'data.valid': f'{data}/data/labelled',
                 'data.text_buckets': (32,), 'batch_size': 64, 'per_device_batch': 64,
                 'optim.learning_rate': 3e-3, 'eval_every_steps': 250, 'eval_batches': 2,
                 'checkpoint.every_steps': 250, 'log_every_steps': 50},
      variants={
          'text_only': {'data.modalities': 'L', 'tasks.weights.visual_regression': 0.0,
                        'tasks.weights.visual_kl': 0.0, 'tasks.weights.acoustic_regression': 0.0},
          'multimodal': {'init_from': 'text_only'},
      },
  ))
  sweep.finetune = ml_collections.ConfigDict(allow_dotted_keys=True, initial_dictionary=dict(
      config=f'configs/finetune.py:prompt,model=tiny,mesh=cpu,protocol=given,steps={arg.finetune_steps},lr=1e-3',
      overrides={**shared, 'data.train': f'{data}/data/labelled', 'data.text_buckets': (64,),
                 'eval_every_steps': 100, 'log_every_steps': 50},
      axes={'seed': list(range(arg.seeds))},
      variants=CLAIM_ROWS + (FULL_TABLE_ROWS if arg.full else []),
  ))
  sweep.group_by = ('pretrain', 'mode', 'train', 'fraction')
  return sweep
