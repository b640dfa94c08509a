"""Tests of the pretraining corruption (memobert_jax.data.masking).

Statistical checks draw thousands of examples and allow 5 standard deviations of the estimate (binomial
sqrt(p (1 - p) / n) for proportions; the empirical standard error for means of counts), so with fixed seeds they
are deterministic and a correct implementation is far inside the tolerance.
"""

import numpy as np
import pytest

from memobert_jax.data import masking
from memobert_jax.data.masking import FrameMasking, SpecialIds, mask_frame_spans, mask_words, random_tokens

# Not BERT's numbers on purpose: nothing may rely on them.
SPECIAL = SpecialIds(cls=7, sep=8, mask=9, pad=0, vocab_size=30000, others=(1,))
SIGMAS = 5


def within(observed: float, expected: float, sd: float) -> bool:
  return abs(observed - expected) <= SIGMAS * sd


def binomial_ok(hits: int, trials: int, p: float) -> bool:
  return within(hits / trials, p, np.sqrt(p * (1 - p) / trials))


def make_text(word_lengths, first_id: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """[CLS] + distinct ids per sub-token + [SEP], with word ids."""
  total = sum(word_lengths)
  ids = np.array([SPECIAL.cls, *range(first_id, first_id + total), SPECIAL.sep], np.int32)
  word_ids = np.array([-1, *np.repeat(np.arange(len(word_lengths)), word_lengths), -1], np.int32)
  return ids, word_ids


WORD_LENGTHS = [1, 2, 1, 3, 1, 1, 2, 1, 1, 1, 2, 1, 1, 3, 1, 1, 1, 2, 1, 1]  # 20 words, 28 sub-tokens


def run_many(n: int, word_lengths=WORD_LENGTHS, seed: int = 0, **kwargs):
  ids, word_ids = make_text(word_lengths)
  kwargs.setdefault('max_predictions', len(ids))
  rng = np.random.default_rng(seed)
  return ids, word_ids, [mask_words(ids, word_ids, SPECIAL, rng, **kwargs) for _ in range(n)]


def word_actions(ids, word_ids, example) -> dict[int, str]:
  """Per selected word: 'mask', 'random' or 'same' (asserting the word's sub-tokens agree)."""
  actions = {}
  positions = example.positions[example.weights > 0]
  for word in np.unique(word_ids[positions]):
    at = np.flatnonzero(word_ids == word)
    np.testing.assert_array_equal(np.sort(positions[np.isin(positions, at)]), at)  # whole word is a target
    new = example.ids[at]
    if np.all(new == SPECIAL.mask):
      actions[word] = 'mask'
    elif np.all(new == ids[at]):
      actions[word] = 'same'
    else:
      assert not np.any(new == SPECIAL.mask), 'a word mixes [MASK] with other tokens'
      assert np.all(new != ids[at]), 'a randomised word kept a sub-token (possible but ~1e-4 likely)'
      actions[word] = 'random'
  return actions


class TestSpecialIds:

  def test_excluded_sorted_unique(self):
    special = SpecialIds(cls=5, sep=2, mask=5, pad=0, vocab_size=10)
    np.testing.assert_array_equal(special.excluded, [0, 2, 5])

  @pytest.mark.parametrize('kwargs', [dict(cls=10), dict(pad=-1), dict(vocab_size=4)])
  def test_invalid(self, kwargs):
    args = dict(cls=1, sep=2, mask=3, pad=0, vocab_size=10) | kwargs
    with pytest.raises(ValueError):
      SpecialIds(**args)

  def test_random_tokens_uniform_over_non_special(self):
    special = SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=12, others=(11, 6))
    draws = random_tokens(np.random.default_rng(0), 60_000, special)
    assert draws.dtype == np.int32
    allowed = [4, 5, 7, 8, 9, 10]
    assert set(np.unique(draws)) == set(allowed)
    counts = np.bincount(draws, minlength=12)[allowed]
    assert all(binomial_ok(c, draws.size, 1 / len(allowed)) for c in counts), counts


