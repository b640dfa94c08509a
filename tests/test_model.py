"""The model's contract: modalities and shapes, padding and frame masking, sharding, training, weight tying,
dtypes, the weight-decay mask and config errors.

Everything runs on the tiny config with a small vocabulary, jitted (an eager first call of the model costs
seconds of op-by-op compilation); conftest gives 8 fake CPU devices for the sharded checks.
"""

import functools
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from configs import pretrain
from configs.common import LOGICAL_AXIS_RULES, MESH_AXES
from memobert_jax.training import optimizer as optimizer_lib
from memobert_jax import sharding
from memobert_jax.model import layers
from memobert_jax.training import aot, setup, train_state
from memobert_jax.training.step import make_train_step
from memobert_jax.training.tasks import PRETRAINING_TASKS, TASKS
from tests import model_helpers
from tests.model_helpers import ACOUSTIC_LENGTHS, TEXT_LENGTHS, VISUAL_LENGTHS, make_batch, model_inputs, tiny_config

EXACT = 1e-6  # float32 reordering noise; anything the model really depends on moves outputs far more
CHANGED = 1e-3
FRAME_MODALITIES = ('visual', 'acoustic')


def optim_config(**overrides) -> ConfigDict:
  return ConfigDict(dict(learning_rate=1e-3, warmup_steps=0, total_steps=1000, b1=0.9, b2=0.98, eps=1e-6,
                         weight_decay=0.01, clip_norm=5.0, lr_multipliers=()) | overrides)


@pytest.fixture(scope='module', autouse=True)
def fast_compilation():
  """Skips XLA's backend optimisations while this module runs.

  Compilation is nearly all of this file's time (about 3x faster so); the tiny model runs in milliseconds either way.
  """
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module')
def cfg() -> ConfigDict:
  return tiny_config()


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh((4, 2, 1), MESH_AXES)


@pytest.fixture(scope='module')
def sharded(cfg, mesh) -> tuple[nnx.GraphDef, train_state.TrainState]:
  """(graph definition, train state) created sharded over the (data=4, fsdp=2, tensor=1) mesh."""
  optimizer = optimizer_lib.make_optimizer(optim_config())
  graphdef, state, _ = train_state.create_train_state(cfg, optimizer, mesh, LOGICAL_AXIS_RULES, seed=0)
  return graphdef, state


@pytest.fixture(scope='module')
def model(sharded) -> tuple[nnx.GraphDef, nnx.State]:
  """(graph definition, parameters on the host): the unsharded model most tests run on one device.

  Shares the sharded state's initialisation: a second jitted init would cost seconds of compilation.
  """
  graphdef, state = sharded
  return graphdef, jax.device_get(state.params)


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, params: nnx.State, batch: dict) -> dict[str, jax.Array]:
  encoded = nnx.merge(graphdef, params)(batch)
  return dict(hidden=encoded.hidden, valid=encoded.valid, text=encoded.text, visual=encoded.visual,
              acoustic=encoded.acoustic)


def encode(model, batch: dict) -> dict[str, np.ndarray]:
  return jax.tree.map(np.asarray, _encode(*model, batch))


def max_diff_at_valid(a: dict, b: dict) -> float:
  np.testing.assert_array_equal(a['valid'], b['valid'])
  return float(np.abs(a['hidden'] - b['hidden'])[a['valid']].max())


def flat(state: nnx.State) -> dict[str, nnx.Variable]:
  return {'/'.join(map(str, path)): variable for path, variable in nnx.to_flat_state(state)}


# 1. Modalities and shapes.


@pytest.mark.parametrize('modalities', [(), ('visual',), ('acoustic',), ('visual', 'acoustic')],
                         ids=['text', 'text+visual', 'text+acoustic', 'all'])
def test_runs_on_any_subset_of_modalities_with_concatenated_output_shape(cfg, model, modalities):
  batch = model_inputs(make_batch(cfg), *modalities)
  out = encode(model, batch)
  lengths = dict(text=8, visual=6 if 'visual' in modalities else 0, acoustic=5 if 'acoustic' in modalities else 0)
  assert out['hidden'].shape == (8, sum(lengths.values()), cfg.hidden_size)
  assert out['hidden'].dtype == np.float32
  assert np.isfinite(out['hidden']).all()
  for name, length in lengths.items():
    assert out[name].shape == (8, length, cfg.hidden_size)
  masks = [batch['text_mask']] + [batch[f'{m}_mask'] for m in modalities]
  np.testing.assert_array_equal(out['valid'], np.concatenate(masks, axis=1))


