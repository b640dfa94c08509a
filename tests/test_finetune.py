"""Prompt / [CLS] finetuning: the loss at [MASK], predictions within the label set, metrics, folds, predict."""

import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import finetune as finetune_config
from memobert_jax import evaluation, inference, sharding, tokenizer as tokenizer_lib
from memobert_jax.data import finetuning_data
from memobert_jax.training import finetuning, setup, tasks, train_state
from tests import corpus_helpers


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('labelled'))
  shards = corpus_helpers.write_corpus(directory, 200, num_shards=2)
  vocab = corpus_helpers.write_vocab(directory)
  return shards, vocab


def make_config(corpus, arg: str):
  shards, vocab = corpus
  config = finetune_config.get_config(f'{arg},model=tiny,mesh=cpu')
  config.data.train = shards
  config.data.tokenizer.path = vocab
  config.model.update(visual_dim=12, acoustic_dim=10, vocab_size=len(open(vocab).read().split()))
  config.data.text_buckets = (32,)
  return config


def loaded(corpus, arg='prompt'):
  config = make_config(corpus, arg)
  tokenizer = tokenizer_lib.load_tokenizer('wordpiece', config.data.tokenizer.path)
  utterances, labels = finetuning_data.load_utterances(config.data.train, ['train'], config.model, config.data,
                                                       tokenizer)
  return config, tokenizer, utterances, labels


def test_metrics_match_a_hand_computed_example():
  labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
  predicted = [0, 0, 1, 2, 1, 1, 2, 0, 2, 2]
  scores = evaluation.classification_metrics(labels, predicted, 4)
  assert scores['wa'] == pytest.approx(6 / 10)
  # Recalls: 2/4, 2/2, 2/3, 0/1.
  assert scores['ua'] == pytest.approx((0.5 + 1.0 + 2 / 3 + 0.0) / 4)
  # Precisions: 2/3, 2/3, 2/4, 0 -> F1 per class: 0.5714, 0.8, 0.5714, 0.
  assert scores['macro_f1'] == pytest.approx((4 / 7 + 0.8 + 4 / 7 + 0) / 4)
  assert scores['confusion'] == [[2, 1, 1, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 1, 0]]


def test_a_claim_holds_only_beyond_the_spread():
  assert evaluation.compare(0.60, 0.01, 0.55, 0.02) == 'reproduced'
  assert evaluation.compare(0.60, 0.04, 0.55, 0.02).startswith('not reproduced (within')  # 0.56 < 0.57
  assert evaluation.compare(0.50, 0.01, 0.55, 0.01).startswith('not reproduced (reversed')
  # "a is at least as good as b" holds unless b is ahead beyond the spread.
  assert evaluation.compare(0.54, 0.02, 0.55, 0.02, at_least=True) == 'reproduced (within the spread)'
  assert evaluation.compare(0.50, 0.01, 0.55, 0.01, at_least=True).startswith('not reproduced (reversed')


def test_the_claims_table_gives_a_verdict_only_from_three_runs_a_side():
  row = lambda mean, std, runs: {'ua_mean': mean, 'ua_std': std, 'runs': runs}  # noqa: E731
  table = evaluation.claims_table([('a beats b', row(0.6, 0.01, 3), row(0.5, 0.01, 3), False),
                                   ('two seeds', row(0.6, 0.01, 2), row(0.5, 0.01, 3), False),
                                   ('not run', None, row(0.5, 0.01, 3), False)])
  lines = table.splitlines()[2:]
  assert lines[0] == '| a beats b | 60.0 ± 1.0 vs 50.0 ± 1.0 | reproduced |'
  assert 'no verdict: 2 run(s), at least 3 needed' in lines[1] and 'no verdict: a row was not run' in lines[2]


def test_folds_are_disjoint_by_speaker_and_cover_the_corpus(corpus):
  _, _, utterances, _ = loaded(corpus)
  for fold in range(1, 11):
    parts = finetuning_data.fold_splits(utterances, 'iemocap', fold, 1.0, seed=0)
    speakers = {name: {u.speaker for u in members} for name, members in parts.items()}
    assert not speakers['train'] & speakers['valid'] and not speakers['train'] & speakers['test']
    assert len(speakers['valid']) == len(speakers['test']) == 1 and speakers['valid'] != speakers['test']
    assert sorted(u.id for m in parts.values() for u in m) == sorted(u.id for u in utterances)
  low = finetuning_data.fold_splits(utterances, 'iemocap', 1, 0.1, seed=0)
  assert len(low['train']) == pytest.approx(0.1 * len(parts['train']), abs=2)


