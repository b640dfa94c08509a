"""Bad input gets a clear error naming the file and the line, example or record; nothing is silently dropped."""

import json
import shutil
from pathlib import Path

import grain
import pytest

from configs import finetune as finetune_config, pretrain as pretrain_config
from data_prep import manifest as manifest_lib
from data_prep import verify, write_shards
from data_prep.corpora import common
from memobert_jax import tokenizer as tokenizer_lib
from memobert_jax.data import examples as examples_lib, finetuning_data, pipeline, schema, sources as sources_lib
from tests import corpus_helpers

SHARD = 'train-00000-of-00002.tfrecord'


def _write_lines(path: Path, lines: list[bytes]) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b''.join(line + b'\n' for line in lines))
  return path


def _record(uid: str, text: str) -> bytes:
  return json.dumps({'id': uid, 'text': text}).encode()  # ensure_ascii: a lone surrogate becomes "\ud800"


def _leftover_temporaries(directory: Path) -> list[Path]:
  return [p for p in directory.rglob('*') if '.tmp' in p.name]


# 1. Bytes that are not UTF-8.

def test_non_utf8_line_is_named_and_skippable(tmp_path):
  manifest = _write_lines(tmp_path / 'manifest.jsonl', [_record('good', 'fine'), b'{"id": "bad", "text": "caf\xe9"}'])
  with pytest.raises(manifest_lib.ManifestError) as error:
    write_shards.write_shards(manifest, tmp_path / 'out', progress=False)
  assert f'{manifest}:2' in str(error.value) and 'not UTF-8' in str(error.value)
  assert not (tmp_path / 'out').exists()

  summary = write_shards.write_shards(manifest, tmp_path / 'out', on_error='skip', progress=False)
  [skipped] = summary['skipped']
  assert skipped['file'] == f'{manifest}:2' and 'not UTF-8' in skipped['problem'] and '0xe9' in skipped['problem']
  assert summary['num_examples'] == 1


def test_adapter_manifest_reader_names_the_line(tmp_path):
  manifest = _write_lines(tmp_path / 'manifest.jsonl', [_record('good', 'fine'), b'{"id": "bad", "text": "caf\xe9"}'])
  with pytest.raises(ValueError, match=f'{manifest}:2: .*not UTF-8'):
    common.read_manifest(manifest)
  _write_lines(manifest, [_record('good', 'fine'), b'{"id": "cut", '])
  with pytest.raises(ValueError, match=f'{manifest}:2: invalid JSON'):
    common.read_manifest(manifest)


# 2. Text that cannot be stored as UTF-8 (a lone surrogate).

def test_lone_surrogate_is_refused_by_validation_naming_example_and_line(tmp_path):
  manifest = _write_lines(tmp_path / 'manifest.jsonl', [_record('good', 'fine'), _record('bad', 'hi \ud800 there')])
  with pytest.raises(manifest_lib.ManifestError) as error:
    write_shards.write_shards(manifest, tmp_path / 'out', progress=False)
  [problem] = error.value.problems
  assert problem.id == 'bad' and problem.file == f'{manifest}:2' and 'lone surrogate' in problem.message
  assert not (tmp_path / 'out').exists()

  summary = write_shards.write_shards(manifest, tmp_path / 'out', on_error='skip', progress=False)
  assert [p['id'] for p in summary['skipped']] == ['bad'] and summary['num_examples'] == 1
  assert not _leftover_temporaries(tmp_path / 'out')


def test_adapter_manifest_writer_names_the_record(tmp_path):
  records = [common.record('good', 'fine'), common.record('bad', 'hi \ud800 there')]
  with pytest.raises(ValueError, match='bad.*"text".*lone surrogate'):
    common.write_manifest(records, tmp_path / 'manifest.jsonl')


def test_a_failed_shard_write_leaves_no_temporary_file(tmp_path):
  # An utterance that skipped validation makes the TFRecord writer fail half-way.
  utterances = (manifest_lib.Utterance('good', 'fine'), manifest_lib.Utterance('bad', 'hi \ud800 there'))
  plan = write_shards.ShardPlan('train', schema.shard_file_name('train', 0, 1), utterances, 'digest')
  with pytest.raises(UnicodeEncodeError):
    write_shards.write_shard(plan, str(tmp_path), manifest_lib.FeatureOptions(), [])
  assert list(tmp_path.iterdir()) == []


def test_a_failed_metadata_write_leaves_no_temporary_file(tmp_path):
  with pytest.raises(UnicodeEncodeError):
    schema.atomic_write_text(tmp_path / 'metadata.json', 'hi \ud800 there')
  assert list(tmp_path.iterdir()) == []


# 3. Nothing to write.

@pytest.mark.parametrize('lines', [[], [b'', b'  ']], ids=['empty', 'blank_lines'])
def test_empty_manifest_is_refused(tmp_path, lines):
  manifest = _write_lines(tmp_path / 'manifest.jsonl', lines)
  with pytest.raises(manifest_lib.ManifestError, match=f'{manifest}: no examples'):
    write_shards.write_shards(manifest, tmp_path / 'out', on_error='skip', progress=False)
  assert not (tmp_path / 'out' / schema.METADATA_FILE).exists()


def test_manifest_whose_examples_are_all_skipped_is_refused(tmp_path):
  manifest = _write_lines(tmp_path / 'manifest.jsonl', [_record('blank', ' '), _record('bad', 'hi \ud800')])
  with pytest.raises(manifest_lib.ManifestError) as error:
    write_shards.write_shards(manifest, tmp_path / 'out', on_error='skip', progress=False)
  assert f'{manifest}: no examples left to write: every record has a problem' in str(error.value)
  assert {p.id for p in error.value.problems} == {'blank', 'bad', None}  # the reasons are listed too
  assert not (tmp_path / 'out' / schema.METADATA_FILE).exists()