def test_absent_modalities_equal_fully_padded_ones(cfg, model):
  batch = make_batch(cfg, visual_lengths=(0,) * 8, acoustic_lengths=(0,) * 8)
  text_only = encode(model, model_inputs(batch))
  padded = encode(model, model_inputs(batch, *FRAME_MODALITIES))
  assert np.abs(padded['text'] - text_only['hidden'])[text_only['valid']].max() <= EXACT


def test_zero_frames_in_a_batch_is_the_same_as_no_visual_input(cfg, model):
  batch = make_batch(cfg, visual_len=0)
  out = encode(model, model_inputs(batch, *FRAME_MODALITIES))
  assert out['hidden'].shape == (8, 8 + 5, cfg.hidden_size)
  assert out['visual'].shape == (8, 0, cfg.hidden_size)
  without_visual = encode(model, model_inputs(batch, 'acoustic'))
  assert max_diff_at_valid(out, without_visual) <= EXACT


def test_examples_with_and_without_frames_share_a_batch(cfg, model):
  batch = make_batch(cfg)
  assert model_helpers.VISUAL_LENGTHS[6] == model_helpers.ACOUSTIC_LENGTHS[6] == 0
  assert model_helpers.VISUAL_LENGTHS[0] > 0
  mixed = encode(model, model_inputs(batch, *FRAME_MODALITIES))
  text_only = encode(model, model_inputs(batch))
  text_valid = batch['text_mask']
  # Example 6 has no frames: its text reads as if the batch had none; example 0's frames do change its text.
  assert np.abs(mixed['text'][6] - text_only['text'][6])[text_valid[6]].max() <= EXACT
  assert np.abs(mixed['text'][0] - text_only['text'][0])[text_valid[0]].max() > CHANGED


# 2. Padding invariance.


def _with_new_content(batch: dict, modality: str, where: np.ndarray, vocab_size: int) -> dict:
  """A copy of `batch` with other ids / frame values (and flipped 'masked' flags) where `where` is True."""
  rng = np.random.default_rng(1)
  changed = dict(batch)
  if modality == 'text':
    other_ids = (batch['text_ids'] + rng.integers(1, vocab_size, where.shape)) % vocab_size
    changed['text_ids'] = np.where(where, other_ids, batch['text_ids']).astype(np.int32)
  else:
    frames = batch[modality]
    changed[modality] = np.where(where[..., None], 10 * rng.normal(size=frames.shape), frames).astype(np.float32)
    changed[f'{modality}_masked'] = np.where(where, ~batch[f'{modality}_masked'], batch[f'{modality}_masked'])
  return changed


@pytest.mark.parametrize('modality', ['text', *FRAME_MODALITIES])
def test_padding_content_does_not_change_outputs_at_valid_positions(cfg, model, modality):
  batch = model_inputs(make_batch(cfg), *FRAME_MODALITIES)
  padding = ~batch[f'{modality}_mask']
  assert padding.any()
  changed = _with_new_content(batch, modality, padding, cfg.vocab_size)
  assert max_diff_at_valid(encode(model, batch), encode(model, changed)) <= EXACT


@pytest.mark.parametrize('modality', ['text', *FRAME_MODALITIES])
def test_valid_content_changes_its_example_only(cfg, model, modality):
  batch = model_inputs(make_batch(cfg), *FRAME_MODALITIES)
  where = np.zeros_like(batch[f'{modality}_mask'])
  where[0, 1] = True  # one valid token / frame of example 0
  assert batch[f'{modality}_mask'][0, 1]
  before, after = encode(model, batch), encode(model, _with_new_content(batch, modality, where, cfg.vocab_size))
  diff = np.abs(before['hidden'] - after['hidden']).max(-1)
  assert diff[0][before['valid'][0]].min() > CHANGED  # attention spreads the change to every valid position
  assert diff[1:][before['valid'][1:]].max() <= EXACT


# 3. Masked frames.


