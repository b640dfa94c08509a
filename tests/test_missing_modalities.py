"""Corpora without a modality (text only, text + audio, text + visual) pretrain, finetune, export and predict,
whether the model keeps the absent modality's dimension or sets it to 0 (no parameters for it)."""

import os

import numpy as np
import pytest

from configs import finetune as finetune_config
from configs import pretrain as pretrain_config
from memobert_jax import inference, tokenizer as tokenizer_lib
from memobert_jax.training import finetuning, pretraining
from tests import corpus_helpers

pytestmark = pytest.mark.slow
FRAME_TASK_MODALITY = {'visual_regression': 'V', 'visual_kl': 'V', 'acoustic_regression': 'A'}


@pytest.mark.parametrize('present, visual_dim, acoustic_dim', [('L', 12, 10), ('LA', 0, 10), ('LV', 12, 0)])
def test_a_corpus_without_a_modality_runs_every_stage(tmp_path, present, visual_dim, acoustic_dim):
  shards = corpus_helpers.write_corpus(str(tmp_path), 100, num_shards=2, visual='V' in present,
                                       acoustic='A' in present)
  vocab = corpus_helpers.write_vocab(str(tmp_path))
  vocab_size = tokenizer_lib.load_tokenizer('wordpiece', vocab).vocab_size
  model = dict(visual_dim=visual_dim, acoustic_dim=acoustic_dim, vocab_size=vocab_size)

  config = pretrain_config.get_config('tiny,mesh=cpu,steps=3')
  config.data.update(train=shards, valid='', text_buckets=(32,))
  config.data.tokenizer.path = vocab
  config.model.update(model)
  config.update(batch_size=8, per_device_batch=8)
  config.mesh.shape = (1, 1, 1)  # one device compiles faster; sharding is tested elsewhere
  config.checkpoint.async_save = False
  absent_task = next((t for t, m in FRAME_TASK_MODALITY.items() if m not in present), None)
  with pytest.raises(ValueError, match=f'task {absent_task} needs .* frames.*tasks.weights.{absent_task}=0'):
    pretraining.pretrain(config, str(tmp_path / 'refused'))
  for task, modality in FRAME_TASK_MODALITY.items():
    if modality not in present:
      config.tasks.weights[task] = 0
  pretraining.pretrain(config, str(tmp_path / 'pretrain'))
  export = str(tmp_path / 'pretrain' / 'export')
  assert os.path.exists(os.path.join(export, 'memobert_init.json'))

  config = finetune_config.get_config('prompt,model=tiny,mesh=cpu,steps=4,fold=3')
  config.data.update(train=shards, text_buckets=(32,))
  config.data.tokenizer.path = vocab
  config.model.update(model)
  config.init.checkpoint = export
  config.eval_every_steps = 2
  config.mesh.shape = (1, 1, 1)
  results = finetuning.finetune(config, str(tmp_path / 'finetune'))
  assert results['sizes']['test'] > 0

  predictor = inference.Predictor(str(tmp_path / 'finetune' / 'best'))
  frames = {m: np.zeros((0 if m[0].upper() not in present else 3, d), 'float32')
            for m, d in (('visual', visual_dim), ('acoustic', acoustic_dim))}
  [output] = predictor([predictor.utterance('u', 'i feel so happy today', frames['visual'], frames['acoustic'])])
  assert output['label'] in results['label_names']
