"""The training objectives: the four pretraining tasks and the two finetuning losses.

Every task returns (loss_sum, count, metric_sums): the loss summed over its
targets and the number of targets. The step divides the sums only after adding
them over micro-batches, so gradient accumulation gives exactly the gradient of
the mean over the whole batch, whatever the micro-batch split or the mesh.

Batch keys each task reads, besides the model inputs (see memobert_jax/model/memobert.py):
  mlm:                 mlm_positions [B, P] int32, mlm_targets [B, P] int32, mlm_weights [B, P] float32
  visual_regression:   visual_targets [B, Lv, Dv], visual_target_mask [B, Lv] bool
  visual_kl:           visual_soft_labels [B, Lv, C], visual_target_mask [B, Lv] bool
  acoustic_regression: acoustic_targets [B, La, Da], acoustic_target_mask [B, La] bool
  prompt:              mlm_positions [B, 1] (the [MASK]), mlm_targets [B, 1] (gold label word id),
                       mlm_weights [B, 1]
  prompt_label_words:  as prompt, and label_word_ids [B, K] (the label words' ids, one per class)
  itm:                 itm_targets [B] int32 (1: the frames belong to the text, 0: swapped in)
  cls:                 labels [B] int32, label_weights [B] float32
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from memobert_jax.model import MEmoBERT

TaskOutput = tuple[jax.Array, jax.Array, dict[str, jax.Array]]
# The final model's four tasks (spec section 3); 'itm' is an ablation and needs model.itm_head.
PRETRAINING_TASKS = ('mlm', 'visual_regression', 'visual_kl', 'acoustic_regression')


def _encode(model: MEmoBERT, batch: dict, deterministic: bool, dropout_key: jax.Array | None):
  return model(batch, deterministic=deterministic, dropout_key=dropout_key)


def _masked_lm(model: MEmoBERT, batch: dict, deterministic: bool, dropout_key: jax.Array | None) -> TaskOutput:
  encoded = _encode(model, batch, deterministic, dropout_key)
  logits = model.mlm_logits(encoded.text, batch['mlm_positions'])
  weights = batch['mlm_weights'].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['mlm_targets'])
  correct = (logits.argmax(-1) == batch['mlm_targets']).astype(jnp.float32)
  return (losses * weights).sum(), weights.sum(), {'accuracy': (correct * weights).sum()}


def _label_word_logits(model: MEmoBERT, encoded, batch: dict, label_word_ids: jax.Array) -> jax.Array:
  """The label words' logits [B, K] at each example's [MASK] (the first MLM position); ids [K] or [B, K]."""
  logits = model.mlm_logits(encoded.text, batch['mlm_positions'])[:, 0]  # [B, V]
  ids = jnp.broadcast_to(label_word_ids, logits.shape[:1] + label_word_ids.shape[-1:])
  return jnp.take_along_axis(logits, ids, axis=-1)


def _label_word_prompt(model: MEmoBERT, batch: dict, deterministic: bool,
                       dropout_key: jax.Array | None) -> TaskOutput:
  """Cross-entropy at [MASK] over the label words' logits only (the prediction's own scores)."""
  encoded = _encode(model, batch, deterministic, dropout_key)
  candidates = _label_word_logits(model, encoded, batch, batch['label_word_ids'])
  gold = jnp.argmax(batch['label_word_ids'] == batch['mlm_targets'], axis=-1)
  weights = batch['mlm_weights'][:, 0].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(candidates, gold)
  correct = (candidates.argmax(-1) == gold).astype(jnp.float32)
  return (losses * weights).sum(), weights.sum(), {'accuracy': (correct * weights).sum()}


def _frame_regression(modality: str) -> Callable[..., TaskOutput]:

  def loss(model: MEmoBERT, batch: dict, deterministic: bool, dropout_key: jax.Array | None) -> TaskOutput:
    encoded = _encode(model, batch, deterministic, dropout_key)
    hidden = encoded.visual if modality == 'visual' else encoded.acoustic
    regress = model.visual_regression if modality == 'visual' else model.acoustic_regression
    prediction = regress(hidden)
    target = batch[f'{modality}_targets'].astype(jnp.float32)
    weights = batch[f'{modality}_target_mask'].astype(jnp.float32)
    per_frame = jnp.square(prediction - target).mean(-1)  # mean over feature dimensions
    return (per_frame * weights).sum(), weights.sum(), {}

  return loss


def _visual_kl(model: MEmoBERT, batch: dict, deterministic: bool, dropout_key: jax.Array | None) -> TaskOutput:
  encoded = _encode(model, batch, deterministic, dropout_key)
  log_q = jax.nn.log_softmax(model.visual_class_logits(encoded.visual), axis=-1)
  p = batch['visual_soft_labels'].astype(jnp.float32)
  # KL(p || q) averaged over the classes, as the authors' reduction does.
  per_frame = (jax.scipy.special.xlogy(p, p) - p * log_q).mean(-1)
  weights = batch['visual_target_mask'].astype(jnp.float32)
  return (per_frame * weights).sum(), weights.sum(), {}


def _text_frame_matching(model: MEmoBERT, batch: dict, deterministic: bool,
                         dropout_key: jax.Array | None) -> TaskOutput:
  encoded = _encode(model, batch, deterministic, dropout_key)
  logits = model.itm_logits(encoded)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['itm_targets'])
  correct = (logits.argmax(-1) == batch['itm_targets']).astype(jnp.float32)
  return losses.sum(), jnp.asarray(losses.shape[0], jnp.float32), {'accuracy': correct.sum()}


def _cls(model: MEmoBERT, batch: dict, deterministic: bool, dropout_key: jax.Array | None) -> TaskOutput:
  encoded = _encode(model, batch, deterministic, dropout_key)
  logits = model.cls_logits(encoded)
  weights = batch['label_weights'].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
  correct = (logits.argmax(-1) == batch['labels']).astype(jnp.float32)
  return (losses * weights).sum(), weights.sum(), {'accuracy': (correct * weights).sum()}


TASKS: dict[str, Callable[..., TaskOutput]] = {
    'mlm': _masked_lm,
    'visual_regression': _frame_regression('visual'),
    'visual_kl': _visual_kl,
    'acoustic_regression': _frame_regression('acoustic'),
    'itm': _text_frame_matching,
    # Prompt finetuning is masked-word prediction at the one [MASK]: the MLM loss, no new parameters.
    'prompt': _masked_lm,
    'prompt_label_words': _label_word_prompt,
    'cls': _cls,
}


def class_scores(model: MEmoBERT, batch: dict, label_word_ids: jax.Array | None) -> jax.Array:
  """Per-class scores [B, K]: the label words' logits at [MASK] (prompt), or the [CLS] head when no label words."""
  encoded = model(batch)
  if label_word_ids is None:
    return model.cls_logits(encoded)
  return _label_word_logits(model, encoded, batch, label_word_ids)