@pytest.mark.parametrize('modality', FRAME_MODALITIES)
def test_masked_frames_read_as_the_mask_vector_whatever_their_features(cfg, model, modality):
  batch = model_inputs(make_batch(cfg), *FRAME_MODALITIES)
  masked = batch[f'{modality}_masked']
  assert masked.any()
  reference = encode(model, batch)
  noisy = dict(batch, **{modality: np.where(masked[..., None], 100.0, batch[modality]).astype(np.float32)})
  assert max_diff_at_valid(reference, encode(model, noisy)) <= EXACT
  # Same as feeding the learned mask vector as an ordinary, unflagged frame.
  mask_vector = np.asarray(model[1][f'{modality}_embeddings']['mask_vector'].get_value())
  explicit = dict(batch, **{modality: np.where(masked[..., None], mask_vector, batch[modality]).astype(np.float32),
                            f'{modality}_masked': np.zeros_like(masked)})
  assert max_diff_at_valid(reference, encode(model, explicit)) <= EXACT
  # And the flag matters: the same frames unflagged are read as they are.
  unflagged = dict(batch, **{f'{modality}_masked': np.zeros_like(masked)})
  assert max_diff_at_valid(reference, encode(model, unflagged)) > CHANGED


# 4. Sharding.


EXPECTED_SPECS = {
    'text_embeddings/word/embedding': P('tensor', 'fsdp'),  # vocab -> tensor, embed -> fsdp
    'text_embeddings/position/embedding': P(None, 'fsdp'),
    'encoder/layers/0/attention/qkv/kernel': P('fsdp', None, 'tensor', None),
    'encoder/layers/1/attention/out/kernel': P('tensor', None, 'fsdp'),
    'encoder/layers/0/intermediate/kernel': P('fsdp', 'tensor'),
    'encoder/layers/1/output/kernel': P('tensor', 'fsdp'),
    'encoder/layers/0/attention_norm/scale': P(None),
    'visual_embeddings/projection/kernel': P(None, 'fsdp'),
    'acoustic_embeddings/projection/kernel': P(None, 'fsdp'),
    'mlm_head/bias': P('tensor'),
}


def test_parameters_are_created_sharded_by_the_logical_axis_rules(sharded, mesh):
  assert dict(mesh.shape) == dict(data=4, fsdp=2, tensor=1)
  params = flat(sharded[1].params)
  for name, spec in EXPECTED_SPECS.items():
    array = params[name].get_value()
    assert isinstance(array.sharding, NamedSharding) and array.sharding.mesh == mesh, name
    assert array.sharding.spec == spec, (name, array.sharding.spec)
    expected_shard = tuple(d // (mesh.shape[a] if a else 1) for d, a in zip(array.shape, spec))
    assert array.addressable_shards[0].data.shape == expected_shard, name
  assert params['encoder/layers/0/attention_norm/scale'].get_value().sharding.is_fully_replicated
  assert not params['text_embeddings/word/embedding'].get_value().sharding.is_fully_replicated


def test_optimizer_moments_are_sharded_like_their_parameters(sharded):
  state = sharded[1]
  params = flat(state.params)
  for moment in ('mu', 'nu'):
    moments = flat(optax.tree_utils.tree_get(state.opt_state, moment))
    assert moments.keys() == params.keys()
    for name, variable in moments.items():
      assert variable.get_value().sharding == params[name].get_value().sharding, (moment, name)


@functools.partial(jax.jit, static_argnums=0)
def _mlm_loss_and_grads(graphdef: nnx.GraphDef, params: nnx.State, batch: dict, key: jax.Array) -> dict:
  """Mean MLM loss and its gradients, without dropout and with dropout drawn from `key`."""

  def loss(p, deterministic):
    total, count, _ = TASKS['mlm'](nnx.merge(graphdef, p), batch, deterministic, None if deterministic else key)
    return total / count

  return {name: jax.value_and_grad(loss)(params, deterministic)
          for name, deterministic in (('dropout_off', True), ('dropout_on', False))}


def test_mlm_loss_and_gradients_match_between_8_device_mesh_and_one_device(cfg, sharded, model, mesh):
  graphdef, state = sharded
  batch = make_batch(cfg)
  key = jax.random.key(7)
  one_device = _mlm_loss_and_grads(*model, batch, key)
  on_mesh = _mlm_loss_and_grads(
      graphdef, state.params,
      jax.device_put(batch, NamedSharding(mesh, sharding.logical_to_spec(('batch',), LOGICAL_AXIS_RULES))), key)
  assert len(on_mesh['dropout_off'][0].sharding.device_set) == 8
  for name in ('dropout_off', 'dropout_on'):
    (loss_1, grads_1), (loss_8, grads_8) = one_device[name], on_mesh[name]
    assert abs(float(loss_1) - float(loss_8)) <= 1e-5, name
    diffs = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), grads_1, grads_8)
    assert max(jax.tree.leaves(diffs)) <= 1e-5, name
  # Dropout really is on in the second case (else the comparison above would prove nothing about it).
  assert abs(float(one_device['dropout_on'][0]) - float(one_device['dropout_off'][0])) > CHANGED


