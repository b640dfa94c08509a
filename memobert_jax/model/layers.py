"""Building blocks with logical axis names on every parameter.

Each parameter stores its logical axes under the `out_sharding` metadata key
(flax's name for it). Eager sharding is off: the training code resolves the
names through the config's rules table and creates the parameters already
sharded by jitting the constructor with `out_shardings`, so building a model
needs no mesh.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LogicalAxes = tuple[str | None, ...]


def normal_param(rngs: nnx.Rngs, shape: Sequence[int], axes: LogicalAxes, std: float, dtype) -> nnx.Param:
  value = std * jax.random.normal(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def constant_param(value: float, shape: Sequence[int], axes: LogicalAxes, dtype) -> nnx.Param:
  return nnx.Param(jnp.full(tuple(shape), value, dtype), out_sharding=axes, eager_sharding=False)


def gelu(x: jax.Array) -> jax.Array:
  """BERT's GELU, x * Phi(x) through erf as BERT and torch write it (not jax.nn.gelu's default tanh form).

  jax.nn.gelu(approximate=False) goes through erfc, which XLA computes as two approximations and a select:
  forward and backward took 20-40% longer on CPU for the same values to 1e-6 (docs/PERFORMANCE.md).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


class Dropout(nnx.Module):
  """Inverted dropout that draws 16 random bits per element, two elements per 32-bit random word.

  jax.random.bernoulli spends a whole 32-bit threefry output on each element; on CPU generating those bits
  was the largest single cost of dropout (docs/PERFORMANCE.md). Sixteen bits keep the drop rate exact to
  2^-16. The bits have the input's shape (last axis halved), so with jax's partitionable threefry the mask
  does not depend on how the batch is sharded.
  """

  def __init__(self, rate: float):
    if not 0.0 <= rate < 1.0:
      raise ValueError(f'dropout rate {rate} must lie in [0, 1)')
    self.rate = rate

  def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    if rngs is None:
      raise ValueError('dropout needs rngs with a "dropout" stream when deterministic=False')
    width = x.shape[-1]
    bits = jax.random.bits(rngs.dropout(), x.shape[:-1] + ((width + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)[..., :width]
    keep = halves >= jnp.uint32(round(self.rate * 65536))
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype)).astype(x.dtype)


class Dense(nnx.Module):
  """Contracts the trailing `len(in_shape)` axes of x with a kernel of shape in_shape + out_shape.

  Multi-axis shapes let attention keep heads as their own (shardable) axis.
  Computation runs in `dtype`; parameters are stored in `param_dtype`.
  """

  def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int], axes: LogicalAxes, *,
               init_std: float, dtype, param_dtype, rngs: nnx.Rngs, use_bias: bool = True):
    in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
    if len(axes) != len(in_shape) + len(out_shape):
      raise ValueError(f'{len(axes)} logical axes {axes} for a kernel of shape {in_shape + out_shape}')
    self.num_in_axes = len(in_shape)
    self.dtype = dtype
    self.kernel = normal_param(rngs, in_shape + out_shape, axes, init_std, param_dtype)
    self.bias = constant_param(0.0, out_shape, axes[len(in_shape):], param_dtype) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    n = self.num_in_axes
    kernel = self.kernel[...].astype(self.dtype)
    # One leading axis: the weight gradient then contracts a single axis, which XLA:CPU does in place,
    # where [batch, length] made it copy a transpose of the input first (8 % of a base step, PERFORMANCE.md).
    leading = x.shape[:x.ndim - n]
    flat = x.astype(self.dtype).reshape((-1, *x.shape[x.ndim - n:]))
    y = jax.lax.dot_general(flat, kernel, ((tuple(range(1, n + 1)), tuple(range(n))), ((), ())))
    y = y.reshape(leading + y.shape[1:])
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis (float32 in and out).

  The backward is written out from the saved normalised input and 1/std: on CPU it measured 1-2 % faster
  per base step than autodiff's, with 170 MB less temporary memory (docs/PERFORMANCE.md).
  """
  return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x, scale, bias, eps):
  centred = x - x.mean(-1, keepdims=True)
  inverse_std = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + eps)
  normed = centred * inverse_std
  return normed * scale + bias, (normed, inverse_std, scale)


def _layer_norm_backward(eps, residuals, dy):
  del eps
  normed, inverse_std, scale = residuals
  leading = tuple(range(dy.ndim - 1))
  d_normed = dy * scale
  dx = inverse_std * (d_normed - d_normed.mean(-1, keepdims=True)
                      - normed * (d_normed * normed).mean(-1, keepdims=True))
  return dx, (dy * normed).sum(leading), dy.sum(leading)


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 whatever the compute dtype, then cast back."""

  def __init__(self, size: int, *, eps: float, dtype, param_dtype):
    self.eps = eps
    self.dtype = dtype
    self.scale = constant_param(1.0, (size,), ('norm',), param_dtype)
    self.bias = constant_param(0.0, (size,), ('norm',), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    f32 = lambda v: v.astype(jnp.float32)  # noqa: E731
    return layer_norm(f32(x), f32(self.scale[...]), f32(self.bias[...]), self.eps).astype(self.dtype)


class Embed(nnx.Module):
  """A lookup table; `attend` reuses it as an output projection (the tied MLM decoder)."""

  def __init__(self, num_rows: int, size: int, axes: LogicalAxes, *, init_std: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = normal_param(rngs, (num_rows, size), axes, init_std, param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum('...h,vh->...v', x.astype(self.dtype), self.embedding[...].astype(self.dtype))