# 4. Damaged shards: every reader names the shard.

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  directory = tmp_path_factory.mktemp('corpus')
  shards = corpus_helpers.write_corpus(str(directory), 12, num_shards=2)
  tokenizer = tokenizer_lib.load_tokenizer('wordpiece', corpus_helpers.write_vocab(str(directory)))
  return Path(shards), tokenizer


def _record_offsets(shard: Path) -> list[int]:
  offsets, problem = verify.scan_records(str(shard))
  assert problem is None and len(offsets) > 2
  return offsets


def _damaged_copy(shards: Path, tmp_path: Path, damage: str) -> Path:
  """A copy of the dataset whose first train shard loses its last bytes or record, or gets a wrong length field.

  None of these is caught by grain's reader by itself: it raises with a hex dump or fails to allocate, or (cut at
  a record boundary) reads fewer examples without a word.
  """
  copy = tmp_path / 'damaged'
  shutil.copytree(shards, copy)
  shard = copy / SHARD
  data = bytearray(shard.read_bytes())
  offsets = _record_offsets(shard)
  if damage == 'cut_mid_record':
    data = data[:-10]
  elif damage == 'cut_at_record_boundary':
    data = data[:offsets[-1]]  # the reader sees a shorter, well-formed file
  else:  # a length field announcing more bytes than the file has (or than memory holds); the size stays right
    data[offsets[1] + (2 if damage == 'bad_length_field' else 7)] ^= 0x40
  shard.write_bytes(bytes(data))
  return copy


DAMAGES = ('cut_mid_record', 'cut_at_record_boundary', 'bad_length_field', 'absurd_length_field')


@pytest.mark.parametrize('damage', DAMAGES)
def test_verify_names_the_damaged_shard(corpus, tmp_path, damage):
  dataset = _damaged_copy(corpus[0], tmp_path, damage)
  result = verify.verify_dataset(dataset)
  assert result.problems and all(SHARD in p or p.startswith('split train') for p in result.problems)


def _finetune_load(dataset: Path, tokenizer, visual_dim: int = 12):
  config = finetune_config.get_config('prompt,model=tiny,mesh=cpu')
  config.model.update(visual_dim=visual_dim, acoustic_dim=10, vocab_size=tokenizer.vocab_size)
  return finetuning_data.load_utterances(str(dataset), ['train'], config.model, config.data, tokenizer)


def _pretrain_examples(dataset: Path, tokenizer, **kwargs):
  config = pretrain_config.get_config('tiny,mesh=cpu,steps=100')
  config.model.update(visual_dim=12, acoustic_dim=10, vocab_size=tokenizer.vocab_size)
  source = sources_lib.open_source(str(dataset), 1.0, config.model)
  options = dict(seed=0, shuffle=False, repeat=False, process_index=0, process_count=1) | kwargs
  return pipeline.example_dataset([source], 'train', config.data, tokenizer, **options)


def _error_pattern(corpus_shards: Path, dataset: Path, damage: str) -> str:
  shard = str(dataset / SHARD)
  if damage.endswith('length_field'):
    return f'{shard}: record 1 \\(offset {_record_offsets(corpus_shards / SHARD)[1]}\\)'
  return f'{shard}: .* bytes, metadata.json says'


@pytest.mark.parametrize('damage', DAMAGES)
def test_finetuning_loader_names_the_damaged_shard(corpus, tmp_path, damage):
  shards, tokenizer = corpus
  dataset = _damaged_copy(shards, tmp_path, damage)
  with pytest.raises(ValueError, match=_error_pattern(shards, dataset, damage)):
    _finetune_load(dataset, tokenizer)


@pytest.mark.parametrize('damage', DAMAGES)
def test_pretraining_reader_names_the_damaged_shard(corpus, tmp_path, damage):
  shards, tokenizer = corpus
  dataset = _damaged_copy(shards, tmp_path, damage)
  with pytest.raises(ValueError, match=_error_pattern(shards, dataset, damage)):
    list(_pretrain_examples(dataset, tokenizer))


def test_finetuning_loader_names_a_record_that_does_not_decode(corpus, tmp_path):
  shards, tokenizer = corpus
  copy = tmp_path / 'damaged'
  shutil.copytree(shards, copy)
  metadata = schema.DatasetMetadata.load(copy)
  metadata.visual_dim += 1  # every record with visual frames now holds the wrong number of bytes
  metadata.save(copy)
  with pytest.raises(ValueError, match=f'{copy}/train-0000.-of-00002.tfrecord: record \\d+ does not decode'):
    _finetune_load(copy, tokenizer, visual_dim=metadata.visual_dim)


def _id(prepared: examples_lib.Prepared | None) -> str | None:
  return None if prepared is None else prepared.id  # None: an utterance dropped for its length


def test_checked_shard_reader_keeps_grains_iterator_state(corpus):
  shards, tokenizer = corpus
  path = str(shards / SHARD)
  plain = iter(grain.experimental.TFRecordIterDataset(path))
  info, = [s for split in schema.DatasetMetadata.load(str(shards)).splits.values() for s in split.shards
           if s.file == SHARD]
  checked = iter(sources_lib.ShardRecords(path, info))
  for _ in range(2):
    assert next(plain) == next(checked)
  assert plain.get_state() == checked.get_state()  # checkpoints written before this reader existed still restore

  iterator = iter(_pretrain_examples(shards, tokenizer, shuffle=True, repeat=True))
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  expected = [_id(next(iterator)) for _ in range(9)]
  restored = iter(_pretrain_examples(shards, tokenizer, shuffle=True, repeat=True))
  restored.set_state(state)
  assert [_id(next(restored)) for _ in range(9)] == expected