def _all_gather_bytes(graphdef, state, mesh, batch) -> float:
  optimizer = optimizer_lib.make_optimizer(optim_config())
  shardings = jax.tree.map(lambda a: a.sharding, state)
  train_step = make_train_step(graphdef, optimizer, seed=0, learning_rate=optimizer_lib.learning_rate_schedule(
      optim_config()), state_shardings=shardings, mesh=mesh, rules=LOGICAL_AXIS_RULES)
  with jax.set_mesh(mesh):
    compiled = train_step.lower(state, batch, 'mlm').compile()
  return aot.collective_bytes(compiled.as_text(), loop_trips=1).get('all-gather', 0.0)


def test_the_train_step_compiles_with_the_configs_xla_options(cfg, sharded, mesh):
  """mesh.xla_options reach the step's compile (and only its): XLA:CPU's YNNPACK matmul fusions go when they are
  turned off there, and an option XLA does not know stops the compile with its name."""
  graphdef, state = sharded
  batch = jax.tree.map(lambda x: x[None], make_batch(cfg))  # one micro-batch
  shardings = jax.tree.map(lambda a: a.sharding, state)

  def compiled_text(xla_options: dict):
    config = pretrain.get_config('tiny,mesh=cpu')
    config.mesh.xla_options = xla_options
    train_step = make_train_step(graphdef, optimizer_lib.make_optimizer(optim_config()), seed=0,
                                 learning_rate=optimizer_lib.learning_rate_schedule(optim_config()),
                                 state_shardings=shardings, mesh=mesh, rules=LOGICAL_AXIS_RULES,
                                 compiler_options=setup.compiler_options(config))
    with jax.set_mesh(mesh):
      return train_step.lower(state, batch, 'mlm').compile().as_text()

  assert 'ynn_fusion' in compiled_text({})
  assert 'ynn_fusion' not in compiled_text({'xla_cpu_experimental_ynn_fusion_type': ''})
  with pytest.raises(Exception, match='xla_cpu_no_such_option'):
    compiled_text({'xla_cpu_no_such_option': 'true'})


@pytest.mark.skipif(platform.machine().lower() not in ('x86_64', 'amd64'), reason='jaxlib has oneDNN on x86-64 only')
def test_the_onednn_preset_trains_every_task_to_xlas_losses(cfg):
  """mesh=cpu-onednn: its matmuls are oneDNN's, every pretraining task's step runs (XLA's larger oneDNN fusions
  abort the frame-regression steps) and each step's loss is the cpu preset's."""
  mesh = sharding.make_mesh((1, 1, 1), MESH_AXES, devices=jax.devices()[:1])
  optimizer = optimizer_lib.make_optimizer(optim_config())
  batch = jax.tree.map(lambda x: x[None], make_batch(cfg))  # one micro-batch

  def losses_and_hlo(preset: str) -> tuple[list[float], str]:
    config = pretrain.get_config(f'tiny,mesh={preset}')
    graphdef, state, shardings = train_state.create_train_state(cfg, optimizer, mesh, LOGICAL_AXIS_RULES, seed=0)
    train_step = make_train_step(graphdef, optimizer, seed=0,
                                 learning_rate=optimizer_lib.learning_rate_schedule(optim_config()),
                                 state_shardings=shardings, mesh=mesh, rules=LOGICAL_AXIS_RULES,
                                 compiler_options=setup.compiler_options(config))
    losses, hlo = [], ''
    for task in PRETRAINING_TASKS:  # in turn on one state, as pretraining draws them
      with jax.set_mesh(mesh):
        compiled = train_step.lower(state, batch, task).compile()
      hlo += compiled.as_text()
      state, metrics = compiled(state, batch)
      losses.append(float(metrics[f'{task}/loss']))
    return losses, hlo

  xla_losses, xla_hlo = losses_and_hlo('cpu')
  onednn_losses, onednn_hlo = losses_and_hlo('cpu-onednn')
  assert 'onednn_fusion' not in xla_hlo and 'onednn_fusion' in onednn_hlo
  np.testing.assert_allclose(onednn_losses, xla_losses, rtol=1e-5)


