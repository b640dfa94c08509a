"""Inference: class scores of a finetuned model, and a Predictor that labels new utterances.

The scorer is shared with the finetuning loop (which places batches on its mesh); the Predictor runs on
one device from what a finetuning run exports into best/ (its memobert_init.json holds the model config,
tokenizer, mode, template, label words, length caps and the feature statistics), so it depends on neither
the configs nor the training loops.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from memobert_jax import init_checkpoint, modes, sharding, tokenizer as tokenizer_lib
from memobert_jax.data import finetuning_data, normalization
from memobert_jax.model import MEmoBERT
from memobert_jax.training import tasks

Scorer = Callable[[nnx.State, dict], jax.Array]
EVAL_BATCH = 32


def make_scorer(graphdef: nnx.GraphDef, scored_ids: np.ndarray | None, *, mesh=None, rules: sharding.Rules = (),
                param_shardings=None, compiler_options: dict[str, str | bool | int] | None = None) -> Scorer:
  """Jitted per-class scores [b, K] of a [1, b, ...] batch: the label words' logits at [MASK], or the [CLS]
  head's when `scored_ids` is None. With a mesh, laid out as training lays out its batches."""

  def scores(params: nnx.State, batch: dict) -> jax.Array:
    model = nnx.merge(graphdef, params)
    ids = None if scored_ids is None else jnp.asarray(scored_ids)
    with sharding.axis_rules(rules):
      return tasks.class_scores(model, jax.tree.map(lambda x: x[0], batch), ids)

  if mesh is None:
    return jax.jit(scores)
  return jax.jit(scores, in_shardings=(param_shardings, sharding.batch_sharding(mesh, rules)),
                 out_shardings=sharding.replicated(mesh), compiler_options=compiler_options)


def predict_classes(scorer: Scorer, params: nnx.State, batches: Sequence[dict], count: int,
                    place: Callable[[dict], dict] = lambda batch: batch) -> tuple[np.ndarray, np.ndarray]:
  """(predicted class, class probabilities) of the first `count` rows of the batches; `place` puts a host
  batch where the scorer wants it (a mesh's global arrays in training)."""
  scores = np.concatenate([np.asarray(jax.device_get(scorer(params, place(b)))) for b in batches])[:count]
  probabilities = np.asarray(jax.nn.softmax(scores, axis=-1))
  return scores.argmax(-1), probabilities


def check_transcript(text: str, where: str) -> None:
  """Refuses an empty or blank transcript, as data prep does (data_prep/manifest.py: check_records)."""
  if not text.strip():
    raise ValueError(f'{where}: empty transcript')


class Predictor:
  """A finetuned model with its tokenizer, prompt and label words, ready to label utterances."""

  def __init__(self, model_dir: str):
    metadata = init_checkpoint.read_metadata(model_dir)
    if 'finetune' not in metadata:
      raise ValueError(f'{model_dir} is not a finetuned model (no finetune settings in its metadata): '
                       f'give the best/ folder of a finetuning run')
    self.model_dir, self.metadata = model_dir, metadata
    model_cfg = ConfigDict(metadata['model_config'])
    caps = {m: metadata[f'max_{m}_frames'] for m in ('visual', 'acoustic')}
    # What the batcher reads of a finetuning config: one bucket per modality, as long as the caps allow.
    data_cfg = ConfigDict(dict(max_text_tokens=metadata['max_text_tokens'], text_buckets=(512,),
                               visual_buckets=(caps['visual'],), acoustic_buckets=(caps['acoustic'],),
                               max_visual_frames=caps['visual'], max_acoustic_frames=caps['acoustic'],
                               tokenizer=metadata['tokenizer']))
    finetune = ConfigDict(metadata['finetune'])
    finetune.label_words = tuple(metadata['label_words'])
    self.config = ConfigDict(dict(model=model_cfg, data=data_cfg, finetune=finetune))
    self.label_names = list(metadata['label_names'])
    # The frames are standardised as in finetuning, with its training data's statistics.
    self.feature_stats = {m: normalization.FeatureStats.from_json(raw) for m, raw in metadata['feature_stats'].items()}
    self.tokenizer = tokenizer_lib.load_tokenizer(data_cfg.tokenizer.kind, data_cfg.tokenizer.path,
                                                  data_cfg.tokenizer.lowercase)
    self.batcher = finetuning_data.FinetuneBatcher(self.config, self.tokenizer, self.label_names)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MEmoBERT(model_cfg, rngs=nnx.Rngs(params=0))), nnx.Param)
    self.params, loaded = init_checkpoint.restore_into(abstract, model_dir, model_cfg)
    missing = sorted(set(init_checkpoint.parameter_names(abstract)) - set(loaded))
    if missing:
      raise ValueError(f'{model_dir} lacks parameters the model needs: {init_checkpoint.listing(missing)}')
    mode = modes.get(finetune.mode)
    self.scorer = make_scorer(graphdef, mode.scored_ids(self.batcher.verbalizer.label_ids))

  def utterance(self, example_id: str, text: str, visual: np.ndarray,
                acoustic: np.ndarray) -> finetuning_data.Utterance:
    words = tuple(tuple(w) for w in self.tokenizer.encode_words(text))
    data = self.config.data
    utterance = finetuning_data.Utterance(example_id, words, 0, '', '', '', visual[:data.max_visual_frames],
                                          acoustic[:data.max_acoustic_frames])
    return finetuning_data.standardize(utterance, self.feature_stats)

  def __call__(self, utterances: Sequence[finetuning_data.Utterance], subset: str | None = None) -> list[dict]:
    """Label and class probabilities per utterance, from the modalities of `subset` (default: those the model
    was evaluated on)."""
    subset = subset or self.config.finetune.eval_modalities
    batches = finetuning_data.evaluation_batches(self.batcher, list(utterances), subset, EVAL_BATCH)
    predicted, probabilities = predict_classes(self.scorer, self.params, batches, len(utterances))
    return [{'id': u.id, 'label': self.label_names[p],
             'probabilities': {name: round(float(q), 6) for name, q in zip(self.label_names, probs)}}
            for u, p, probs in zip(utterances, predicted, probabilities)]
