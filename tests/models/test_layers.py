"""The fast layers compute what torch.nn's do, forward and backward (ties of max-pool included), in
the form compiled for the CPU and in the one compiled for an accelerator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dssl_jax.models import layers
from tests.helpers import lowered_for, reference

torch = reference('torch')


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _value_and_vjp(fn):
  def value_and_vjp(cotangent, *args):
    y, vjp = jax.vjp(fn, *args)
    return y, *vjp(cotangent)
  return value_and_vjp


@pytest.mark.parametrize('platform', ['cpu', 'cuda'])
@pytest.mark.parametrize('kernel_size,strides,padding', [
    ((1, 1), (1, 1), ((0, 0), (0, 0))), ((1, 1), (2, 2), ((0, 0), (0, 0))),
    ((3, 3), (2, 2), ((1, 1), (1, 1)))])
def test_conv_and_its_gradients_match_torch(kernel_size, strides, padding, platform):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 7, 5)).astype(np.float32)
  cotangent = rng.normal(size=(2, *(-(-np.array([9, 7]) // strides[0])), 6)).astype(np.float32)
  conv = layers.Conv(6, kernel_size, strides, padding)
  params = conv.init(jax.random.key(0), x)
  lowered = lowered_for(platform, _value_and_vjp(conv.apply), cotangent, params, x)
  # A 1x1 convolution is a matmul (layers.pointwise) on the CPU only.
  assert ('convolution' in lowered.as_text()) == (kernel_size != (1, 1) or platform != 'cpu')
  y, grad_params, grad_x = lowered.compile()(cotangent, params, x)

  x_t = _nchw(x).requires_grad_()
  kernel_t = torch.from_numpy(np.asarray(params['params']['kernel']).transpose(3, 2, 0, 1).copy())
  kernel_t.requires_grad_()
  y_t = torch.nn.functional.conv2d(x_t, kernel_t, stride=strides, padding=padding[0][0])
  y_t.backward(_nchw(cotangent))
  np.testing.assert_allclose(y, _nhwc(y_t), atol=1e-5)
  np.testing.assert_allclose(grad_x, _nhwc(x_t.grad), atol=1e-5)
  np.testing.assert_allclose(grad_params['params']['kernel'],
                             kernel_t.grad.numpy().transpose(2, 3, 1, 0), atol=1e-4)


def test_batch_norm_matches_torch_in_training_and_inference():
  rng = np.random.default_rng(1)
  x = (rng.normal(size=(4, 5, 3, 8)) * 3 + 2).astype(np.float32)
  cotangent = rng.normal(size=x.shape).astype(np.float32)
  norm = layers.BatchNorm(use_running_average=False)
  variables = norm.init(jax.random.key(0), x)
  params = {'scale': jnp.asarray(rng.uniform(0.5, 1.5, 8), jnp.float32),
            'bias': jnp.asarray(rng.uniform(-1, 1, 8), jnp.float32)}
  def apply(params, x):
    return norm.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                      mutable=['batch_stats'])
  y, vjp, updates = jax.vjp(apply, params, x, has_aux=True)
  grad_params, grad_x = vjp(jnp.asarray(cotangent))

  reference = torch.nn.BatchNorm2d(8, eps=1e-5, momentum=0.1)
  with torch.no_grad():
    reference.weight.copy_(torch.tensor(np.asarray(params['scale'])))
    reference.bias.copy_(torch.tensor(np.asarray(params['bias'])))
  x_t = _nchw(x).requires_grad_()
  y_t = reference.train()(x_t)
  y_t.backward(_nchw(cotangent))
  np.testing.assert_allclose(y, _nhwc(y_t), atol=1e-5)
  np.testing.assert_allclose(grad_x, _nhwc(x_t.grad), atol=1e-5)
  np.testing.assert_allclose(grad_params['scale'], reference.weight.grad.numpy(), atol=1e-4)
  np.testing.assert_allclose(grad_params['bias'], reference.bias.grad.numpy(), atol=1e-4)
  stats = updates['batch_stats']
  np.testing.assert_allclose(stats['mean'], reference.running_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(stats['var'], reference.running_var.numpy(), rtol=1e-5)  # unbiased

  inference = layers.BatchNorm(use_running_average=True).apply(
      {'params': params, 'batch_stats': stats}, x)
  np.testing.assert_allclose(inference, _nhwc(reference.eval()(_nchw(x))), atol=1e-5)


@pytest.mark.parametrize('platform', ['cpu', 'cuda'])
@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 7, 5, 2)])
def test_max_pool_gradient_goes_to_the_first_maximum_like_torch(shape, platform):
  rng = np.random.default_rng(2)
  # Few distinct values (ReLU-like zeros among them): most windows have tied maxima.
  x = np.maximum(rng.integers(-2, 3, size=shape), 0).astype(np.float32)
  cotangent = rng.normal(size=(shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3]))
  cotangent = cotangent.astype(np.float32)
  lowered = lowered_for(platform, _value_and_vjp(layers.max_pool_3x3), cotangent, x)
  # XLA's generic gradient (select-and-scatter) on an accelerator; 9 strided slices on the CPU.
  assert ('select_and_scatter' in lowered.as_text()) == (platform != 'cpu')
  y, grad_x = lowered.compile()(cotangent, x)

  x_t = _nchw(x).requires_grad_()
  y_t = torch.nn.functional.max_pool2d(x_t, 3, stride=2, padding=1)
  y_t.backward(_nchw(cotangent))
  np.testing.assert_array_equal(y, _nhwc(y_t))
  np.testing.assert_allclose(grad_x, _nhwc(x_t.grad), atol=1e-6)