def test_fsdp_gathers_the_kernels_not_the_activations(cfg, sharded, mesh, monkeypatch):
  """On (data=4, fsdp=2) the hidden states stay whole on their hidden axis (memobert_jax/sharding.py pins them), so
  the step all-gathers the fsdp-sharded parameters (forward and backward) and no activations. Without the pins
  XLA's propagation follows the kernels and also gathers [batch, length, hidden] activations."""
  graphdef, state = sharded
  batch = make_batch(cfg, text_lengths=TEXT_LENGTHS * 8, visual_lengths=VISUAL_LENGTHS * 8,
                     acoustic_lengths=ACOUSTIC_LENGTHS * 8)
  batch = jax.tree.map(lambda x: x[None], batch)  # one micro-batch of 64
  sharded_param_bytes = sum(v.get_value().nbytes for v in jax.tree.leaves(
      state.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
      if not v.get_value().sharding.is_fully_replicated)
  pinned = _all_gather_bytes(graphdef, state, mesh, batch)
  assert pinned <= 2 * sharded_param_bytes
  monkeypatch.setattr(sharding, 'constrain', lambda x, logical_axes: x)
  unpinned = _all_gather_bytes(graphdef, state, mesh, batch)
  assert unpinned > 2 * sharded_param_bytes, (pinned, unpinned, sharded_param_bytes)


def test_pins_traced_under_a_mesh_without_the_rules_are_an_error_not_dropped(cfg, sharded, mesh):
  graphdef, state = sharded
  batch = make_batch(cfg)
  forward = jax.jit(lambda params, batch: nnx.merge(graphdef, params)(batch).hidden)
  with jax.set_mesh(mesh), pytest.raises(RuntimeError, match='no logical-axis rules are in force'):
    forward(state.params, batch)
  with jax.set_mesh(mesh), sharding.axis_rules(LOGICAL_AXIS_RULES):
    assert forward(state.params, batch).shape[0] == batch['text_ids'].shape[0]


# 5. Training.


def test_train_steps_reduce_every_pretraining_loss(cfg):
  """20 AdamW steps per task on one fixed batch, the tasks in turn on one state (as pretraining does)."""
  mesh = sharding.make_mesh((1, 1, 1), MESH_AXES, devices=jax.devices()[:1])
  opt_cfg = optim_config(learning_rate=3e-3)
  optimizer = optimizer_lib.make_optimizer(opt_cfg)
  graphdef, state, shardings = train_state.create_train_state(cfg, optimizer, mesh, LOGICAL_AXIS_RULES, seed=0)
  schedule = optimizer_lib.learning_rate_schedule(opt_cfg)
  train_step = make_train_step(graphdef, optimizer, seed=0, learning_rate=schedule, state_shardings=shardings,
                               mesh=mesh, rules=LOGICAL_AXIS_RULES)
  batch = jax.tree.map(lambda x: x[None], make_batch(cfg))  # one micro-batch
  # Masked words can be memorised; masked frames only partly (measured: MLM x0.25, frame tasks x0.35-0.6).
  ratios = dict(mlm=0.5, visual_regression=0.75, visual_kl=0.75, acoustic_regression=0.75)
  for task in PRETRAINING_TASKS:
    losses = []
    for _ in range(20):
      state, metrics = train_step(state, batch, task)
      losses.append(float(metrics[f'{task}/loss']))
    assert np.isfinite(losses).all(), (task, losses)
    assert np.mean(losses[-3:]) < ratios[task] * losses[0], (task, losses)


# 6. Weight tying.


def test_mlm_decoder_is_the_word_embedding_table(cfg, model):
  graphdef, params = model
  batch = make_batch(cfg)
  # Inputs from the lower half of the vocabulary, targets from the upper half: the upper rows of the table are
  # never looked up, so only a tied decoder gives them a gradient.
  half = cfg.vocab_size // 2
  batch['text_ids'] = batch['text_ids'] % half
  batch['mlm_targets'] = half + batch['mlm_targets'] % half
  _, grads = _mlm_loss_and_grads(graphdef, params, batch, jax.random.key(0))['dropout_off']
  row_norms = np.linalg.norm(np.asarray(flat(grads)['text_embeddings/word/embedding'].get_value()), axis=1)
  assert (row_norms[np.unique(batch['mlm_targets'])] > 1e-4).all()
  # No separate decoder matrix: the output bias is the only other parameter with a vocabulary axis.
  vocab_sized = sorted(name for name, variable in flat(params).items() if cfg.vocab_size in variable.shape)
  assert vocab_sized == ['mlm_head/bias', 'text_embeddings/word/embedding']


@functools.partial(jax.jit, static_argnums=(0, 1))
def _regress(graphdef: nnx.GraphDef, modality: str, params: nnx.State, hidden: jax.Array,
             kernel: jax.Array) -> jax.Array:
  """The modality's frame regression with its input projection kernel replaced by `kernel`."""
  model = nnx.merge(graphdef, params)
  getattr(model, f'{modality}_embeddings').projection.kernel[...] = kernel
  return getattr(model, f'{modality}_regression')(hidden)


@pytest.mark.parametrize('modality', FRAME_MODALITIES)
def test_frame_regression_head_is_the_transposed_input_projection(cfg, model, modality):
  graphdef, params = model
  hidden = np.random.default_rng(0).normal(size=(2, 3, cfg.hidden_size)).astype(np.float32)
  kernel = np.asarray(flat(params)[f'{modality}_embeddings/projection/kernel'].get_value())
  bias = np.asarray(flat(params)[f'{modality}_regression_head/bias'].get_value())
  predict = lambda k: np.asarray(_regress(graphdef, modality, params, hidden, k))
  prediction = predict(kernel)
  assert prediction.shape == (2, 3, kernel.shape[0])
  # Linear in the projection kernel, and nothing but the bias without it: no output matrix of its own.
  np.testing.assert_allclose(predict(np.zeros_like(kernel)), np.broadcast_to(bias, prediction.shape), atol=EXACT)
  np.testing.assert_allclose(predict(2 * kernel) - bias, 2 * (prediction - bias), rtol=1e-5, atol=EXACT)
  assert np.abs(prediction - bias).min() > 0


# 7. Dtype policy.


@functools.partial(jax.jit, static_argnums=0)
def _hidden_and_losses(graphdef: nnx.GraphDef, params: nnx.State, batch: dict) -> tuple[jax.Array, dict]:
  model = nnx.merge(graphdef, params)
  losses = {}
  for task in PRETRAINING_TASKS:
    total, count, _ = TASKS[task](model, batch, True, None)
    losses[task] = total / count
  return model(batch).hidden, losses


def test_bfloat16_compute_keeps_float32_parameters_and_gives_finite_losses(cfg, model):
  graphdef, abstract = train_state.abstract_model(tiny_config(dtype='bfloat16'))
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  batch = make_batch(cfg)
  hidden, losses = _hidden_and_losses(graphdef, model[1], batch)
  assert hidden.dtype == jnp.bfloat16
  for task in PRETRAINING_TASKS:
    assert np.isfinite(float(losses[task])), task
  # The same model as in float32, up to bfloat16 rounding (~3 significant digits).
  reference = encode(model, model_inputs(batch, *FRAME_MODALITIES))
  error = np.asarray(hidden, np.float32)[reference['valid']] - reference['hidden'][reference['valid']]
  assert np.linalg.norm(error) <= 0.02 * np.linalg.norm(reference['hidden'][reference['valid']])


def test_layer_norm_gradients_equal_autodiff_of_the_formula():
  """The written-out backward against autodiff of the plain formula, on rows far from zero mean."""
  x_key, scale_key, bias_key, cotangent_key = jax.random.split(jax.random.key(0), 4)
  x = 3.0 * jax.random.normal(x_key, (2, 5, 64)) + 1.5
  scale, bias = 1.0 + jax.random.normal(scale_key, (64,)), jax.random.normal(bias_key, (64,))
  cotangent = jax.random.normal(cotangent_key, x.shape)

  def formula(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.square(x - mean).mean(-1, keepdims=True) + 1e-12) * scale + bias

  def gradients(norm):
    return jax.jit(jax.grad(lambda *args: (norm(*args) * cotangent).sum(), argnums=(0, 1, 2)))(x, scale, bias)

  ours = gradients(lambda x, scale, bias: layers.layer_norm(x, scale, bias, 1e-12))
  for name, got, want in zip(('x', 'scale', 'bias'), ours, gradients(formula)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()), err_msg=name)