class TestMaskWords:

  def test_shapes_and_dtypes(self):
    ids, word_ids, (example,) = run_many(1, max_predictions=12)
    assert example.ids.shape == ids.shape and example.ids.dtype == np.int32
    for name, dtype in [('positions', np.int32), ('targets', np.int32), ('weights', np.float32)]:
      assert getattr(example, name).shape == (12,) and getattr(example, name).dtype == dtype

  def test_word_selection_rate(self):
    n, words, p = 5000, len(WORD_LENGTHS), 0.15
    ids, word_ids, examples = run_many(n)
    selected = sum(len(word_actions(ids, word_ids, e)) for e in examples)
    # The forced word adds one selection whenever none was drawn.
    expected = (words * p + (1 - p)**words) / words
    assert binomial_ok(selected, n * words, expected), (selected / (n * words), expected)

  def test_80_10_10_split_per_word(self):
    ids, word_ids, examples = run_many(5000)
    actions = [a for e in examples for a in word_actions(ids, word_ids, e).values()]
    total = len(actions)
    for action, p in [('mask', 0.8), ('random', 0.1), ('same', 0.1)]:
      assert binomial_ok(actions.count(action), total, p), (action, actions.count(action) / total)

  def test_token_level_variant(self):
    n, p = 5000, 0.15
    ids, word_ids, examples = run_many(n, whole_word=False)
    tokens = len(ids) - 2
    selected = sum(int(e.weights.sum()) for e in examples)
    assert binomial_ok(selected, n * tokens, (tokens * p + (1 - p)**tokens) / tokens)
    # The 80/10/10 draw is per sub-token here, so multi-piece words get mixed actions.
    mixed = 0
    for e in examples:
      positions = e.positions[e.weights > 0]
      for word in np.flatnonzero(np.array(WORD_LENGTHS) > 1):
        at = np.flatnonzero(word_ids == word)
        if np.all(np.isin(at, positions)):
          mixed += len(set(e.ids[at] == SPECIAL.mask)) > 1
    assert mixed > 0
    actions = np.concatenate([e.ids[e.positions[e.weights > 0]] for e in examples])
    originals = np.concatenate([e.targets[e.weights > 0] for e in examples])
    assert binomial_ok(int(np.sum(actions == SPECIAL.mask)), actions.size, 0.8)
    assert binomial_ok(int(np.sum(actions == originals)), actions.size, 0.1)

  def test_random_replacements_never_special(self):
    special = SpecialIds(cls=2, sep=3, mask=4, pad=0, vocab_size=9, others=(1, 8))
    ids = np.array([2, 5, 6, 7, 5, 6, 7, 3], np.int32)
    word_ids = np.array([-1, 0, 1, 2, 3, 4, 5, -1], np.int32)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(2000):
      example = mask_words(ids, word_ids, special, rng, max_predictions=6, mask_prob=0.5, mask_ratio=0.0,
                           random_ratio=1.0)
      replaced = example.ids[example.positions[example.weights > 0]]
      seen.update(replaced.tolist())
    assert seen == {5, 6, 7}

  def test_cls_sep_and_specials_never_selected(self):
    ids, word_ids = make_text([1, 1, 2, 1])
    # A special token inside the text (word id -1) is not a word either.
    ids = np.insert(ids, 3, SPECIAL.sep)
    word_ids = np.insert(word_ids, 3, -1)
    rng = np.random.default_rng(2)
    for _ in range(2000):
      example = mask_words(ids, word_ids, SPECIAL, rng, max_predictions=8, mask_prob=0.9)
      positions = example.positions[example.weights > 0]
      assert not np.isin(positions, [0, 3, len(ids) - 1]).any()
      assert example.ids[0] == SPECIAL.cls and example.ids[3] == SPECIAL.sep and example.ids[-1] == SPECIAL.sep

  def test_targets_are_original_ids_and_the_rest_is_unchanged(self):
    ids, word_ids, examples = run_many(2000, max_predictions=16)
    for e in examples:
      real = e.weights > 0
      positions = e.positions[real]
      assert np.all(np.diff(positions) > 0)
      np.testing.assert_array_equal(e.targets[real], ids[positions])
      untouched = np.ones(len(ids), bool)
      untouched[positions] = False
      np.testing.assert_array_equal(e.ids[untouched], ids[untouched])
      assert np.all(e.positions[~real] == 0) and np.all(e.targets[~real] == SPECIAL.pad)
    assert examples[0].ids is not ids

  def test_forced_word_uniform_over_words(self):
    n = 3000
    ids, word_ids, examples = run_many(n, word_lengths=[3, 1, 2], mask_prob=0.0)
    chosen = []
    for e in examples:
      (word,) = word_actions(ids, word_ids, e)
      chosen.append(word)
    counts = np.bincount(chosen, minlength=3)
    assert all(binomial_ok(c, n, 1 / 3) for c in counts), counts

  def test_one_word_text_always_selects_it(self):
    ids, word_ids, examples = run_many(500, word_lengths=[2])
    for e in examples:
      np.testing.assert_array_equal(e.positions[e.weights > 0], [1, 2])

  def test_word_indices_need_not_be_contiguous(self):
    ids = np.array([SPECIAL.cls, 500, 501, SPECIAL.sep], np.int32)
    word_ids = np.array([-1, 4, 9, -1], np.int32)
    rng = np.random.default_rng(3)
    for _ in range(200):
      assert mask_words(ids, word_ids, SPECIAL, rng, max_predictions=2, mask_prob=0.0).weights.sum() == 1

  def test_text_without_words_raises(self):
    ids = np.array([SPECIAL.cls, SPECIAL.sep], np.int32)
    with pytest.raises(ValueError, match='no words'):
      mask_words(ids, np.array([-1, -1]), SPECIAL, np.random.default_rng(0), max_predictions=4)

  def test_mismatched_shapes_raise(self):
    with pytest.raises(ValueError, match='same length'):
      mask_words(np.zeros(4, np.int32), np.zeros(3, np.int32), SPECIAL, np.random.default_rng(0), max_predictions=4)

  def test_cap_keeps_whole_words_and_counts_skipped(self):
    ids, word_ids, examples = run_many(2000, word_lengths=[3] * 10, mask_prob=1.0, max_predictions=7)
    kept_per_word = np.zeros(10)
    for e in examples:
      actions = word_actions(ids, word_ids, e)  # asserts whole words only
      assert len(actions) == 2 and e.weights.sum() == 6 and e.num_skipped_words == 8
      kept_per_word[list(actions)] += 1
      # Skipped words are not corrupted, so input and targets agree.
      skipped = ~np.isin(word_ids, list(actions)) & (word_ids >= 0)
      np.testing.assert_array_equal(e.ids[skipped], ids[skipped])
    # Words are visited in a random order: no position is favoured.
    assert all(binomial_ok(k, 2000, 0.2) for k in kept_per_word), kept_per_word

  def test_cap_greedy_fills_with_shorter_words(self):
    ids, word_ids, examples = run_many(200, word_lengths=[4, 4, 1], mask_prob=1.0, max_predictions=5)
    for e in examples:
      assert set(word_actions(ids, word_ids, e)) in ({0, 2}, {1, 2}) and e.num_skipped_words == 1

  def test_forced_word_respects_cap(self):
    ids, word_ids, examples = run_many(200, word_lengths=[5, 1, 4], mask_prob=0.0, max_predictions=2)
    for e in examples:
      assert set(word_actions(ids, word_ids, e)) == {1} and e.num_capped_words == 0

  def test_a_text_whose_words_all_exceed_the_cap_masks_one_word_in_part(self):
    # Real subtitles hold words like 'oooooooooooooohhhhhhhhhhh': more word-pieces than the cap.
    ids, word_ids, examples = run_many(200, word_lengths=[25], max_predictions=12)
    for e in examples:
      assert e.num_capped_words == 1 and e.weights.sum() == 12
      np.testing.assert_array_equal(e.positions, np.arange(1, 13))  # the word's first 12 sub-tokens
      np.testing.assert_array_equal(e.targets, ids[1:13])
      np.testing.assert_array_equal(e.ids[13:], ids[13:])  # the rest of the word is left as it was
    ids, word_ids, examples = run_many(400, word_lengths=[5, 3], max_predictions=2)
    chosen = {int(word_ids[e.positions[0]]) for e in examples}
    assert chosen == {0, 1} and all(e.num_capped_words == 1 and e.weights.sum() == 2 for e in examples)

  def test_cap_rarely_binds_at_default_rate(self):
    # With 28 sub-tokens and p = 0.15, 16 slots should never overflow in 2000 draws.
    _, _, examples = run_many(2000, max_predictions=16)
    assert sum(e.num_skipped_words for e in examples) == 0

  def test_same_seed_same_output(self):
    ids, word_ids = make_text(WORD_LENGTHS)

    def draw(seed):
      rng = np.random.default_rng(seed)
      return [mask_words(ids, word_ids, SPECIAL, rng, max_predictions=10) for _ in range(20)]

    for a, b in zip(draw(5), draw(5)):
      for name in ('ids', 'positions', 'targets', 'weights'):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert any(not np.array_equal(a.ids, b.ids) for a, b in zip(draw(5), draw(6)))


