"""The whole method on the embedded demo corpus, on a laptop CPU: `make demo` (or python scripts/demo.py).

  1. generate the synthetic demo corpus (data_prep/corpora/demo.py): face, voice and text features
  2. train a SentencePiece tokenizer on its transcripts
  3. write the labelled and unlabelled parts as TFRecord shards
  4. run the experiments of configs/sweeps/demo.py: pretraining (four tasks, and text-only
     for comparison), then prompt / [CLS] / cross-modal finetuning, evaluation
  5. print the results table and where everything was written
Every step skips what an earlier run finished, so an interrupted demo resumes.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.sweeps import demo as demo_sweep  # noqa: E402  (after the path set-up)

LABELS = ('anger', 'happy', 'neutral', 'sad')


def prepare_data(workdir: str, num_labelled: int, num_unlabelled: int, workers: int) -> None:
  from data_prep import train_sentencepiece, write_shards
  from data_prep.corpora import demo

  corpus = os.path.join(workdir, 'corpus')
  if not os.path.exists(os.path.join(corpus, 'demo_info.json')):
    print(f'[1/4] generating the demo corpus ({num_labelled} labelled, {num_unlabelled} unlabelled utterances)')
    demo.generate(corpus, demo.DemoConfig(num_labelled=num_labelled, num_unlabelled=num_unlabelled), workers=workers)
  tokenizer = os.path.join(workdir, 'tokenizer', 'spm')
  if not os.path.exists(tokenizer + '.model'):
    print('[2/4] training the SentencePiece tokenizer')
    texts = [json.loads(line)['text'] for part in ('labelled', 'unlabelled')
             for line in open(os.path.join(corpus, f'{part}.jsonl'), encoding='utf-8')]
    train_sentencepiece.train_sentencepiece(texts, tokenizer, vocab_size=1000, required_words=LABELS)
  print('[3/4] writing TFRecord shards')
  write_shards.write_shards(os.path.join(corpus, 'labelled.jsonl'), os.path.join(workdir, 'data', 'labelled'),
                            num_shards=2, labels=LABELS)
  write_shards.write_shards(os.path.join(corpus, 'unlabelled.jsonl'), os.path.join(workdir, 'data', 'unlabelled'),
                            num_shards=4)


def paper_claims(table, group_by):
  """The claims of the paper's tables, as (statement, row a, row b, a >= b suffices) over the demo's rows."""
  rows = {tuple(row[k] for k in group_by): row for row in table}
  get = lambda pretrain, mode, train, fraction: rows.get((pretrain, mode, train, fraction))  # noqa: E731
  return [
      ('multimodal pretraining + prompt beats prompting the text-only model (all labels)',
       get('multimodal', 'prompt', 'LVA', '1.0'), get('text_only', 'prompt', 'LVA', '1.0'), False),
      ('text + face + voice beat text alone (prompt, all labels)',
       get('multimodal', 'prompt', 'LVA', '1.0'), get('multimodal', 'prompt', 'L', '1.0'), False),
      ('prompt beats the [CLS] head at 10 % of the labels',
       get('multimodal', 'prompt', 'LVA', '0.1'), get('multimodal', 'cls', 'LVA', '0.1'), False),
  ]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='demo_out', help='where everything is written')
  parser.add_argument('--num_labelled', type=int, default=2000)
  parser.add_argument('--num_unlabelled', type=int, default=3000)
  parser.add_argument('--pretrain_steps', type=int, default=demo_sweep.ARGUMENTS['pretrain_steps'],
                      help='steps of each pretraining stage')
  parser.add_argument('--finetune_steps', type=int, default=demo_sweep.ARGUMENTS['finetune_steps'])
  parser.add_argument('--seeds', type=int, default=demo_sweep.ARGUMENTS['seeds'],
                      help='finetuning seeds per setting (the table shows mean ± std)')
  parser.add_argument('--full', action='store_true',
                      help="also the paper's other rows ([CLS] with all labels, cross-modal, 3 %%)")
  parser.add_argument('--workers', type=int, default=2, help='processes generating the corpus')
  args = parser.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()

  from memobert_jax import config_utils, evaluation, sweep
  from memobert_jax.training import setup
  setup.use_compilation_cache(os.path.join(workdir, 'xla_cache'))  # also across demo runs

  prepare_data(workdir, args.num_labelled, args.num_unlabelled, args.workers)
  print('[4/4] pretraining and finetuning (configs/sweeps/demo.py)')
  spec = (f'{ROOT}/configs/sweeps/demo.py:data={workdir},pretrain_steps={args.pretrain_steps},'
          f'finetune_steps={args.finetune_steps},seeds={args.seeds},full={args.full}')
  experiments = config_utils.load_config(spec)
  runs = os.path.join(workdir, 'runs')
  table = sweep.run_sweep(experiments, runs)

  print(f'\nResults on the demo test speaker (test WA / UA / macro-F1 in %, {time.time() - start:.0f} s in all):\n')
  print(evaluation.markdown_table(table, experiments.group_by, sweep.METRICS))
  print(f"The paper's three claims (a beats b only where the two mean ± std intervals do not overlap; "
        f"--seeds {evaluation.MIN_RUNS_FOR_A_VERDICT} for a verdict):\n")
  print(evaluation.claims_table(paper_claims(table, experiments.group_by)))
  print('Written:')
  print(f'  corpus and features      {workdir}/corpus')
  print(f'  TFRecord shards          {workdir}/data')
  print(f'  results tables           {runs}/results.md, results.csv, runs.csv')
  print(f'  each run                 {runs}/<pretrain|finetune>/...: results.json, confusion.png, best/')
  print(f'  TensorBoard logs         tensorboard --logdir {runs}')


if __name__ == '__main__':
  main()