# 8. Weight decay mask.


def test_decay_mask_covers_kernels_and_embeddings_but_no_bias_or_norm_scale(cfg):
  _, abstract = train_state.abstract_model(cfg)
  mask = {name: variable.get_value() for name, variable in flat(optimizer_lib.decay_mask(abstract)).items()}
  by_kind = {}
  for name, decays in mask.items():
    by_kind.setdefault(name.rsplit('/', 1)[-1], set()).add(decays)
  assert by_kind == dict(kernel={True}, embedding={True}, mask_vector={True}, acoustic_type={True}, bias={False},
                         scale={False})
  # make_optimizer applies it: with zero gradients only the decayed parameters shrink.
  opt_cfg = optim_config(learning_rate=0.1, weight_decay=0.5)
  optimizer = optimizer_lib.make_optimizer(opt_cfg)
  ones = jax.tree.map(lambda leaf: np.ones(leaf.shape, np.float32), abstract)

  @jax.jit
  def one_step(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    return optax.apply_updates(params, updates)

  for name, variable in flat(one_step(ones)).items():
    expected = 1 - 0.1 * 0.5 if mask[name] else 1.0
    np.testing.assert_allclose(np.asarray(variable.get_value()), expected, rtol=1e-6, err_msg=name)


def test_lr_multipliers_scale_the_matching_parameters_updates_and_reject_a_pattern_matching_none(cfg):
  _, abstract = train_state.abstract_model(cfg)
  params = jax.tree.map(lambda leaf: np.ones(leaf.shape, np.float32), abstract)
  grads = jax.tree.map(lambda leaf: np.full(leaf.shape, 0.5, np.float32), abstract)

  def one_step(multipliers):
    optimizer = optimizer_lib.make_optimizer(optim_config(learning_rate=0.01, weight_decay=0.0, clip_norm=1e9,
                                                          lr_multipliers=multipliers))
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return {name: np.asarray(v.get_value()) for name, v in flat(updates).items()}

  plain = one_step(())
  scaled = one_step((('acoustic_embeddings/.*', 10.0), ('acoustic_.*', 3.0)))
  for name, update in scaled.items():
    expected = 10.0 if name.startswith('acoustic_embeddings/') else 3.0 if name.startswith('acoustic_') else 1.0
    np.testing.assert_allclose(update, expected * plain[name], rtol=1e-6, err_msg=name)
  assert any(name.startswith('acoustic_type') for name in scaled) and any(
      name.startswith('acoustic_embeddings/') for name in scaled)
  with pytest.raises(ValueError, match="'acustic_.*' matches no parameter"):
    one_step((('acustic_.*', 10.0),))


# 9. Config errors.


@pytest.mark.parametrize('overrides, names', [
    (dict(hidden_size=60, num_heads=8), ('hidden_size 60', 'num_heads 8')),
    (dict(attention_impl='flash'), ('attention_impl', "'flash'")),
    (dict(remat='everything'), ('remat', "'everything'")),
], ids=['heads', 'attention_impl', 'remat'])
def test_invalid_model_config_raises_value_error_naming_the_setting(overrides, names):
  with pytest.raises(ValueError) as error:
    train_state.abstract_model(tiny_config(**overrides))
  for name in names:
    assert name in str(error.value)


@pytest.mark.parametrize('modality', FRAME_MODALITIES)
def test_frames_of_the_wrong_feature_dimension_raise_value_error(cfg, model, modality):
  graphdef, params = model
  wrong = model_inputs(make_batch(tiny_config(**{f'{modality}_dim': 7})), *FRAME_MODALITIES)
  with pytest.raises(ValueError) as error:
    jax.eval_shape(lambda p, b: nnx.merge(graphdef, p)(b).hidden, params, wrong)
  for name in (f'model.{modality}_dim', 'dimension 7', f'expects {cfg[f"{modality}_dim"]}'):
    assert name in str(error.value)
