"""The train state (step, parameters, optimizer state) and its sharded creation."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh
from ml_collections import ConfigDict

from memobert_jax.model import MEmoBERT
from memobert_jax import sharding


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


def abstract_model(model_cfg: ConfigDict, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
  """The model's graph definition and shape-only parameter state (no memory is used)."""
  model = nnx.eval_shape(lambda: MEmoBERT(model_cfg, rngs=nnx.Rngs(params=seed)))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def create_train_state(model_cfg: ConfigDict, optimizer: optax.GradientTransformation, mesh: Mesh,
                       rules: sharding.Rules, seed: int) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Initialises a fresh state directly in its sharded layout (no full copy on any one device).

  Returns the model's graph definition, the state and the state's shardings.
  """

  def init() -> TrainState:
    params = nnx.state(MEmoBERT(model_cfg, rngs=nnx.Rngs(params=seed)), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  graphdef, _ = abstract_model(model_cfg, seed)
  shardings = sharding.tree_shardings(jax.eval_shape(init), mesh, rules)
  state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state, shardings


def abstract_train_state(model_cfg: ConfigDict, optimizer: optax.GradientTransformation, mesh: Mesh,
                         rules: sharding.Rules) -> TrainState:
  """Shape-and-sharding-only state: the restore target for checkpoints, on any mesh."""
  _, params = abstract_model(model_cfg)
  abstract = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), params)
  shardings = sharding.tree_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
