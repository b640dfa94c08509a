"""Tests of the prompt inputs (memobert_jax.data.prompt) with a fake word-piece tokenizer."""

import re

import numpy as np
import pytest

from memobert_jax.data.masking import SpecialIds
from memobert_jax.data.prompt import (TEMPLATES, PromptExample, TokenizedTemplate, Verbalizer, build_prompt,
                                      check_template, cross_modal_cases, tokenize_template)

SPECIAL = SpecialIds(cls=101, sep=102, mask=103, pad=0, vocab_size=30522, others=(100,))
DEFAULT_TEMPLATE = TEMPLATES['i_am']
_SENTENCE_ENDS = ('.', '?', '!')


# String-level references the token-level prompt building is checked against.


def _end_sentence(utterance: str) -> str:
  """The stripped utterance + '.' unless it is empty or already ends in . ? !"""
  text = utterance.strip()
  return text + '.' if text and not text.endswith(_SENTENCE_ENDS) else text


def prompt_text(utterance: str, template: str = DEFAULT_TEMPLATE) -> str:
  """utterance + ('.' unless it ends in . ? !) + ' ' + template; an empty utterance gives the template alone."""
  check_template(template)
  text = _end_sentence(utterance)
  return f'{text} {template}' if text else template


def mask_position(ids: np.ndarray, mask_id: int) -> int:
  """Index of the single [MASK] in `ids` (e.g. a tokenizer's encoding of `prompt_text`)."""
  found = np.flatnonzero(np.asarray(ids) == mask_id)
  if found.size != 1:
    raise ValueError(f'expected exactly one [MASK] (id {mask_id}) in the prompt ids, found {found.size}')
  return int(found[0])


def split_words(ids: np.ndarray, word_ids: np.ndarray) -> list[np.ndarray]:
  """Splits an encoded text ([CLS] ... [SEP], word ids -1 on specials) back into words of ids."""
  ids, word_ids = np.asarray(ids), np.asarray(word_ids)
  keep = word_ids >= 0
  ids, word_ids = ids[keep], word_ids[keep]
  return np.split(ids, np.flatnonzero(np.diff(word_ids)) + 1) if ids.size else []


def encode_prompt(utterance: str, template: TokenizedTemplate, encode_words, special: SpecialIds, *,
                  max_text_len: int) -> PromptExample:
  """`build_prompt` on raw text: the '.'-rule is applied to the string, then the utterance is tokenized.

  Without truncation the ids are those of tokenizing `prompt_text(utterance, template.text)` (for any tokenizer
  that keeps [MASK] whole and splits words at spaces).
  """
  text = _end_sentence(utterance)
  return build_prompt(encode_words(text) if text else [], template, special, max_text_len=max_text_len)


class FakeTokenizer:
  """Lower-cases and cuts words into pieces of 4 characters; ids from a growing table.

  WordPiece-like by default: punctuation is a word of its own, continuation pieces start with '##'; seeded with
  the bert-base-uncased ids of the spec's example so `i am [MASK] .` reads as in the paper. With
  `attached_punctuation` it is SentencePiece-like: words are whitespace chunks, the first piece carries '▁' and
  trailing punctuation is a piece of its word ('▁.' alone, '.' after a word).
  '[MASK]' is only understood by `encode_reference`, the independent reference for whole prompt strings.
  """

  def __init__(self, attached_punctuation: bool = False):
    self.attached = attached_punctuation
    self.vocab = {} if attached_punctuation else {'i': 1045, 'am': 2572, '.': 1012, '?': 1029, '!': 999,
                                                  'anger': 4963, 'happy': 3407, 'neutral': 8699, 'sad': 6517}

  def _id(self, piece: str) -> int:
    return self.vocab.setdefault(piece, 20000 + len(self.vocab))

  def _pieces(self, word: str) -> list[str]:
    if not self.attached:
      return [word] if word in self.vocab else [word[:4]] + ['##' + word[k:k + 4] for k in range(4, len(word), 4)]
    body, tail = re.fullmatch(r'(.*?)([^\w\s]*)', word).groups()
    pieces = [body[k:k + 4] for k in range(0, len(body), 4)] + list(tail)
    pieces[0] = '\u2581' + pieces[0]
    return pieces

  def encode_words(self, text: str) -> list[list[int]]:
    words = text.lower().split() if self.attached else re.findall(r'\w+|[^\w\s]', text.lower())
    return [[self._id(piece) for piece in self._pieces(word)] for word in words]

  def encode_reference(self, text: str) -> list[int]:
    ids = [SPECIAL.cls]
    for part in re.split(r'(\[MASK\])', text):
      ids += [SPECIAL.mask] if part == '[MASK]' else [i for word in self.encode_words(part) for i in word]
    return ids + [SPECIAL.sep]


@pytest.fixture
def tok():
  return FakeTokenizer()


@pytest.fixture
def template(tok):
  return tokenize_template(DEFAULT_TEMPLATE, tok.encode_words)


