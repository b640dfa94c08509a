"""Per-example corruption for the pretraining tasks (spec section 3), as pure numpy functions.

Everything here works on one example before padding/batching and draws only from the `np.random.Generator`
it is given, so a pipeline that seeds one generator per example gets reproducible corruption.

- `mask_words`: whole-word (or, for an ablation, token-level) MLM with 80/10/10 corruption and fixed-size targets.
- `mask_frame_spans`: span-masked frame corruption for the frame-regression and frame-KL tasks.
"""

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the tokenizer's special tokens and the vocabulary size; never hard-coded elsewhere.

  Attributes:
    cls: [CLS] id.
    sep: [SEP] id.
    mask: [MASK] id.
    pad: [PAD] id.
    vocab_size: number of ids in the vocabulary.
    others: further ids that a random replacement must never produce (e.g. [UNK]).
  """
  cls: int
  sep: int
  mask: int
  pad: int
  vocab_size: int
  others: tuple[int, ...] = ()

  def __post_init__(self):
    excluded = self.excluded
    if excluded.size and (excluded[0] < 0 or excluded[-1] >= self.vocab_size):
      raise ValueError(f'special ids {excluded.tolist()} must lie in [0, vocab_size={self.vocab_size})')
    if excluded.size >= self.vocab_size:
      raise ValueError('the vocabulary has no ordinary token to draw random replacements from')

  @functools.cached_property
  def excluded(self) -> np.ndarray:
    """Sorted unique special ids (never drawn as random replacements)."""
    return np.unique(np.array((self.cls, self.sep, self.mask, self.pad, *self.others), np.int64))

  @functools.cached_property
  def _shifted_excluded(self) -> np.ndarray:
    # The k-th excluded id shifted down by k: the r-th ordinary id is r + #(shifted <= r).
    return self.excluded - np.arange(self.excluded.size)


def random_tokens(rng: np.random.Generator, n: int, special: SpecialIds) -> np.ndarray:
  """Draws `n` ids uniformly over the vocabulary minus the special ids (one draw each, no rejection loop)."""
  r = rng.integers(0, special.vocab_size - special.excluded.size, size=n)
  return (r + np.searchsorted(special._shifted_excluded, r, side='right')).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class MlmExample:
  """Output of `mask_words`.

  Attributes:
    ids: int32[T], the corrupted token ids (same length as the input).
    positions: int32[P], positions of the prediction targets in `ids`, ascending; padding is 0.
    targets: int32[P], the original ids at `positions`; padding is the [PAD] id.
    weights: float32[P], 1 for a real target, 0 for padding.
    num_skipped_words: selected words (tokens for the token-level variant) left uncorrupted because their
      sub-tokens would not fit into `max_predictions`.
    num_capped_words: 1 if no word fitted and the forced word was masked in part (its first
      `max_predictions` sub-tokens), else 0.
  """
  ids: np.ndarray
  positions: np.ndarray
  targets: np.ndarray
  weights: np.ndarray
  num_skipped_words: int
  num_capped_words: int = 0


def mask_words(ids: np.ndarray, word_ids: np.ndarray, special: SpecialIds, rng: np.random.Generator, *,
               max_predictions: int, mask_prob: float = 0.15, whole_word: bool = True, mask_ratio: float = 0.8,
               random_ratio: float = 0.1) -> MlmExample:
  """Whole-word (default) or token-level masked-language-model corruption of one text.

  A unit is a word (`whole_word=True`) or a single sub-token (`whole_word=False`, the ablation). Each unit is
  selected independently with probability `mask_prob`; [CLS], [SEP], [PAD] and tokens with word id -1 never are.
  The 80/10/10 draw is made ONCE PER UNIT (the spec's reading, unlike the authors' UNITER code that draws per
  sub-token): with probability `mask_ratio` all sub-tokens of a selected word become [MASK], with `random_ratio`
  each of its sub-tokens becomes an independent uniform random non-special token, otherwise all stay unchanged.
  Every sub-token of a selected word is a target whatever the draw.

  Cap: if the selected units hold more than `max_predictions` sub-tokens, they are visited in a random order and
  a unit is kept only if its sub-tokens still fit; the others are left uncorrupted and are not targets (so input
  and targets stay consistent) and are counted in `num_skipped_words`. Nothing is silently truncated.
  If no unit ends up selected, one unit that fits the cap is chosen uniformly and selected; if none fits (one
  long word, such as a drawn-out interjection in real subtitles), one unit is chosen uniformly and only its first
  `max_predictions` sub-tokens are corrupted and targets, counted in `num_capped_words`.

  Args:
    ids: int[T] token ids, [CLS] first and [SEP] last.
    word_ids: int[T] word index of each token, -1 for [CLS]/[SEP] and other specials.
    special: the tokenizer's special ids and vocabulary size.
    rng: the example's generator.
    max_predictions: P, the static number of target slots.
    mask_prob: selection probability per unit.
    whole_word: select words (True) or single sub-tokens (False).
    mask_ratio: probability that a selected unit is replaced by [MASK].
    random_ratio: probability that a selected unit is replaced by random tokens.

  Returns:
    The corrupted ids and P-sized targets.

  Raises:
    ValueError: if the text has no word (only special tokens).
  """
  ids = np.asarray(ids)
  word_ids = np.asarray(word_ids)
  if ids.shape != word_ids.shape or ids.ndim != 1:
    raise ValueError(f'ids {ids.shape} and word_ids {word_ids.shape} must be 1-D of the same length')
  candidate = (word_ids >= 0) & (ids != special.cls) & (ids != special.sep) & (ids != special.pad)
  token_pos = np.flatnonzero(candidate)
  if token_pos.size == 0:
    raise ValueError('cannot mask a text with no words: every token is a special token ([CLS]/[SEP]/word id -1)')
  if whole_word:
    token_unit = word_ids[token_pos]
    num_units = int(token_unit.max()) + 1
  else:
    token_unit = np.arange(token_pos.size)
    num_units = token_pos.size
  pieces = np.bincount(token_unit, minlength=num_units)
  present = pieces > 0  # word indices need not be contiguous

  # Row 0 selects units, row 1 is each unit's 80/10/10 draw.
  draws = rng.random((2, num_units))
  selected = (draws[0] < mask_prob) & present
  num_skipped = 0
  if pieces[selected].sum() > max_predictions:
    selected, num_skipped = _fit_to_cap(selected, pieces, max_predictions, rng)
  num_capped = 0
  if not selected.any():
    fits = np.flatnonzero(present & (pieces <= max_predictions))
    num_capped = int(fits.size == 0)
    choices = fits if fits.size else np.flatnonzero(present)
    selected[choices[rng.integers(choices.size)]] = True

  is_target = selected[token_unit]
  if num_capped:
    is_target &= np.cumsum(is_target) <= max_predictions
  positions = token_pos[is_target]
  action = draws[1, token_unit[is_target]]
  out = ids.astype(np.int32)  # a copy: the input is never modified
  out[positions[action < mask_ratio]] = special.mask
  randomised = positions[(action >= mask_ratio) & (action < mask_ratio + random_ratio)]
  if randomised.size:  # skipping the empty draw saves a fifth of the time
    out[randomised] = random_tokens(rng, randomised.size, special)

  num_targets = positions.size
  padded_positions = np.zeros(max_predictions, np.int32)
  padded_positions[:num_targets] = positions
  targets = np.full(max_predictions, special.pad, np.int32)
  targets[:num_targets] = ids[positions]
  weights = np.zeros(max_predictions, np.float32)
  weights[:num_targets] = 1.0
  return MlmExample(out, padded_positions, targets, weights, num_skipped, num_capped)


def _fit_to_cap(selected: np.ndarray, pieces: np.ndarray, cap: int,
                rng: np.random.Generator) -> tuple[np.ndarray, int]:
  """Greedy first-fit of the selected units into `cap` sub-tokens, in a random order so no position is favoured."""
  order = rng.permutation(np.flatnonzero(selected))
  kept = np.zeros_like(selected)
  room = cap
  for unit in order:
    if pieces[unit] <= room:
      kept[unit] = True
      room -= pieces[unit]
  return kept, int(order.size - kept.sum())


# How `mask_frame_spans` corrupted an example (the u draw, or why it was not used).
MODE_MASK = 'mask'
MODE_REPLACE = 'replace'
MODE_KEEP = 'keep'
MODE_FALLBACK = 'fallback'
MODE_EMPTY = 'empty'


@dataclasses.dataclass(frozen=True)
class FrameMasking:
  """Output of `mask_frame_spans`.

  The regression targets are the caller's original frames and the KL targets its soft labels, both taken at
  `target_mask`; they are not copied here.

  Attributes:
    frames: float[N, D], the model input: the original array itself unless spans were replaced (then a copy).
      Masked frames keep their values; the model zeroes them and adds its mask vector.
    masked: bool[N], frames the model must replace by its mask vector.
    target_mask: bool[N], frames whose loss counts.
    mode: one of MODE_MASK, MODE_REPLACE, MODE_KEEP (spans drawn, u decided), MODE_FALLBACK (one random frame
      masked), MODE_EMPTY (N = 0: no targets).
  """
  frames: np.ndarray
  masked: np.ndarray
  target_mask: np.ndarray
  mode: str

  @property
  def has_targets(self) -> bool:
    """False only for N = 0: the pipeline should then not pick a frame task for this example (or weight it 0)."""
    return self.mode != MODE_EMPTY


def mask_frame_spans(frames: np.ndarray, rng: np.random.Generator, *, span_len: int = 3, ratio: float = 0.2,
                     mask_prob: float = 0.8, replace_prob: float = 0.1,
                     unchanged_are_targets: bool = False) -> FrameMasking:
  """Span-masked corruption of one modality's frames (visual r = 0.20, acoustic r = 0.15; C = 1 for single frames).

  n = floor(N * ratio / span_len) spans are drawn with starts uniform over [0, N - span_len] (with replacement,
  so spans may overlap; every span lies inside the clip and has exactly `span_len` frames). Then ONE draw u:
  - u < mask_prob: the span frames are masked and are the targets.
  - u < mask_prob + replace_prob: each span is overwritten by a copy of the original frames of another span of
    the same length (start uniform over the other starts; where spans overlap, one of their copies is kept); no
    frame is masked; the span frames are the targets (their original values).
  - otherwise the frames are left unchanged. As in the spec and the authors' code, unchanged frames are not
    targets, so this case falls back (below) to masking one random frame; `unchanged_are_targets=True` instead
    keeps the spans as unmasked targets, BERT-style (an ablation).
  Fallback: whenever no frame would be a target (n = 0, i.e. N < span_len / ratio, or the unchanged case), u is
  not used (not drawn when n = 0): one frame chosen uniformly over [0, N) is masked and is the only target.
  Masking (not replacing) because with N = 1 there is nothing to copy and an unchanged lone frame is a trivial
  target. N = 0: no targets, `has_targets` is False.

  Args:
    frames: float[N, D] features of one modality.
    rng: the example's generator.
    span_len: C, frames per span.
    ratio: r, the fraction of frames the spans cover before overlaps.
    mask_prob: probability of the mask case.
    replace_prob: probability of the replace case.
    unchanged_are_targets: whether spans left unchanged are targets.

  Returns:
    The corrupted frames and the two per-frame masks. The input array is never modified.

  Raises:
    ValueError: if span_len < 1 or ratio is outside [0, 1] (ratio <= 1 keeps every span inside the clip).
  """
  if span_len < 1 or not 0.0 <= ratio <= 1.0:
    raise ValueError(f'need span_len >= 1 and 0 <= ratio <= 1, got {span_len} and {ratio}')
  num_frames = frames.shape[0]
  if num_frames == 0:
    empty = np.zeros(0, bool)
    return FrameMasking(frames, empty, empty, MODE_EMPTY)
  # The epsilon guards float round-off at exact multiples (180 * 0.35 / 3 is 20.999... in floats).
  num_spans = int(num_frames * ratio / span_len + 1e-9)
  if num_spans == 0:
    return _mask_one_frame(frames, rng)
  u = rng.random()
  keep = u >= mask_prob + replace_prob
  if keep and not unchanged_are_targets:
    return _mask_one_frame(frames, rng)

  num_starts = num_frames - span_len + 1
  starts = rng.integers(0, num_starts, size=num_spans)
  offsets = np.arange(span_len)
  covered = (starts[:, None] + offsets).ravel()
  target_mask = np.zeros(num_frames, bool)
  target_mask[covered] = True
  if u < mask_prob:
    return FrameMasking(frames, target_mask.copy(), target_mask, MODE_MASK)
  if keep:
    return FrameMasking(frames, np.zeros(num_frames, bool), target_mask, MODE_KEEP)
  if num_starts > 1:
    # Uniform over the other starts: draw from one fewer and step over the span's own start.
    sources = rng.integers(0, num_starts - 1, size=num_spans)
    sources += sources >= starts
  else:
    sources = starts
  source_index = np.arange(num_frames)
  source_index[covered] = (sources[:, None] + offsets).ravel()
  return FrameMasking(frames[source_index], np.zeros(num_frames, bool), target_mask, MODE_REPLACE)


def _mask_one_frame(frames: np.ndarray, rng: np.random.Generator) -> FrameMasking:
  masked = np.zeros(frames.shape[0], bool)
  masked[rng.integers(frames.shape[0])] = True
  return FrameMasking(frames, masked, masked.copy(), MODE_FALLBACK)


def special_ids(tokenizer) -> SpecialIds:
  """A tokenizer's special ids (memobert_jax.tokenizer.Tokenizer or anything with the same id attributes)."""
  return SpecialIds(cls=tokenizer.cls_id, sep=tokenizer.sep_id, mask=tokenizer.mask_id, pad=tokenizer.pad_id,
                    vocab_size=tokenizer.vocab_size, others=(tokenizer.unk_id,))
