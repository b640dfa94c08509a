"""The grain pipeline: determinism, exact resume, per-process slices, task sampling, bucketing, errors."""

import collections

import ml_collections
import numpy as np
import pytest

from configs import pretrain
from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import corruption, examples as examples_lib, pipeline, sources as sources_lib
from tests import corpus_helpers


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  directory = tmp_path_factory.mktemp('corpus')
  shards = corpus_helpers.write_corpus(str(directory), 240, num_shards=6,
                                       split_of=lambda i: 'valid' if i % 8 == 0 else 'train')
  tokenizer = tokenizer_lib.load_tokenizer('wordpiece', corpus_helpers.write_vocab(str(directory)))
  return shards, tokenizer


def make_config(shards: str, tokenizer) -> 'ml_collections.ConfigDict':
  config = pretrain.get_config('tiny,mesh=cpu,steps=100')
  config.data.train = shards
  config.data.valid = shards
  config.model.update(visual_dim=12, acoustic_dim=10, vocab_size=tokenizer.vocab_size)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for (task_a, batch_a), (task_b, batch_b) in zip(a, b):
    assert task_a == task_b
    assert batch_a.keys() == batch_b.keys()
    for key in batch_a:
      np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)


def test_same_seed_gives_same_batches_and_another_seed_differs(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  make = lambda: iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=2,
                                                   micro_batch_size=8))
  first, second = take(make(), 8), take(make(), 8)
  assert_same_batches(first, second)
  config.seed = 1
  third = take(make(), 8)
  assert any(t1 != t3 or not np.array_equal(b1['text_ids'], b3['text_ids'])
             for (t1, b1), (t3, b3) in zip(first, third))


def test_restored_iterator_continues_with_the_batch_that_would_have_come(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  make = lambda: iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=2,
                                                   micro_batch_size=8))
  iterator = make()
  take(iterator, 13)  # past the first epoch of this 210-example split
  state = iterator.get_state()
  expected = take(iterator, 5)
  restored = make()
  restored.set_state(state)
  assert_same_batches(take(restored, 5), expected)


def test_two_processes_read_disjoint_examples_whose_union_is_the_split(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  source = sources_lib.open_source(shards, 1.0, config.model)
  seen = []
  for process in range(2):
    examples = pipeline.example_dataset([source], 'train', config.data, tokenizer, seed=0, shuffle=True,
                                        repeat=False, process_index=process, process_count=2)
    seen.append([e.id for e in examples if e is not None])
  assert not set(seen[0]) & set(seen[1])
  assert len(seen[0]) + len(seen[1]) == len(set(seen[0]) | set(seen[1]))
  assert len(seen[0]) + len(seen[1]) == source.metadata.splits['train'].num_examples


def test_a_shuffle_window_past_the_split_holds_one_pass_of_it(corpus):
  """Not copies of it from later epochs: a window of 10000 over 210 examples would only delay every start."""
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  config.data.update(shuffle_window=10000, interleave_shards=1)  # one shard at a time: passes do not overlap
  source = sources_lib.open_source(shards, 1.0, config.model)
  examples = iter(pipeline.example_dataset([source], 'train', config.data, tokenizer, seed=0, shuffle=True,
                                           repeat=True, process_index=0, process_count=1))
  split_size = source.metadata.splits['train'].num_examples
  first_pass = [e.id for e in take(examples, split_size) if e is not None]
  assert len(first_pass) == len(set(first_pass)) > split_size * 0.9


def test_one_task_per_step_drawn_with_the_configured_weights(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  tasks, probabilities = pipeline.task_schedule(config.tasks.weights)
  assert dict(zip(tasks, probabilities)) == pytest.approx(
      {'mlm': 0.4, 'visual_regression': 0.2, 'visual_kl': 0.2, 'acoustic_regression': 0.2})
  config.data.prefetch_batches = 0
  config.batch_size = 2
  iterator = iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=2,
                                               micro_batch_size=1))
  draws = collections.Counter(task for task, _ in take(iterator, 600))
  for task, p in zip(tasks, probabilities):
    sigma = np.sqrt(600 * p * (1 - p))
    assert abs(draws[task] - 600 * p) < 5 * sigma, draws
  config.tasks.weights.visual_kl = 0.0
  iterator = iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=2,
                                               micro_batch_size=1))
  assert 'visual_kl' not in {task for task, _ in take(iterator, 100)}