UTTERANCES = ['hello world', 'Are you serious?', 'wow!', 'I knew it.', 'extraordinarily unbelievable stuff',
              "don't, please", '', '   ', 'ok .', 'what ?!']


class TestPromptText:

  @pytest.mark.parametrize('utterance,expected', [
      ('hello world', 'hello world. I am [MASK] .'),
      ('hello world.', 'hello world. I am [MASK] .'),
      ('really?', 'really? I am [MASK] .'),
      ('wow!', 'wow! I am [MASK] .'),
      ('  padded  ', 'padded. I am [MASK] .'),
      ('so,', 'so,. I am [MASK] .'),
      ('', 'I am [MASK] .'),
  ])
  def test_period_rule(self, utterance, expected):
    assert prompt_text(utterance) == expected

  def test_other_templates(self):
    assert tuple(TEMPLATES.values()) == ('I am [MASK] .', 'It was [MASK] .', 'He is [MASK] .')
    assert prompt_text('fine', 'It was [MASK] .') == 'fine. It was [MASK] .'
    assert prompt_text('fine', 'He is [MASK] .') == 'fine. He is [MASK] .'

  @pytest.mark.parametrize('bad', ['I am .', 'I am [MASK] [MASK] .', '[mask]'])
  def test_template_needs_one_mask(self, bad):
    with pytest.raises(ValueError, match='exactly once'):
      check_template(bad)
    with pytest.raises(ValueError):
      prompt_text('x', bad)

  def test_mask_position(self):
    assert mask_position(np.array([101, 1045, 2572, 103, 1012, 102]), 103) == 3
    with pytest.raises(ValueError, match='exactly one'):
      mask_position(np.array([101, 102]), 103)
    with pytest.raises(ValueError, match='exactly one'):
      mask_position(np.array([101, 103, 103, 102]), 103)


class TestBuildPrompt:

  def test_prompt_only_matches_the_paper(self, tok, template):
    example = build_prompt([], template, SPECIAL, max_text_len=10)
    np.testing.assert_array_equal(example.ids, [101, 1045, 2572, 103, 1012, 102])
    assert example.mask_position == 3 and example.num_truncated_words == 0
    np.testing.assert_array_equal(example.word_ids, [-1, 0, 1, -1, 2, -1])

  @pytest.mark.parametrize('attached_punctuation', [False, True])
  @pytest.mark.parametrize('template_text', TEMPLATES.values())
  @pytest.mark.parametrize('utterance', UTTERANCES)
  def test_matches_tokenizing_the_prompt_text(self, template_text, utterance, attached_punctuation):
    tok = FakeTokenizer(attached_punctuation)
    template = tokenize_template(template_text, tok.encode_words)
    example = encode_prompt(utterance, template, tok.encode_words, SPECIAL, max_text_len=120)
    assert isinstance(example, PromptExample)
    assert example.ids.dtype == np.int32 and example.word_ids.dtype == np.int32
    np.testing.assert_array_equal(example.ids, tok.encode_reference(prompt_text(utterance, template_text)))
    assert example.mask_position == mask_position(example.ids, SPECIAL.mask)
    assert example.num_truncated_words == 0

  def test_word_ids(self, tok, template):
    example = encode_prompt('extraordinarily sad', template, tok.encode_words, SPECIAL, max_text_len=30)
    specials = np.isin(example.ids, [SPECIAL.cls, SPECIAL.sep, SPECIAL.mask])
    np.testing.assert_array_equal(specials, example.word_ids == -1)
    words = example.word_ids[~specials]
    assert words[0] == 0 and np.all(np.diff(words) >= 0) and np.all(np.diff(np.unique(words)) == 1)
    # The 4 pieces of 'extraordinarily' share word 0.
    np.testing.assert_array_equal(example.word_ids[1:6], [0, 0, 0, 0, 1])

  def test_split_words_round_trip(self, tok):
    words = tok.encode_words('extraordinarily sad people.')
    ids = np.array([SPECIAL.cls, *[i for w in words for i in w], SPECIAL.sep])
    word_ids = np.array([-1, *[k for k, w in enumerate(words) for _ in w], -1])
    assert [w.tolist() for w in split_words(ids, word_ids)] == words
    assert split_words(np.array([SPECIAL.cls, SPECIAL.sep]), np.array([-1, -1])) == []

  @pytest.mark.parametrize('max_text_len', range(6, 40))
  def test_truncation_keeps_the_prompt(self, tok, template, max_text_len):
    utterance = 'the quick brown foxes jumped over extraordinarily lazy dogs yesterday'
    words = tok.encode_words(utterance)
    example = build_prompt(words, template, SPECIAL, max_text_len=max_text_len)
    ids = example.ids.tolist()
    assert len(ids) <= max_text_len
    assert ids[-4:] == [2572, 103, 1012, 102][-4:] and ids[-5] == 1045  # ... i am [MASK] . [SEP]
    assert example.mask_position == len(ids) - 3 and ids[example.mask_position] == SPECIAL.mask
    kept = len(words) - example.num_truncated_words
    body = [i for w in words[:kept] for i in w]
    # The kept words are a prefix; a truncated (or unpunctuated) utterance gets its period.
    assert ids[1:1 + len(body)] == body
    assert ids[1 + len(body):-5] == ([1012] if kept else [])
    # Greedy: one more word would not have fit.
    if example.num_truncated_words:
      assert len(build_prompt(words[:kept + 1], template, SPECIAL, max_text_len=100).ids) > max_text_len

  def test_truncation_reapplies_the_period_rule(self, tok, template):
    words = tok.encode_words('stop. now go away')  # [stop] [.] [now] [go] [away]
    example = build_prompt(words, template, SPECIAL, max_text_len=2 + 4 + 3)
    # 'stop .' fits; 'stop . now' would need another '.', which does not fit.
    assert example.num_truncated_words == 3
    np.testing.assert_array_equal(example.ids, tok.encode_reference('stop. I am [MASK] .'))
    # No truncation: a question mark is kept and no period added.
    example = encode_prompt('why?', template, tok.encode_words, SPECIAL, max_text_len=2 + 4 + 2)
    assert example.num_truncated_words == 0 and 1012 not in example.ids[:-3].tolist()

  def test_truncation_with_attached_punctuation(self):
    tok = FakeTokenizer(attached_punctuation=True)
    template = tokenize_template(DEFAULT_TEMPLATE, tok.encode_words)
    # Words: [▁stop .] [▁now] [▁go] [▁away]; 'stop.' ends a sentence, 'stop. now' would need a period.
    example = encode_prompt('stop. now go away', template, tok.encode_words, SPECIAL, max_text_len=2 + 4 + 3)
    assert example.num_truncated_words == 3
    np.testing.assert_array_equal(example.ids, tok.encode_reference('stop. I am [MASK] .'))
    example = encode_prompt('stop. now go away', template, tok.encode_words, SPECIAL, max_text_len=2 + 4 + 4)
    assert example.num_truncated_words == 2
    period = tok.encode_words('.')[0]
    np.testing.assert_array_equal(example.ids[1:5], tok.encode_words('stop.')[0] + tok.encode_words('now')[0] + period)

  def test_exact_fit_is_not_truncated(self, tok, template):
    words = tok.encode_words('hi you')  # 2 words + '.' + 4 template tokens + [CLS] [SEP] = 9
    example = build_prompt(words, template, SPECIAL, max_text_len=9)
    assert example.num_truncated_words == 0 and len(example.ids) == 9
    assert build_prompt(words, template, SPECIAL, max_text_len=8).num_truncated_words == 1

  def test_template_too_long_raises(self, template):
    with pytest.raises(ValueError, match='max_text_len'):
      build_prompt([[5]], template, SPECIAL, max_text_len=5)


