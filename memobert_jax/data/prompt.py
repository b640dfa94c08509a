"""Prompt-based finetuning inputs (spec section 4): template, truncation, verbalizer and the 7 cross-modal cases.

The tokenizer stays outside: functions take an `encode_words(text) -> list[list[int]]` callable (one list of
word-piece ids per word, no [CLS]/[SEP]) or text that is already split into words of ids. The template is split
around its [MASK] before tokenizing, so the tokenizer never has to recognise [MASK] inside text, and the [MASK]
id is inserted from `SpecialIds`.
"""

from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

from memobert_jax.data.masking import SpecialIds

MASK_TOKEN = '[MASK]'
UNKNOWN_TOKEN = '[UNK]'
# The paper's template and the two others it tried; finetuning configs name them by key.
TEMPLATES = {'i_am': 'I am [MASK] .', 'it_was': 'It was [MASK] .', 'he_is': 'He is [MASK] .'}
_SENTENCE_ENDS = ('.', '?', '!')

EncodeWords = Callable[[str], list[list[int]]]


def check_template(template: str) -> None:
  """Raises ValueError unless `template` contains [MASK] exactly once."""
  if template.count(MASK_TOKEN) != 1:
    raise ValueError(f'a prompt template must contain {MASK_TOKEN} exactly once, got {template!r}')


@dataclasses.dataclass(frozen=True)
class TokenizedTemplate:
  """A template tokenized once, to be attached to many utterances.

  Attributes:
    text: the template string.
    before: words of ids before [MASK].
    after: words of ids after [MASK].
    period: the ids of '.', inserted before the template when the utterance words do not end a sentence.
    sentence_end_ids: ids of '.', '?' and '!', alone and after a word (SentencePiece writes them differently):
      utterance words whose last id is one of them end a sentence. For tokenizers that split punctuation off
      (BERT's WordPiece) this id rule is exactly the string rule of `prompt_text`.
  """
  text: str
  before: tuple[tuple[int, ...], ...]
  after: tuple[tuple[int, ...], ...]
  period: tuple[int, ...]
  sentence_end_ids: frozenset[int]

  @property
  def num_pieces(self) -> int:
    """Sub-tokens of the template itself, [MASK] included."""
    return sum(map(len, self.before)) + 1 + sum(map(len, self.after))


def tokenize_template(template: str, encode_words: EncodeWords) -> TokenizedTemplate:
  """Tokenizes `template` around its [MASK] with the tokenizer's `encode_words`."""
  check_template(template)
  before, after = template.split(MASK_TOKEN)
  period = tuple(int(piece) for word in encode_words('.') for piece in word)
  ends = frozenset(int(encode_words(text)[-1][-1]) for end in _SENTENCE_ENDS for text in (end, 'a' + end))
  return TokenizedTemplate(template, _as_words(encode_words(before)), _as_words(encode_words(after)), period, ends)