def test_batches_are_bucketed_and_carry_each_tasks_targets(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  iterator = iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=2,
                                               micro_batch_size=8))
  seen = {}
  for task, batch in take(iterator, 40):
    seen[task] = batch
    assert batch['text_ids'].shape[:2] == (2, 8)
    assert batch['text_ids'].shape[2] in config.data.text_buckets
    assert batch['visual'].shape[2] in (0, *config.data.visual_buckets)
    assert batch['acoustic'].shape[2] in config.data.acoustic_buckets
    # Padding is never valid, and the longest example fills most of its bucket.
    assert batch['text_mask'].sum(-1).max() > min(config.data.text_buckets) or batch['text_ids'].shape[2] == 16
  assert set(seen) == {'mlm', 'visual_regression', 'visual_kl', 'acoustic_regression'}
  mlm = seen['mlm']
  assert mlm['mlm_positions'].shape == (2, 8, config.data.mlm_max_predictions)
  assert (mlm['mlm_weights'].sum(-1) >= 1).all()
  kl = seen['visual_kl']
  rows = kl['visual_soft_labels'][kl['visual_target_mask']]
  np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
  regression = seen['acoustic_regression']
  targets = regression['acoustic_target_mask']
  assert targets.any() and not (targets & ~regression['acoustic_mask']).any()


def test_long_texts_are_dropped_and_counted_in_pretraining(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  config.data.max_text_tokens = 6
  config.data.prefetch_batches = 0
  iterator = iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1,
                                               micro_batch_size=8))
  for _, batch in take(iterator, 5):
    assert batch['text_mask'].sum(-1).max() <= 8
  state = iterator.get_state()
  assert state['dropped_long_text'] > 0
  assert state['examples_seen'] == 40


def test_mixing_two_datasets_by_weight(corpus, tmp_path):
  shards, tokenizer = corpus
  other = corpus_helpers.write_corpus(str(tmp_path), 60, seed=5, num_shards=2, id_prefix='other')
  config = make_config(f'{shards}:3,{other}:1', tokenizer)
  sources = [sources_lib.open_source(p, w, config.model) for p, w in sources_lib.parse_sources(config.data.train)]
  examples = iter(pipeline.example_dataset(sources, 'train', config.data, tokenizer, seed=0, shuffle=True,
                                           repeat=True, process_index=0, process_count=1))
  ids = [e.id for e in (next(examples) for _ in range(400)) if e is not None]
  share = np.mean([i.startswith('utt') for i in ids])
  assert abs(share - 0.75) < 5 * np.sqrt(0.75 * 0.25 / len(ids))


def test_feature_dimension_and_vocabulary_mismatches_are_clear_errors(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  config.model.visual_dim = 342
  with pytest.raises(ValueError, match='visual features of dimension 12.*model.visual_dim=12'):
    pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1, micro_batch_size=8)
  config = make_config(shards, tokenizer)
  config.model.vocab_size = 30522
  with pytest.raises(ValueError, match='model.vocab_size'):
    pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1, micro_batch_size=8)
  config = make_config('/nonexistent/folder', tokenizer)
  with pytest.raises(FileNotFoundError, match='/nonexistent/folder'):
    pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1, micro_batch_size=8)


