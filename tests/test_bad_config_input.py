"""Bad configs, flags, label words and predict inputs stop with a message naming the flag, word or line."""

import json
import os
import subprocess
import sys
import types

import pytest

from configs import finetune as finetune_config
from memobert_jax import config_utils, predict, tokenizer as tokenizer_lib
from memobert_jax.data import finetuning_data
from memobert_jax.data.prompt import Verbalizer
from tests import corpus_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE = f'{ROOT}/configs/finetune.py:prompt,model=tiny,mesh=cpu'


def exit_message(*args: str) -> str:
  """What check_command_line exits with for `prog ARGS` ('' when it accepts them)."""
  try:
    config_utils.check_command_line(['prog', *args])
  except SystemExit as stop:
    return str(stop.code)
  return ''


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize('override,message', [
    ('--config.optim.learning_rate=abc', "error: --config.optim.learning_rate: 'abc' is not a float"),
    ('--config.optim.total_steps=two', "error: --config.optim.total_steps: 'two' is not an integer"),
    ('--config.optim.learning_rate=nan', "error: --config.optim.learning_rate: 'nan' is not a finite float"),
    ('--config.optim.weight_decay=inf', "error: --config.optim.weight_decay: 'inf' is not a finite float"),
    ('--config.optim.total_steps=1.5', "error: --config.optim.total_steps: '1.5' is not an integer"),
    ('--config.data.drop_long_text=maybe', "error: --config.data.drop_long_text: 'maybe' is not a boolean"),
    ('--config.data.text_buckets=16,abc', "error: --config.data.text_buckets: '16,abc' is not a tuple of int"),
    ('--config.finetune.label_words=anger,happy',
     "error: --config.finetune.label_words: 'anger,happy' would be one string: "
     'write the tuple as "(\'anger\', \'happy\')"'),
])
def test_a_value_of_the_wrong_type_names_the_flag_and_the_type(override, message):
  assert exit_message(f'--config={FINETUNE}', override).startswith(message)


@pytest.mark.parametrize('argument,message', [
    ('steps=two', "config argument steps='two' is not an integer"),
    ('lr=fast', "config argument lr='fast' is not a float"),
])
def test_a_bad_config_file_argument_names_the_file_and_the_argument(argument, message):
  text = exit_message(f'--config={FINETUNE},{argument}')
  assert text.startswith(f'error: --config {FINETUNE},{argument}: ') and text.endswith(message)


def test_well_typed_values_in_either_spelling_pass():
  assert exit_message('--config', FINETUNE, '--config.optim.learning_rate', '1e-4', '--config.optim.total_steps=7',
                      '--config.data.drop_long_text', '--config.data.text_buckets=(16,32)',
                      "--config.finetune.label_words=('a','b','c','d')", '--workdir', 'somewhere') == ''


def test_the_readme_spelling_with_a_space_is_checked_too():
  assert 'closest: optim.learning_rate' in exit_message('--config', FINETUNE, '--config.optim.lerning_rate=1')
  assert exit_message('--config', FINETUNE, '--config.optim.learning_rate', 'abc') == (
      "error: --config.optim.learning_rate: 'abc' is not a float")
  # A boolean flag given alone takes no value: the next flag is still checked.
  assert exit_message('--config', FINETUNE, '--config.data.drop_long_text', '--config.optim.total_steps', 'x') == (
      "error: --config.optim.total_steps: 'x' is not an integer")


def test_apply_overrides_names_the_key():
  config = config_utils.load_config(FINETUNE)
  with pytest.raises(ValueError, match=r"config key optim.learning_rate: 'abc' is not a float"):
    config_utils.apply_overrides(config, {'optim.learning_rate': 'abc'})


