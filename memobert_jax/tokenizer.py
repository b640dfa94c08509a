"""Text tokenizers behind one interface: BERT WordPiece and SentencePiece.

Both produce word-aligned output so whole-word masking knows which sub-tokens
form a word, and both understand the special tokens written in the text (the
prompt "i am [MASK] ." keeps its [MASK]). Special tokens are matched exactly
(case-sensitive) before any normalization, so "[mask]" is ordinary text, as in
Hugging Face.

WordPiece reproduces Hugging Face's `BertTokenizer` (transformers v5, backed by
`tokenizers`: BertNormalizer + BertPreTokenizer + WordPiece). A "word" is one
token of that basic tokenization: a run of non-space, non-punctuation
characters, one punctuation character, or one CJK character; its WordPiece
pieces ("un", "##aff", "##able") share one word id.

SentencePiece words start at pieces carrying the '▁' word-start marker, so a
word is a whitespace-separated chunk of the text (punctuation stays attached to
its word, as SentencePiece segments it).
"""

import abc
import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
_SPECIALS_RE = re.compile('(' + '|'.join(re.escape(token) for token in SPECIAL_TOKENS) + ')')

# Hugging Face's WordPiece limit: longer words become [UNK] without trying to split them.
MAX_WORD_CHARS = 100
_SPM_WORD_START = '\u2581'


@dataclasses.dataclass(frozen=True)
class EncodedText:
  """One text as model input.

  Attributes:
    ids: int32 [T], [CLS] tokens... [SEP].
    word_ids: int32 [T], for each token the index of its word in `encode_words(text)`; -1 for [CLS], [SEP]
      and [PAD] (those never form a word, even when written in the text). [MASK] and [UNK] count as words.
  """

  ids: np.ndarray
  word_ids: np.ndarray


class Tokenizer(abc.ABC):
  """Text <-> ids with word alignment; subclasses supply the vocabulary and the segmentation of plain text."""

  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int

  def _init_specials(self) -> None:
    """Looks up the special ids; call from the subclass constructor once `token_to_id` works."""
    self._special_ids = {token: self.token_to_id(token) for token in SPECIAL_TOKENS}
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        self._special_ids[token] for token in SPECIAL_TOKENS)
    self._not_word_ids = frozenset((self.pad_id, self.cls_id, self.sep_id))

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int:
    """The id of a vocabulary entry; raises KeyError naming the token when it is absent."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str:
    """The vocabulary entry of an id."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Readable text of ids; [PAD] is dropped, other special tokens are written out."""

  @abc.abstractmethod
  def _encode_plain(self, text: str) -> list[tuple[int, ...]]:
    """The ids of each word of a text that holds no special token."""

  def encode_words(self, text: str) -> list[list[int]]:
    """The ids of each word of `text`, in order; a special token written in the text is a word of its own."""
    if '[' not in text:  # Fast path: no special token possible.
      return [list(word) for word in self._encode_plain(text)]
    words = []
    # re.split with a capturing group alternates plain text (even indices) and special tokens (odd ones).
    for index, part in enumerate(_SPECIALS_RE.split(text)):
      if index % 2:
        words.append([self._special_ids[part]])
      elif part:
        words.extend(list(word) for word in self._encode_plain(part))
    return words

  def encode(self, text: str) -> EncodedText:
    """[CLS] text [SEP] with the word index of every token (see EncodedText)."""
    ids, word_ids = [self.cls_id], [-1]
    for index, word in enumerate(self.encode_words(text)):
      ids.extend(word)
      is_word = not (len(word) == 1 and word[0] in self._not_word_ids)
      word_ids.extend([index if is_word else -1] * len(word))
    ids.append(self.sep_id)
    word_ids.append(-1)
    return EncodedText(np.asarray(ids, np.int32), np.asarray(word_ids, np.int32))