def test_prompt_batches_put_the_gold_label_word_at_the_mask(corpus):
  config, tokenizer, utterances, label_names = loaded(corpus)
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, label_names)
  batch = batcher.batch([(u, 'LVA') for u in utterances[:8]], 8)
  rows = batch['text_ids'][0]
  mask_columns = [list(np.flatnonzero(r == tokenizer.mask_id)) for r in rows]
  assert all(len(c) == 1 for c in mask_columns)  # exactly one [MASK]: the prompt's
  np.testing.assert_array_equal(batch['mlm_positions'][0, :, 0], [c[0] for c in mask_columns])
  np.testing.assert_array_equal(batch['mlm_targets'][0, :, 0],
                                [tokenizer.token_to_id(label_names[u.label]) for u in utterances[:8]])
  # Without L the text is the prompt alone: "[CLS] i am [MASK] . [SEP]".
  alone = batcher.batch([(utterances[0], 'VA')], 1)
  length = int(alone['text_mask'][0, 0].sum())
  assert tokenizer.decode(alone['text_ids'][0, 0, :length]).split() == ['[CLS]', 'i', 'am', '[MASK]', '.', '[SEP]']
  assert alone['visual_mask'].any() and alone['acoustic_mask'].any()
  text_only = batcher.batch([(utterances[1], 'L')], 1)
  assert not text_only['visual_mask'].any() and not text_only['acoustic_mask'].any()


def test_cross_modal_mode_expands_each_training_utterance_into_its_cases(corpus):
  config, tokenizer, utterances, label_names = loaded(corpus, 'prompt_cm')
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, label_names)
  items = batcher.training_items(utterances[:14], 'LVA')
  for u in utterances[:14]:
    cases = [subset for v, subset in items if v is u]
    expected = ['LVA', 'LV', 'LA', 'L', 'VA', 'V', 'A'] if len(u.visual) else ['LA', 'L', 'A']
    assert cases == expected


def model_and_batch(corpus, mode):
  config, tokenizer, utterances, label_names = loaded(corpus, mode)
  config = setup.resolve(config, tokenizer, len(label_names))
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, label_names)
  mesh = sharding.make_mesh((1, 1, 1), ('data', 'fsdp', 'tensor'))
  graphdef, state, _ = train_state.create_train_state(config.model, optax.sgd(0.1), mesh,
                                                      config.logical_axis_rules, seed=0)
  batch = jax.tree.map(lambda x: x[0], batcher.batch([(u, 'LVA') for u in utterances[:8]], 8))
  return nnx.merge(graphdef, state.params), batch, batcher


def test_prompt_loss_is_the_cross_entropy_at_the_mask_over_the_whole_vocabulary(corpus):
  model, batch, _ = model_and_batch(corpus, 'prompt')
  loss_sum, count, _ = tasks.TASKS['prompt'](model, batch, True, None)
  encoded = model(batch)
  every_position = model.mlm_logits(encoded.text, np.tile(np.arange(batch['text_ids'].shape[1]), (8, 1)))
  at_mask = every_position[np.arange(8), batch['mlm_positions'][:, 0]]
  expected = optax.softmax_cross_entropy_with_integer_labels(at_mask, batch['mlm_targets'][:, 0]).sum()
  assert float(count) == 8
  np.testing.assert_allclose(float(loss_sum), float(expected), rtol=1e-5)
  # Tokens other than [MASK] enter only through the encoder: the loss uses no other position's logits.
  other = np.flatnonzero(np.arange(batch['text_ids'].shape[1]) != batch['mlm_positions'][0, 0])
  assert not np.allclose(every_position[0, other[0]], at_mask[0])