class TestVerbalizer:

  def test_from_words(self, tok):
    verbalizer = Verbalizer.from_words(['anger', 'happy', 'neutral', 'sad'], tok.encode_words)
    assert verbalizer.ids == (4963, 3407, 8699, 6517)
    assert [verbalizer.target_id(c) for c in range(4)] == [4963, 3407, 8699, 6517]
    np.testing.assert_array_equal(verbalizer.label_ids, [4963, 3407, 8699, 6517])
    assert verbalizer.label_ids.dtype == np.int32

  def test_label_word_must_be_one_token(self, tok):
    with pytest.raises(ValueError, match='single vocabulary token'):
      Verbalizer.from_words(['happy', 'frustrated'], tok.encode_words)
    with pytest.raises(ValueError, match='single vocabulary token'):
      Verbalizer.from_words(['very sad'], tok.encode_words)

  def test_invalid(self):
    with pytest.raises(ValueError, match='distinct'):
      Verbalizer(('a', 'b'), (5, 5))
    with pytest.raises(ValueError):
      Verbalizer(('a', 'b'), (5,))


class TestCrossModal:

  def test_seven_cases_when_every_modality_is_present(self):
    cases = cross_modal_cases(True, True)
    assert [c.name for c in cases] == ['LVA', 'LV', 'LA', 'L', 'VA', 'V', 'A']
    assert len({(c.text, c.visual, c.acoustic) for c in cases}) == 7
    # The prompt-only cases: {V+A, V, A}, never an input with nothing at all.
    assert [(c.visual, c.acoustic) for c in cases if not c.text] == [(True, True), (True, False), (False, True)]
    assert all(c.name == ''.join(m for m, keep in zip('LVA', (c.text, c.visual, c.acoustic)) if keep) for c in cases)

  def test_absent_modalities_drop_duplicate_and_empty_cases(self):
    assert [c.name for c in cross_modal_cases(False, True)] == ['LA', 'L', 'A']
    assert [c.name for c in cross_modal_cases(True, False)] == ['LV', 'L', 'V']
    assert [c.name for c in cross_modal_cases(False, False)] == ['L']