def single_token_ids(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
  """The id of each word, checking that it is exactly one known token (the prompt verbalizer's label words).

  Raises:
    ValueError: naming the word and its pieces when a word is several tokens, several words, or [UNK].
  """
  ids = []
  for word in words:
    pieces = [token_id for piece in tokenizer.encode_words(word) for token_id in piece]
    if len(pieces) != 1 or pieces[0] == tokenizer.unk_id:
      names = [tokenizer.id_to_token(token_id) for token_id in pieces]
      raise ValueError(f'label word {word!r} must be exactly one known token, got pieces {names}')
    ids.append(pieces[0])
  return ids


class _CharMap(dict):
  """A str.translate table filled lazily, one code point at a time (the full Unicode table would be large)."""

  def __init__(self, rule: Callable[[str], str | None]):
    super().__init__()
    self._rule = rule

  def __missing__(self, code_point: int) -> str | None:
    value = self[code_point] = self._rule(chr(code_point))
    return value


def _is_cjk(code_point: int) -> bool:
  """CJK Unified Ideographs blocks, as BERT defines them (not Hiragana, Katakana or Hangul)."""
  return (0x4E00 <= code_point <= 0x9FFF or 0x3400 <= code_point <= 0x4DBF or 0x20000 <= code_point <= 0x2A6DF
          or 0x2A700 <= code_point <= 0x2B73F or 0x2B740 <= code_point <= 0x2B81F or 0x2B820 <= code_point <= 0x2CEAF
          or 0xF900 <= code_point <= 0xFAFF or 0x2F800 <= code_point <= 0x2FA1F)


def _clean_rule(char: str) -> str | None:
  """BertNormalizer's text cleanup and CJK handling: drop controls, unify whitespace, isolate CJK characters."""
  if char in '\t\n\r':
    return ' '
  code_point = ord(char)
  if code_point in (0, 0xFFFD) or unicodedata.category(char).startswith('C'):
    return None
  if char.isspace():
    return ' '
  if _is_cjk(code_point):
    return f' {char} '
  return char


def _punctuation_rule(char: str) -> str:
  """BertPreTokenizer: every ASCII or Unicode (P*) punctuation character is a word of its own."""
  code_point = ord(char)
  is_ascii_punctuation = 33 <= code_point <= 47 or 58 <= code_point <= 64 or 91 <= code_point <= 96 or (
      123 <= code_point <= 126)
  if is_ascii_punctuation or unicodedata.category(char).startswith('P'):
    return f' {char} '
  return char


def _accent_rule(char: str) -> str | None:
  return None if unicodedata.category(char) == 'Mn' else char


class WordPieceTokenizer(Tokenizer):
  """BERT WordPiece over a vocab.txt, matching Hugging Face's BertTokenizer (uncased or cased).

  Per-word results are cached: utterances repeat words, and normalization plus splitting runs in C
  (str.translate), so only unseen words cost Python time.
  """

  def __init__(self, tokens: Sequence[str], lowercase: bool = True):
    """Args: tokens: the vocabulary, id order; lowercase: lowercase and strip accents (uncased models)."""
    self._tokens = list(tokens)
    # A duplicated line keeps its last id, as Hugging Face does.
    self._vocab = {token: index for index, token in enumerate(self._tokens)}
    self.vocab_size = len(self._tokens)
    self.lowercase = lowercase
    self._longest_token = max(map(len, self._vocab), default=0)
    self._clean = _CharMap(_clean_rule)
    self._split_punctuation = _CharMap(_punctuation_rule)
    self._strip_accents = _CharMap(_accent_rule)
    self._cache: dict[str, tuple[int, ...]] = {}
    self._init_specials()

  @classmethod
  def from_file(cls, path: str | Path, lowercase: bool = True) -> 'WordPieceTokenizer':
    path = Path(path)
    try:
      with path.open(encoding='utf-8') as f:
        tokens = [line.rstrip('\r\n') for line in f]
    except FileNotFoundError:
      raise FileNotFoundError(f'WordPiece vocabulary file not found: {path}') from None
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f'cannot read WordPiece vocabulary file {path}: {e}') from e
    try:
      return cls(tokens, lowercase)
    except KeyError as e:
      raise ValueError(f'WordPiece vocabulary file {path} lacks a special token: {e}') from e

  def token_to_id(self, token: str) -> int:
    try:
      return self._vocab[token]
    except KeyError:
      raise KeyError(f'token {token!r} is not in the WordPiece vocabulary ({self.vocab_size} entries)') from None

  def id_to_token(self, token_id: int) -> str:
    return self._tokens[token_id]

  def decode(self, ids: Iterable[int]) -> str:
    text = ''
    for token_id in ids:
      token_id = int(token_id)
      if token_id == self.pad_id:
        continue
      token = self._tokens[token_id]
      if token.startswith('##') and text:
        text += token[2:]
      else:
        text += (' ' if text else '') + token
    return text

  def _basic_tokens(self, text: str) -> list[str]:
    """BertNormalizer then BertPreTokenizer: the words of `text`, normalized."""
    text = text.translate(self._clean)
    if self.lowercase:
      if not text.isascii():
        text = unicodedata.normalize('NFD', text).translate(self._strip_accents)
        # The tokenizers library lowercases character by character: no Greek final-sigma rule, unlike str.lower.
        text = text.replace('\u03a3', '\u03c3')
      text = text.lower()
    return text.translate(self._split_punctuation).split()

  def _word_pieces(self, word: str) -> tuple[int, ...]:
    """Greedy longest-match-first WordPiece; the whole word is [UNK] if any part cannot be matched."""
    if len(word) > MAX_WORD_CHARS:
      return (self.unk_id,)
    pieces = []
    start = 0
    while start < len(word):
      prefix = '##' if start else ''
      for end in range(min(len(word), start + self._longest_token), start, -1):
        piece_id = self._vocab.get(prefix + word[start:end])
        if piece_id is not None:
          break
      else:
        return (self.unk_id,)
      pieces.append(piece_id)
      start = end
    return tuple(pieces)

  def _encode_plain(self, text: str) -> list[tuple[int, ...]]:
    words = []
    for word in self._basic_tokens(text):
      pieces = self._cache.get(word)
      if pieces is None:
        pieces = self._cache[word] = self._word_pieces(word)
      words.append(pieces)
    return words


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model whose vocabulary holds the special tokens (see data_prep.train_sentencepiece).

  Text normalization (case folding included) is the model's own, fixed when it was trained.
  """

  def __init__(self, path: str | Path):
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f'SentencePiece model file not found: {path}')
    self._path = path
    try:
      self._processor = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
      raise ValueError(f'cannot read SentencePiece model {path}: {e}') from e
    self.vocab_size = self._processor.get_piece_size()
    self._pieces = [self._processor.id_to_piece(index) for index in range(self.vocab_size)]
    self._piece_ids = {piece: index for index, piece in enumerate(self._pieces)}
    self._starts_word = [piece.startswith(_SPM_WORD_START) for piece in self._pieces]
    self._cache: dict[str, tuple[tuple[int, ...], ...]] = {}
    try:
      self._init_specials()
    except KeyError as e:
      raise ValueError(f'SentencePiece model {path} lacks a special token ({e}); '
                       'train it with data_prep.train_sentencepiece') from e
    # Written out by decode; [UNK] goes through SentencePiece itself, which renders it as ' ⁇ '.
    self._special_id_set = frozenset((self.pad_id, self.cls_id, self.sep_id, self.mask_id))

  def token_to_id(self, token: str) -> int:
    try:
      return self._piece_ids[token]
    except KeyError:
      raise KeyError(f'piece {token!r} is not in the SentencePiece model {self._path}') from None

  def id_to_token(self, token_id: int) -> str:
    return self._pieces[token_id]

  def decode(self, ids: Iterable[int]) -> str:
    parts, run = [], []
    for token_id in ids:
      token_id = int(token_id)
      if token_id in self._special_id_set:
        if run:
          parts.append(self._processor.decode(run))
          run = []
        if token_id != self.pad_id:
          parts.append(self._pieces[token_id])
      else:
        run.append(token_id)
    if run:
      parts.append(self._processor.decode(run))
    return ' '.join(parts)

  def _split_words(self, ids: list[int]) -> tuple[tuple[int, ...], ...]:
    """Groups piece ids into words at each word-start piece; the first piece always opens a word."""
    words: list[list[int]] = []
    for token_id in ids:
      if self._starts_word[token_id] or not words:
        words.append([token_id])
      else:
        words[-1].append(token_id)
    return tuple(tuple(word) for word in words)

  def _encode_plain(self, text: str) -> list[tuple[int, ...]]:
    # Pieces never cross whitespace, so encoding chunk by chunk equals encoding the whole text, and caches well.
    words = []
    for chunk in text.split():
      chunk_words = self._cache.get(chunk)
      if chunk_words is None:
        chunk_words = self._cache[chunk] = self._split_words(self._processor.encode(chunk))
      words.extend(chunk_words)
    return words


def load_tokenizer(kind: str, path: str | Path, lowercase: bool = True) -> Tokenizer:
  """Loads a tokenizer.

  Args:
    kind: 'wordpiece' (a BERT vocab.txt, or a directory holding one) or 'sentencepiece' (a .model file).
    path: the vocabulary or model file.
    lowercase: WordPiece only: lowercase and strip accents (uncased BERT). A SentencePiece model carries its
      own normalization, chosen when it was trained.

  Raises:
    FileNotFoundError: the file is missing (the message names it).
    ValueError: unknown kind, or a file that cannot be read or lacks the special tokens.
  """
  if kind == 'wordpiece':
    path = Path(path)
    return WordPieceTokenizer.from_file(path / 'vocab.txt' if path.is_dir() else path, lowercase)
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(path)
  raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'wordpiece' or 'sentencepiece'")


def check_vocabulary(tokenizer: Tokenizer, model_cfg) -> None:
  """The model's vocabulary size must be the tokenizer's (the embedding rows are the token ids)."""
  if tokenizer.vocab_size != model_cfg.vocab_size:
    raise ValueError(f'the tokenizer has {tokenizer.vocab_size} tokens, the config says model.vocab_size='
                     f'{model_cfg.vocab_size}: set --config.model.vocab_size={tokenizer.vocab_size}')