@pytest.mark.parametrize('module,args,message', [
    ('memobert_jax.train', ['--config', f'{ROOT}/configs/pretrain.py:tiny,mesh=cpu', '--config.optim.lerning_rate=1'],
     "error: config key 'optim.lerning_rate' does not exist; closest: optim.learning_rate"),
    ('memobert_jax.finetune', ['--config', f'{ROOT}/configs/finetune.py:prompt,steps=two'],
     "config argument steps='two' is not an integer"),
    ('memobert_jax.aot_compile', ['--finetune', FINETUNE, '--finetune.optim.learning_rate', 'abc'],
     "error: --finetune.optim.learning_rate: 'abc' is not a float"),
    ('memobert_jax.sweep', ['--sweep', f'{ROOT}/configs/sweeps/demo.py:seeds=two'],
     "config argument seeds='two' is not an integer"),
    ('memobert_jax.sweep', ['--sweep', f'{ROOT}/configs/sweeps/demo.py', '--slice', '2'],
     "--slice '2' is not k/n"),
    # What the shell makes of an unquoted --config.data.text_buckets=32, 64: the 64 must not be dropped.
    ('memobert_jax.train', ['--config', f'{ROOT}/configs/pretrain.py:tiny,mesh=cpu', '--config.data.text_buckets=32,',
                            '64'], "error: unexpected argument(s) '64': every setting is a --flag=value"),
])
def test_entry_points_stop_with_the_message_before_starting(module, args, message, tmp_path):
  result = run_module(module, *args, f'--workdir={tmp_path}')
  assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and not os.listdir(tmp_path)


@pytest.fixture(scope='module')
def wordpiece(tmp_path_factory):
  return tokenizer_lib.load_tokenizer('wordpiece', corpus_helpers.write_vocab(str(tmp_path_factory.mktemp('vocab'))))


def batcher(tokenizer, label_names, label_words=()):
  config = finetune_config.get_config('prompt,model=tiny,mesh=cpu')
  config.finetune.label_words = label_words
  return finetuning_data.FinetuneBatcher(config, tokenizer, label_names)


@pytest.mark.parametrize('label_names,label_words,word', [
    (corpus_helpers.LABELS, ('anger', 'happy', 'neutral', 'glum'), 'glum'),  # from the config
    (('anger', 'happy', 'neutral', 'frustration'), (), 'frustration'),  # the dataset's label names
])
def test_a_label_word_missing_from_the_vocabulary_is_refused_not_read_as_unk(wordpiece, label_names, label_words,
                                                                             word):
  with pytest.raises(ValueError, match=rf"label word '{word}' is not in .*\[UNK\].*--config\.finetune\.label_words"):
    batcher(wordpiece, label_names, label_words)


def test_a_label_word_of_several_pieces_is_refused(wordpiece):
  with pytest.raises(ValueError, match=r"'unbelievable' is not a single vocabulary token.*--config\.finetune"):
    batcher(wordpiece, corpus_helpers.LABELS, ('anger', 'happy', 'neutral', 'unbelievable'))


def test_the_label_word_error_names_the_vocabulary_file(wordpiece):
  with pytest.raises(ValueError, match=r"'glum' is not in /data/vocab\.txt"):
    Verbalizer.from_words(['happy', 'glum'], wordpiece.encode_words, vocabulary='/data/vocab.txt')


@pytest.mark.parametrize('text', ['', '   '])
def test_predict_refuses_an_empty_transcript_in_a_manifest(tmp_path, text):
  manifest = tmp_path / 'utterances.jsonl'
  manifest.write_text(json.dumps({'id': 'a', 'text': 'i am happy'}) + '\n' + json.dumps({'id': 'b', 'text': text}))
  model = types.SimpleNamespace(visual_dim=12, acoustic_dim=10)
  predictor = types.SimpleNamespace(config=types.SimpleNamespace(model=model), utterance=lambda *args: args)
  with pytest.raises(ValueError, match=rf"b: {manifest}:2: empty transcript"):
    predict.read_manifest(str(manifest), predictor)


def test_predict_refuses_an_empty_text_flag(tmp_path):
  result = run_module('memobert_jax.predict', f'--model={tmp_path}', '--text=  ')
  assert result.returncode != 0 and '--text: empty transcript' in result.stderr, result.stderr[-3000:]