def test_label_word_prompt_loss_is_the_cross_entropy_over_the_label_words_only(corpus):
  model, batch, batcher = model_and_batch(corpus, 'prompt')
  assert 'label_word_ids' not in batch and batcher.task == 'prompt'
  config, tokenizer, utterances, label_names = loaded(corpus, 'prompt')
  config.finetune.prompt_loss = 'label_words'
  config = setup.resolve(config, tokenizer, len(label_names))
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, label_names)
  assert batcher.task == 'prompt_label_words'
  batch = jax.tree.map(lambda x: x[0], batcher.batch([(u, 'LVA') for u in utterances[:8]], 8))
  np.testing.assert_array_equal(batch['label_word_ids'], np.tile(batcher.verbalizer.label_ids, (8, 1)))
  loss_sum, count, _ = tasks.TASKS['prompt_label_words'](model, batch, True, None)
  scores = tasks.class_scores(model, batch, batcher.verbalizer.label_ids)  # what prediction compares
  gold = [u.label for u in utterances[:8]]
  expected = optax.softmax_cross_entropy_with_integer_labels(scores, np.array(gold)).sum()
  assert float(count) == 8
  np.testing.assert_allclose(float(loss_sum), float(expected), rtol=1e-5)
  # Other words do not compete: raising one of them leaves the loss as it is (the vocabulary loss grows).
  intruder = batcher.pad_inputs.pad_id + 7
  assert intruder not in batcher.verbalizer.ids
  before_vocabulary = float(tasks.TASKS['prompt'](model, batch, True, None)[0])
  model.mlm_head.bias[...] = model.mlm_head.bias[...].at[intruder].set(10.0)
  np.testing.assert_allclose(float(tasks.TASKS['prompt_label_words'](model, batch, True, None)[0]),
                             float(loss_sum), rtol=1e-5)
  assert float(tasks.TASKS['prompt'](model, batch, True, None)[0]) > before_vocabulary + 1.0
  with pytest.raises(ValueError, match='prompt_loss'):
    config.finetune.prompt_loss = 'labels'
    finetuning_data.FinetuneBatcher(config, tokenizer, label_names)


def test_predictions_stay_in_the_label_set_even_when_another_word_scores_higher(corpus):
  model, batch, batcher = model_and_batch(corpus, 'prompt')
  intruder = batcher.pad_inputs.pad_id + 7  # an ordinary word, not a label word
  assert intruder not in batcher.verbalizer.ids
  model.mlm_head.bias[...] = model.mlm_head.bias[...].at[intruder].set(1e4)
  encoded = model(batch)
  assert (model.mlm_logits(encoded.text, batch['mlm_positions'])[:, 0].argmax(-1) == intruder).all()
  scores = tasks.class_scores(model, batch, batcher.verbalizer.label_ids)
  assert scores.shape == (8, 4)
  assert set(np.asarray(scores.argmax(-1))) <= set(range(4))


@pytest.mark.slow
def test_finetune_run_writes_results_and_predict_reproduces_its_test_predictions(corpus, tmp_path):
  for mode in ('prompt', 'cls'):
    config = make_config(corpus, f'{mode},steps=12,fold=3')
    config.eval_every_steps = 6
    workdir = str(tmp_path / mode)
    results = finetuning.finetune(config, workdir)
    for name in ('results.json', 'confusion.png', 'config.json', 'best/memobert_init.json'):
      assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, 'results.json')) as f:
      assert json.load(f)['test'] == results['test']
    assert results['best_step'] in (6, 12) and results['sizes']['valid'] > 0
    for split in ('valid', 'test'):
      assert 0 <= results[split]['ua'] <= 1 and sum(map(sum, results[split]['confusion'])) == results['sizes'][split]

    predictor = inference.Predictor(os.path.join(workdir, 'best'))
    _, tokenizer, utterances, _ = loaded(corpus, mode)
    parts = finetuning_data.fold_splits(utterances, 'iemocap', 3, 1.0, seed=0)
    with open(os.path.join(workdir, finetuning.SPLITS_FILE)) as f:
      assert json.load(f) == {name: [u.id for u in members] for name, members in parts.items()}
    test = parts['test']
    outputs = predictor([predictor.utterance(u.id, ' '.join(tokenizer.decode(w) for w in u.words), u.visual,
                                             u.acoustic) for u in test])
    names = predictor.label_names
    predicted = [names.index(o['label']) for o in outputs]
    confusion = evaluation.classification_metrics([u.label for u in test], predicted, 4)['confusion']
    assert confusion == results['test']['confusion']
    assert all(abs(sum(o['probabilities'].values()) - 1) < 1e-4 for o in outputs)


def test_training_batches_cover_every_item_each_epoch_even_when_fewer_than_a_batch(corpus):
  config, tokenizer, utterances, label_names = loaded(corpus)
  batcher = finetuning_data.FinetuneBatcher(config, tokenizer, label_names)
  items = [(u, 'L') for u in utterances[:5]]
  batches = finetuning_data.training_batches(batcher, items, 8, seed=3)
  first, second = next(batches), next(batches)
  rows = np.concatenate([first['text_ids'][0], second['text_ids'][0]])
  # 16 rows = 3 whole epochs of the 5 items and one more: each item 3 or 4 times.
  counts = [sum(np.array_equal(r, batcher.batch([item], 1)['text_ids'][0, 0, :rows.shape[1]]) for r in rows)
            for item in items]
  assert sorted(counts) == [3, 3, 3, 3, 4]
  again = next(finetuning_data.training_batches(batcher, items, 8, seed=3))
  np.testing.assert_array_equal(again['text_ids'], first['text_ids'])