def _as_words(words: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
  return tuple(tuple(int(piece) for piece in word) for word in words)


@dataclasses.dataclass(frozen=True)
class PromptExample:
  """One prompt input: [CLS] utterance (.) template-with-[MASK] [SEP].

  Attributes:
    ids: int32[T] token ids, T <= max_text_len.
    word_ids: int32[T] word index per token; -1 for [CLS], [SEP] and the prompt's [MASK].
    mask_position: index of [MASK] in `ids`.
    num_truncated_words: utterance words dropped from the end to fit `max_text_len`.
  """
  ids: np.ndarray
  word_ids: np.ndarray
  mask_position: int
  num_truncated_words: int


def build_prompt(utterance_words: Sequence[Sequence[int]], template: TokenizedTemplate, special: SpecialIds, *,
                 max_text_len: int) -> PromptExample:
  """Appends the template to an utterance given as words of ids, truncating the utterance, never the prompt.

  The '.'-rule is applied to the ids: a period is inserted unless the utterance is empty or its last id is in
  `template.sentence_end_ids`. If [CLS] + utterance (+ period) + template + [SEP] exceeds `max_text_len`, whole
  utterance words are dropped from the end until it fits; the '.'-rule is re-applied to the kept words (a
  truncated utterance usually gets a period), so [MASK] and [SEP] always fit. If not even the first word fits,
  the result is the prompt alone.

  Args:
    utterance_words: the utterance as words of sub-token ids, without [CLS]/[SEP] (empty for prompt-only).
    template: the tokenized template.
    special: the tokenizer's special ids.
    max_text_len: maximum number of text tokens, [CLS] and [SEP] included.

  Returns:
    The prompt ids, word ids and [MASK] position.

  Raises:
    ValueError: if the template alone does not fit in `max_text_len`.
  """
  budget = max_text_len - 2 - template.num_pieces
  if budget < 0:
    raise ValueError(f'template {template.text!r} needs {template.num_pieces + 2} tokens, max_text_len is '
                     f'{max_text_len}')
  utterance_words = [word for word in utterance_words if len(word)]
  ends_at = np.cumsum([0, *map(len, utterance_words)])  # ends_at[k]: sub-tokens in the first k words
  kept = len(utterance_words)

  def needs_period(num_words: int) -> bool:
    return num_words > 0 and int(utterance_words[num_words - 1][-1]) not in template.sentence_end_ids

  def size(num_words: int) -> int:
    return int(ends_at[num_words]) + (len(template.period) if needs_period(num_words) else 0)

  if size(kept) > budget:
    kept = int(np.searchsorted(ends_at, budget, side='right')) - 1  # the longest prefix that fits without '.'
    while kept and size(kept) > budget:
      kept -= 1
  head = [*utterance_words[:kept], *([template.period] if needs_period(kept) else []), *template.before]
  head_ids, head_words = _flatten(head, 0)
  tail_ids, tail_words = _flatten(template.after, len(head))
  ids = np.array([special.cls, *head_ids, special.mask, *tail_ids, special.sep], np.int32)
  word_ids = np.array([-1, *head_words, -1, *tail_words, -1], np.int32)
  mask_at = 1 + len(head_ids)
  return PromptExample(ids, word_ids, mask_at, len(utterance_words) - kept)


def _flatten(words: Sequence[Sequence[int]], first_word: int) -> tuple[list[int], list[int]]:
  """Concatenated ids of `words` and, per id, its word index counted from `first_word`."""
  ids, word_ids = [], []
  for i, word in enumerate(words, first_word):
    ids.extend(int(piece) for piece in word)
    word_ids.extend([i] * len(word))
  return ids, word_ids


@dataclasses.dataclass(frozen=True)
class Verbalizer:
  """Label words: class index -> the vocabulary id the MLM head must predict at [MASK].

  Attributes:
    words: one label word per class, e.g. ('anger', 'happy', 'neutral', 'sad').
    ids: their vocabulary ids, in the same order.
  """
  words: tuple[str, ...]
  ids: tuple[int, ...]

  def __post_init__(self):
    if len(self.words) != len(self.ids):
      raise ValueError(f'{len(self.words)} label words but {len(self.ids)} ids')
    if len(set(self.ids)) != len(self.ids):
      raise ValueError(f'label word ids must be distinct, got {self.ids}')

  @classmethod
  def from_words(cls, words: Sequence[str], encode_words: EncodeWords, *,
                 vocabulary: str = 'the vocabulary') -> 'Verbalizer':
    """Looks the label words up with the tokenizer; each must be a single word-piece other than [UNK].

    `vocabulary` names the tokenizer's vocabulary file in the error.
    """
    unknown = encode_words(UNKNOWN_TOKEN)  # the tokenizers read a special token written in the text
    hint = (f'give one single-token word per class, in this order: --config.finetune.label_words="{tuple(words)!r}" '
            f'with the word replaced')
    ids = []
    for word in words:
      encoded = encode_words(word)
      if encoded == unknown:
        raise ValueError(f'label word {word!r} is not in {vocabulary} (it would be read as {UNKNOWN_TOKEN}); {hint}')
      if len(encoded) != 1 or len(encoded[0]) != 1:
        raise ValueError(f'label word {word!r} is not a single vocabulary token ({vocabulary} splits it into '
                         f'{encoded}); {hint}')
      ids.append(int(encoded[0][0]))
    return cls(tuple(words), tuple(ids))

  @property
  def label_ids(self) -> np.ndarray:
    """int32[num_classes]: the ids whose logits are compared for prediction."""
    return np.asarray(self.ids, np.int32)

  def target_id(self, label: int) -> int:
    """The gold label word's id for class `label`."""
    return self.ids[label]


@dataclasses.dataclass(frozen=True)
class ModalityCase:
  """Which inputs a cross-modal training variant keeps: the utterance text (the prompt is always there), V, A."""
  name: str
  text: bool
  visual: bool
  acoustic: bool


# Spec section 4: text+prompt with {V+A, V, A, none}, prompt only with {V+A, V, A}.
CROSS_MODAL_CASES = (
    ModalityCase('LVA', True, True, True),
    ModalityCase('LV', True, True, False),
    ModalityCase('LA', True, False, True),
    ModalityCase('L', True, False, False),
    ModalityCase('VA', False, True, True),
    ModalityCase('V', False, True, False),
    ModalityCase('A', False, False, True),
)


def cross_modal_cases(has_visual: bool, has_acoustic: bool,
                      cases: Sequence[ModalityCase] = CROSS_MODAL_CASES) -> list[ModalityCase]:
  """The cross-modal variants a training utterance appears in (its label is the same in all of them).

  A case is used only if every modality it keeps is present (N > 0): with all modalities present that is all
  7; a missing modality removes the cases that would duplicate another one, and the prompt-only cases that
  would see no input at all.
  """
  return [c for c in cases if (has_visual or not c.visual) and (has_acoustic or not c.acoustic)]