def test_validation_batches_are_fixed(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  config.eval_batches = 2
  first = pipeline.validation_batches(config, tokenizer, micro_batch_size=8)
  assert_same_batches(first, pipeline.validation_batches(config, tokenizer, micro_batch_size=8))
  assert collections.Counter(task for task, _ in first) == {t: 2 for t in pipeline.task_schedule(
      config.tasks.weights)[0]}


def test_itm_batches_swap_frames_between_examples_and_say_which(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  config.tasks.weights.update(dict(mlm=0.0, visual_regression=0.0, visual_kl=0.0, acoustic_regression=0.0, itm=1.0))
  with pytest.raises(ValueError, match='model.itm_head=True'):
    pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1, micro_batch_size=16)
  builder = corruption.BatchBuilder(config, tokenizer)
  # Example i's frames are filled with the value i, so a row shows whose frames it got.
  examples = [examples_lib.Prepared(f'e{i}', np.array([2, 10 + i, 3], np.int32), np.array([-1, 0, -1], np.int32), -1,
                                '', '', np.full((3, 12), i, np.float32), np.zeros((0, 8), np.float32),
                                np.full((4, 10), i, np.float32)) for i in range(16)]
  rng = np.random.default_rng(0)
  swapped = []
  for _ in range(50):
    batch = builder.build('itm', examples, 1, rng)
    owners_visual, owners_acoustic = batch['visual'][0, :, 0, 0], batch['acoustic'][0, :, 0, 0]
    np.testing.assert_array_equal(owners_visual, owners_acoustic)  # both streams come from one donor
    np.testing.assert_array_equal(batch['itm_targets'][0], owners_visual == np.arange(16))
    swapped.extend(owners_visual != np.arange(16))
  assert abs(np.mean(swapped) - config.tasks.itm_negative_rate) < 5 * np.sqrt(0.25 / len(swapped))


def test_frames_are_standardised_with_the_train_split_statistics(corpus):
  shards, tokenizer = corpus
  config = make_config(shards, tokenizer)
  source = sources_lib.open_source(shards, 1.0, config.model)
  examples = [e for e in pipeline.example_dataset([source], 'train', config.data, tokenizer, seed=0, shuffle=False,
                                                  repeat=False, process_index=0, process_count=1) if e is not None]
  for modality in ('visual', 'acoustic'):
    frames = np.concatenate([getattr(e, modality) for e in examples])
    # The loader caps lengths, the statistics cover every stored frame: close to, not exactly, N(0, 1).
    assert np.abs(frames.mean(0)).max() < 0.2 and np.abs(frames.std(0) - 1).max() < 0.2
  config.data.normalize_features = False
  raw = next(e for e in pipeline.example_dataset([source], 'train', config.data, tokenizer, seed=0, shuffle=False,
                                                 repeat=False, process_index=0, process_count=1) if e is not None)
  stats = sources_lib.feature_stats(source, 'train', make_config(shards, tokenizer).data)['acoustic']
  np.testing.assert_allclose(stats.apply(raw.acoustic), examples[0].acoustic, rtol=1e-6)


def test_a_text_whose_only_word_exceeds_the_mlm_cap_is_masked_in_part_and_counted(tmp_path):
  # 'unbelievable' is three word-pieces here, one more than the cap: as a drawn-out word in real subtitles.
  shards = corpus_helpers.write_corpus(str(tmp_path), 24, num_shards=1,
                                       text_of=lambda i: 'unbelievable' if i % 2 else 'i am unbelievable')
  tokenizer = tokenizer_lib.load_tokenizer('wordpiece', corpus_helpers.write_vocab(str(tmp_path)))
  config = make_config(shards, tokenizer)
  config.data.mlm_max_predictions = 2
  config.data.prefetch_batches = 0
  for task in ('visual_regression', 'visual_kl', 'acoustic_regression'):
    config.tasks.weights[task] = 0.0
  iterator = iter(pipeline.pretraining_dataset(config, tokenizer, split='train', micro_batches=1,
                                               micro_batch_size=8))
  for _, batch in take(iterator, 6):
    assert (batch['mlm_weights'].sum(-1) >= 1).all() and (batch['mlm_weights'].sum(-1) <= 2).all()
  # About half the examples hold nothing but the long word; each is counted once.
  assert 12 <= iterator.get_state()['mlm_capped_words'] <= 36
