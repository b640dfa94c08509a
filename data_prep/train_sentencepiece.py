"""Trains a SentencePiece model on a corpus' transcripts, for memobert_jax.tokenizer.SentencePieceTokenizer.

The model reserves the special tokens at fixed ids ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4) and makes
each required word (the prompt's label words) a single piece when it stands as a whole word (a word that starts
with it is split after it: "sadness" -> "▁sad" "ness"). Training is single-threaded with a fixed seed, so the
same texts give the same pieces and scores; the .model file also records its output path, so it is identical
byte for byte when written to the same prefix.

  python -m data_prep.train_sentencepiece --manifest a.jsonl[,b.jsonl] --output_prefix DIR/spm --vocab_size N \
      [--required_words anger,happy,neutral,sad] [--cased]

The manifest is JSONL with a "text" field per line; writes DIR/spm.model and DIR/spm.vocab.
"""

import argparse
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from memobert_jax import tokenizer as tok

_SEED = 0
_WORD_START = '\u2581'


def train_sentencepiece(texts: Iterable[str], output_prefix: str | Path, vocab_size: int,
                        required_words: Sequence[str] = (), lowercase: bool = True) -> Path:
  """Trains a unigram SentencePiece model.

  Args:
    texts: the training sentences.
    output_prefix: writes `<output_prefix>.model` and `<output_prefix>.vocab`; parent folders are created.
    vocab_size: the largest vocabulary wanted, specials and required words included. A small corpus may
      yield fewer pieces rather than failing.
    required_words: words that must be one piece each as whole words (e.g. the verbalizer's label words).
    lowercase: case-fold text, in training and in every later encoding (the rule is stored in the model).

  Returns:
    The path of the .model file.
  """
  output_prefix = Path(output_prefix)
  output_prefix.parent.mkdir(parents=True, exist_ok=True)
  words = [word.lower() if lowercase else word for word in required_words]
  for word in words:
    if not word or word.split() != [word]:
      raise ValueError(f'required word {word!r} must be one non-empty word without spaces')
  sentences = _clean(texts)
  try:
    first = next(sentences)
  except StopIteration:
    raise ValueError('no text to train SentencePiece on') from None
  spm.set_random_generator_seed(_SEED)
  spm.SentencePieceTrainer.train(
      sentence_iterator=itertools.chain([first], sentences),
      model_prefix=str(output_prefix),
      model_type='unigram',
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      character_coverage=1.0,
      normalization_rule_name='nmt_nfkc_cf' if lowercase else 'nmt_nfkc',
      pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      pad_piece=tok.PAD, unk_piece=tok.UNK, bos_piece=tok.CLS, eos_piece=tok.SEP,
      # Control symbols never come out of text; the tokenizer maps "[MASK]" written in text itself.
      control_symbols=[tok.MASK],
      # The lattice always prefers a user-defined piece where it matches; with the word-start marker it
      # matches the word at a word start only (never inside "crusade", say).
      user_defined_symbols=[_WORD_START + word for word in words],
      num_threads=1,
      minloglevel=2,
  )
  return output_prefix.with_name(output_prefix.name + '.model')


def _clean(texts: Iterable[str]) -> Iterator[str]:
  """Non-empty sentences, one line each (SentencePiece reads one sentence per item)."""
  for text in texts:
    text = ' '.join(text.split())
    if text:
      yield text


def read_manifest_texts(paths: Sequence[str | Path]) -> Iterator[str]:
  """The "text" field of every line of JSONL manifests; errors name the file and line."""
  for path in paths:
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f'manifest not found: {path}')
    with path.open(encoding='utf-8') as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          text = json.loads(line)['text']
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f'{path}:{line_number}: expected a JSON object with a "text" field ({e})') from e
        if not isinstance(text, str):
          raise ValueError(f'{path}:{line_number}: "text" must be a string, got {type(text).__name__}')
        yield text


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description='Train a SentencePiece model on manifest transcripts.')
  parser.add_argument('--manifest', required=True, help='comma-separated JSONL manifests with a "text" field')
  parser.add_argument('--output_prefix', required=True, help='writes <prefix>.model and <prefix>.vocab')
  parser.add_argument('--vocab_size', type=int, required=True)
  parser.add_argument('--required_words', default='', help='comma-separated words that must be single pieces')
  parser.add_argument('--cased', action='store_true', help='keep case (default: case-fold)')
  args = parser.parse_args(argv)
  manifests = [path for path in args.manifest.split(',') if path]
  required = [word for word in args.required_words.split(',') if word]
  model = train_sentencepiece(read_manifest_texts(manifests), args.output_prefix, args.vocab_size, required,
                              lowercase=not args.cased)
  size = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
  print(f'wrote {model} ({size} pieces)')


if __name__ == '__main__':
  main()
