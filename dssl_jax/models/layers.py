"""Convolution, batch norm and max-pool with PyTorch's semantics, written for XLA:CPU's speed.

Each matches torch.nn's layer (tests/models/test_layers.py) and keeps flax's parameter names, so
torchvision weights convert unchanged. Why not nn.Conv / nn.BatchNorm / nn.max_pool: on the CPU
their backward passes slow a ResNet-50 train step (figures in docs/benchmarks.md):
- a 1x1 convolution's kernel gradient went through a transposed copy of its input, into which XLA
  fused (and recomputed) the preceding BN/add/ReLU chain; as a matmul over NHWC rows (`pointwise`)
  the gradient x^T g reads the input where it is;
- batch norm is applied as one scale and shift per channel, folded from its statistics;
- max-pool's generic gradient (select-and-scatter) is slow; `max_pool_3x3` routes each output's
  gradient to the first maximum of its window, as PyTorch's kernel does.
The first and the last were measured to win on the CPU only: where the step is compiled for an
accelerator, `lax.platform_dependent` keeps XLA's own 1x1 convolution and select-and-scatter.
"""
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., Ci] @ kernel [Ci, Co]: a 1x1 convolution over NHWC."""
  return x @ kernel


def _pointwise_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _pointwise_bwd(residuals, g):
  x, kernel = residuals
  ci, co = kernel.shape
  return g @ kernel.T, x.reshape(-1, ci).T @ g.reshape(-1, co)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class Conv(nn.Module):
  """Bias-free 2-D convolution, NHWC with an HWIO `kernel`, explicit (PyTorch) padding."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    convolution = lambda x, kernel: lax.conv_general_dilated(
        x, kernel, self.strides, self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.kernel_size == (1, 1) and self.padding == ((0, 0), (0, 0)):
      as_matmul = lambda x, kernel: pointwise(x[:, ::self.strides[0], ::self.strides[1]],
                                              kernel[0, 0])
      return lax.platform_dependent(x, kernel, cpu=as_matmul, default=convolution)
    return convolution(x, kernel)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d: batch statistics in training (the running variance is updated with the
  unbiased one, as PyTorch does), running statistics otherwise. Statistics are at least float32
  whatever `dtype` computes the output."""
  use_running_average: bool
  momentum: float = 0.9  # flax convention: PyTorch's momentum 0.1
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', self.scale_init, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,))
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,))
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      axes = tuple(range(x.ndim - 1))
      mean = wide.mean(axes)
      var = jnp.maximum((wide * wide).mean(axes) - mean * mean, 0)  # one pass over x
      if not self.is_initializing():
        count = x.size // channels
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = (self.momentum * running_var.value
                             + (1 - self.momentum) * var * count / max(count - 1, 1))
    multiplier = scale * lax.rsqrt(var + self.epsilon)
    shift = bias - mean * multiplier
    return x * multiplier.astype(self.dtype) + shift.astype(self.dtype)


def _max_pool_forward(x):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


@jax.custom_vjp
def max_pool_3x3(x: jax.Array) -> jax.Array:
  """torch.nn.MaxPool2d(3, stride=2, padding=1) on NHWC (padding never wins: it is -inf)."""
  return _max_pool_forward(x)


def _max_pool_fwd(x):
  y = _max_pool_forward(x)
  return y, (x, y)


def _max_pool_bwd(residuals, g):
  return (lax.platform_dependent(*residuals, g, cpu=_to_first_maximum, default=_select_and_scatter),)


def _select_and_scatter(x, y, g):
  """XLA's generic gradient (it too picks the first maximum)."""
  del y
  return jax.vjp(_max_pool_forward, x)[1](g)[0]


def _to_first_maximum(x, y, g):
  """Each output's gradient goes to the first maximum of its window in row-major order (ties
  are common after ReLU), as select-and-scatter and PyTorch do: 9 strided slices, no scatter."""
  batch, height, width, channels = x.shape
  _, out_h, out_w, _ = y.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taken = jnp.zeros(y.shape, bool)
  dx = jnp.zeros(padded.shape, g.dtype)
  zero = jnp.zeros((), g.dtype)
  for dy in range(3):
    for dw in range(3):
      end_h, end_w = dy + 2 * (out_h - 1) + 1, dw + 2 * (out_w - 1) + 1
      window = lax.slice(padded, (0, dy, dw, 0), (batch, end_h, end_w, channels), (1, 2, 2, 1))
      first = (window == y) & ~taken
      taken |= first
      dx += lax.pad(jnp.where(first, g, zero), zero,
                    ((0, 0, 0), (dy, height + 2 - end_h, 1), (dw, width + 2 - end_w, 1),
                     (0, 0, 0)))
  return dx[:, 1:-1, 1:-1]


max_pool_3x3.defvjp(_max_pool_fwd, _max_pool_bwd)
