"""The heads' equations against direct computations."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dssl_jax.errors import UserError
from dssl_jax.models import heads
from tests.helpers import reference

torch = reference('torch')


@pytest.mark.parametrize('height', [12, 7, 6])
def test_strip_pool_matches_torch_adaptive_pool(height):
  x = np.random.default_rng(0).normal(size=(2, height, 3, 5)).astype(np.float32)
  want = torch.nn.AdaptiveAvgPool2d((6, 1))(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(heads.strip_pool(x, 6), want.numpy()[..., 0].transpose(0, 2, 1),
                             atol=1e-6)


@pytest.mark.parametrize('ratio', [0.0, 0.25, 0.5, 0.9])
def test_zeroing_sets_exactly_round_r_p_entries(ratio):
  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (7, 1024)), jnp.float32)
  zeroed = heads.zero_entries(x, ratio, jax.random.key(3))
  np.testing.assert_array_equal((zeroed == 0).sum(-1), round(ratio * 1024))
  np.testing.assert_array_equal(zeroed[zeroed != 0], x[zeroed != 0])


def test_sdm_zeroes_at_train_time_only():
  sdm = heads.SDM(features=16, zero_ratio=0.5, hidden=8)
  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (4, 16)), jnp.float32)
  variables = sdm.init({'params': jax.random.key(0), 'sdm': jax.random.key(1)}, x, train=True)
  encoder_inputs = []
  def record(next_fun, args, kwargs, context):
    if context.module.name == 'encoder':
      encoder_inputs.append(np.asarray(args[0]))
    return next_fun(*args, **kwargs)
  p = variables['params']
  assert p['encoder']['kernel'].shape == (16, 8)  # the code is `hidden` wide
  autoencode = lambda v: jax.nn.relu(v @ p['encoder']['kernel'] + p['encoder']['bias']
                                     ) @ p['decoder']['kernel'] + p['decoder']['bias']
  with nn.intercept_methods(record):
    eval_out = sdm.apply(variables, x, train=False)
    train_out = sdm.apply(variables, x, train=True, rngs={'sdm': jax.random.key(2)})
  np.testing.assert_allclose(eval_out, autoencode(x), rtol=1e-5)
  np.testing.assert_array_equal(encoder_inputs[0], x)  # eval: nothing zeroed
  np.testing.assert_array_equal((encoder_inputs[1] == 0).sum(-1), 8)  # train: round(0.5 * 16)
  np.testing.assert_allclose(train_out, autoencode(encoder_inputs[1]), rtol=1e-5)


def test_sam_gate_formula():
  sam = heads.SAM(features=8, groups=2)
  rng = np.random.default_rng(0)
  v_p, m_v = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 6, 8)).astype(
      np.float32)
  variables = sam.init(jax.random.key(0), v_p, m_v)
  p = variables['params']
  hidden = np.maximum(v_p @ p['W1']['kernel'] + p['W1']['bias'], 0)
  groups = hidden.reshape(3, 2, 4)
  normed = ((groups - groups.mean(-1, keepdims=True)) / np.sqrt(groups.var(-1, keepdims=True)
                                                                + 1e-5)).reshape(3, 8)
  normed = normed * p['GroupNorm_0']['GroupNorm_0']['scale'] + p['GroupNorm_0']['GroupNorm_0'][
      'bias']
  gate = 1 / (1 + np.exp(-(normed @ p['W2']['kernel'] + p['W2']['bias'])))
  np.testing.assert_allclose(sam.apply(variables, v_p, m_v), gate[:, None] * m_v, rtol=1e-4,
                             atol=1e-6)


def test_spfm_fusions_and_tanh_range():
  t_p, v_s = jnp.ones((2, 4)), jnp.arange(8.).reshape(2, 4)
  for fusion, width in (('add', 4), ('concat', 8)):
    spfm = heads.SPFM(4, fusion)
    variables = spfm.init(jax.random.key(0), t_p, v_s)
    assert variables['params']['mlp']['hidden']['kernel'].shape == (width, 8)
    assert np.abs(spfm.apply(variables, t_p, v_s)).max() <= 1  # tanh (saturates in float32)
  with pytest.raises(UserError, match='spfm_fusion'):
    heads.SPFM(4, 'mean').init(jax.random.key(0), t_p, v_s)


@pytest.mark.parametrize('fusion', ['add', 'concat'])
def test_spfm_pairwise_equals_one_fusion_per_pair(fusion):
  rng = np.random.default_rng(4)
  t_p, v_s = rng.normal(size=(2, 5, 6)).astype(np.float32)
  spfm = heads.SPFM(6, fusion)
  variables = spfm.init(jax.random.key(1), t_p, v_s)
  pairs = np.asarray(spfm.apply(variables, t_p, v_s[:3], method=heads.SPFM.pairwise))
  assert pairs.shape == (3, 5, 6)
  for i, j in itertools.product(range(3), range(5)):
    np.testing.assert_allclose(pairs[i, j], spfm.apply(variables, t_p[j:j + 1], v_s[i:i + 1])[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['GlobalHead', 'LocalHead', 'MLP', 'SPSM', 'SPFM', 'SPFM.pairwise',
                                  'SAM', 'SDM', 'IdClassifier'])
def test_a_bfloat16_head_stays_within_bounds_of_float32(name):
  """Same parameters and float32 inputs: the bfloat16 head's outputs (float32, except SPFM's
  per-pair ones) point where float32's do, within 1% of their norm."""
  p, rng = 64, np.random.default_rng(0)
  x, y = (jnp.asarray(rng.normal(size=(8, p)), jnp.float32) for _ in range(2))
  strips = jnp.asarray(rng.normal(size=(8, 6, p)), jnp.float32)
  make = {'GlobalHead': lambda dtype: (heads.GlobalHead(p, 8, dtype), (x,)),
          'LocalHead': lambda dtype: (heads.LocalHead(p, 8, dtype), (strips,)),
          'MLP': lambda dtype: (heads.MLP(p, dtype), (x,)),
          'SPSM': lambda dtype: (heads.SPSM(p, dtype), (x,)),
          'SPFM': lambda dtype: (heads.SPFM(p, 'add', dtype), (x, y)),
          'SPFM.pairwise': lambda dtype: (heads.SPFM(p, 'concat', dtype), (x, y)),
          'SAM': lambda dtype: (heads.SAM(p, 8, dtype), (x, strips)),
          'SDM': lambda dtype: (heads.SDM(p, 0.5, p // 2, dtype), (x, False)),
          'IdClassifier': lambda dtype: (heads.IdClassifier(300, 8, dtype), (x,))}[name]
  method = 'pairwise' if name == 'SPFM.pairwise' else '__call__'
  module, inputs = make(jnp.float32)
  variables = module.init(jax.random.key(0), *inputs, method=method)
  outputs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    module, _ = make(dtype)
    outputs[dtype] = jax.tree.leaves(module.apply(variables, *inputs, method=method))
  for half, full in zip(outputs[jnp.bfloat16], outputs[jnp.float32]):
    assert half.dtype == (jnp.bfloat16 if name == 'SPFM.pairwise' else jnp.float32)
    error = np.linalg.norm(np.float32(half) - full, axis=-1) / np.linalg.norm(full, axis=-1)
    print(f'{name}: relative error at most {error.max():.2e}')
    assert 0 < error.max() < 1e-2  # bfloat16 rounds (not 0), and stays within 1%