def run_frames(n: int, num_frames: int, seed: int = 0, dim: int = 4, **kwargs) -> tuple[np.ndarray, list]:
  """Frames whose values are their own index, so copies can be traced."""
  frames = np.repeat(np.arange(num_frames, dtype=np.float32)[:, None], dim, axis=1)
  rng = np.random.default_rng(seed)
  return frames, [mask_frame_spans(frames, rng, **kwargs) for _ in range(n)]


def runs(mask: np.ndarray) -> list[int]:
  """Lengths of the maximal runs of True."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


class TestMaskFrameSpans:

  def test_spans_have_length_c(self):
    for span_len, num_frames, ratio in [(3, 36, 0.2), (3, 64, 0.15), (1, 36, 0.2), (5, 100, 0.3)]:
      num_spans = int(num_frames * ratio / span_len + 1e-9)
      _, results = run_frames(1000, num_frames, span_len=span_len, ratio=ratio, mask_prob=1.0)
      for r in results:
        assert r.mode == masking.MODE_MASK
        lengths = runs(r.masked)
        assert len(lengths) <= num_spans and span_len <= min(lengths) and sum(lengths) <= num_spans * span_len

  def test_masked_ratio_matches_the_formula(self):
    num_frames, span_len, ratio, n = 150, 3, 0.2, 4000
    num_spans = 10  # floor(150 * 0.2 / 3)
    _, results = run_frames(n, num_frames, span_len=span_len, ratio=ratio, mask_prob=1.0)
    counts = np.array([r.masked.sum() for r in results])
    # Starts uniform over S = N - C + 1 positions; frame j is covered by c_j of them.
    starts = num_frames - span_len + 1
    cover = np.array([min(j, starts - 1) - max(0, j - span_len + 1) + 1 for j in range(num_frames)])
    expected = np.sum(1 - (1 - cover / starts)**num_spans)
    assert within(counts.mean(), expected, counts.std() / np.sqrt(n)), (counts.mean(), expected)
    assert expected / num_frames == pytest.approx(ratio, abs=0.02)  # overlaps cost a little of r
    # Every frame can be masked, including the first and last.
    coverage = np.mean([r.masked for r in results], axis=0)
    assert np.all(coverage > 0)
    np.testing.assert_allclose(coverage[span_len:-span_len], 1 - (1 - span_len / starts)**num_spans, atol=0.03)

  def test_u_split_80_10_10(self):
    n = 10_000
    _, results = run_frames(n, 36)
    modes = [r.mode for r in results]
    # The unchanged case has no target, so it falls back to one masked frame.
    for mode, p in [(masking.MODE_MASK, 0.8), (masking.MODE_REPLACE, 0.1), (masking.MODE_FALLBACK, 0.1)]:
      assert binomial_ok(modes.count(mode), n, p), (mode, modes.count(mode) / n)
    for r in results:
      if r.mode == masking.MODE_FALLBACK:
        assert r.masked.sum() == 1
        np.testing.assert_array_equal(r.masked, r.target_mask)

  def test_unchanged_are_targets_option(self):
    frames, results = run_frames(200, 36, mask_prob=0.0, replace_prob=0.0, unchanged_are_targets=True)
    for r in results:
      assert r.mode == masking.MODE_KEEP and r.frames is frames
      assert not r.masked.any() and 3 <= r.target_mask.sum() <= 6

  def test_mask_case(self):
    frames, results = run_frames(200, 36, mask_prob=1.0)
    for r in results:
      assert r.frames is frames  # the model zeroes masked frames itself
      np.testing.assert_array_equal(r.masked, r.target_mask)
      assert r.masked is not r.target_mask

  def test_replace_copies_other_frames_of_the_same_example(self):
    frames, results = run_frames(2000, 40, mask_prob=0.0, replace_prob=1.0)
    original = frames.copy()
    shifts = []
    for r in results:
      assert r.mode == masking.MODE_REPLACE and not r.masked.any()
      assert r.frames is not frames and r.frames.shape == frames.shape and r.frames.dtype == frames.dtype
      source = r.frames[:, 0].astype(int)
      np.testing.assert_array_equal(r.frames, frames[source])  # every row is a frame of this example
      targets = r.target_mask
      np.testing.assert_array_equal(source[~targets], np.flatnonzero(~targets))  # the rest is untouched
      # A span is never copied onto itself, so every target frame changed.
      assert np.all(source[targets] != np.flatnonzero(targets))
      lengths = runs(targets)
      assert min(lengths) >= 3 and sum(lengths) <= 6  # n = floor(40 * 0.2 / 3) = 2 spans of 3
      shifts.extend(source[targets] - np.flatnonzero(targets))
    np.testing.assert_array_equal(frames, original)  # the targets (original frames) are intact
    assert min(shifts) < -20 and max(shifts) > 20  # sources come from anywhere in the clip

  @pytest.mark.parametrize('num_frames', [1, 2, 5, 14])
  def test_fallback_for_short_inputs(self, num_frames):
    n = 3000
    frames, results = run_frames(n, num_frames)
    chosen = []
    for r in results:
      assert r.mode == masking.MODE_FALLBACK and r.has_targets and r.frames is frames
      assert r.masked.sum() == 1
      np.testing.assert_array_equal(r.masked, r.target_mask)
      chosen.append(int(np.flatnonzero(r.masked)[0]))
    counts = np.bincount(chosen, minlength=num_frames)
    assert all(binomial_ok(c, n, 1 / num_frames) for c in counts), counts

  @pytest.mark.parametrize('num_frames,ratio,num_spans', [(15, 0.2, 1), (14, 0.2, 0), (20, 0.15, 1), (19, 0.15, 0),
                                                          (40, 0.15, 2), (36, 0.2, 2)])
  def test_span_count_threshold(self, num_frames, ratio, num_spans):
    _, results = run_frames(100, num_frames, ratio=ratio, mask_prob=1.0)
    if num_spans == 0:
      assert all(r.mode == masking.MODE_FALLBACK for r in results)
    else:
      assert all(r.mode == masking.MODE_MASK for r in results)
      assert max(r.masked.sum() for r in results) <= 3 * num_spans

  def test_single_frame_variant(self):
    _, results = run_frames(2000, 36, span_len=1, mask_prob=1.0)  # n = 7 single frames
    counts = [r.masked.sum() for r in results]
    assert 1 <= min(counts) and max(counts) == 7

  @pytest.mark.parametrize('kwargs', [dict(span_len=0), dict(ratio=1.5), dict(ratio=-0.1)])
  def test_invalid_arguments(self, kwargs):
    with pytest.raises(ValueError, match='span_len'):
      mask_frame_spans(np.zeros((10, 2)), np.random.default_rng(0), **kwargs)

  def test_no_frames(self):
    frames = np.zeros((0, 342), np.float32)
    r = mask_frame_spans(frames, np.random.default_rng(0))
    assert isinstance(r, FrameMasking) and not r.has_targets and r.mode == masking.MODE_EMPTY
    assert r.frames.shape == (0, 342) and r.masked.shape == (0,) and r.target_mask.shape == (0,)
    assert r.masked.dtype == bool

  def test_same_seed_same_output(self):
    for kwargs in [dict(), dict(mask_prob=0.0, replace_prob=1.0)]:
      _, a = run_frames(30, 36, seed=4, **kwargs)
      _, b = run_frames(30, 36, seed=4, **kwargs)
      for x, y in zip(a, b):
        assert x.mode == y.mode
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.masked, y.masked)
        np.testing.assert_array_equal(x.target_mask, y.target_mask)
