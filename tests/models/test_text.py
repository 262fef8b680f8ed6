"""Our bi-GRU against torch.nn.GRU(bidirectional=True) with copied weights, padding included: its
output and, through the hand-written backward pass, its gradients, whatever the loop's unroll."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dssl_jax.models.text import BiGRU, TextEncoder
from tests.helpers import reference

torch = reference('torch')



def _torch_params(gru) -> dict:
  """torch's (r, z, n) blocks map one to one: kernels transposed, directions stacked."""
  t = lambda name: getattr(gru, name).detach().numpy()
  both = lambda name: np.stack([t(name + '_l0'), t(name + '_l0_reverse')])
  return {'params': {'input_kernel': both('weight_ih').transpose(0, 2, 1),
                     'hidden_kernel': both('weight_hh').transpose(0, 2, 1),
                     'input_bias': both('bias_ih'), 'hidden_bias': both('bias_hh')}}


def _padded_batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 9, 12)).astype(np.float32)
  lengths = np.array([9, 4, 1, 7, 2])
  mask = np.arange(9) < lengths[:, None]
  x_padded = np.where(mask[..., None], x, 123.0).astype(np.float32)  # garbage in the padding
  return x, x_padded, lengths, mask


@pytest.mark.parametrize('unroll', [1, 4, 8])  # 4: 9 steps leave a remainder
def test_matches_torch_gru_and_its_gradients_on_padded_sequences(unroll):
  torch.manual_seed(0)
  gru = torch.nn.GRU(12, 16, batch_first=True, bidirectional=True)
  x, x_padded, lengths, mask = _padded_batch()
  cotangent = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
  x_t = torch.from_numpy(x).requires_grad_()
  packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.from_numpy(lengths),
                                                   batch_first=True, enforce_sorted=False)
  _, h_n = gru(packed)
  out_t = torch.cat([h_n[0], h_n[1]], dim=-1)
  (out_t * torch.from_numpy(cotangent)).sum().backward()

  model = BiGRU(16, unroll=unroll)
  loss = lambda variables, x: (model.apply(variables, x, mask) * cotangent).sum()
  out = model.apply(_torch_params(gru), x_padded, mask)
  grads, d_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(_torch_params(gru), x_padded)
  print(f'unroll {unroll}: max abs error {np.abs(out - out_t.detach().numpy()).max():.2e}')
  np.testing.assert_allclose(out, out_t.detach().numpy(), atol=1e-5)
  want = _torch_params(type('Grads', (), {name: p.grad for name, p in gru.named_parameters()}))
  for name, value in grads['params'].items():
    np.testing.assert_allclose(value, want['params'][name], atol=1e-5, err_msg=name)
  np.testing.assert_allclose(np.where(mask[..., None], d_x, 0), x_t.grad.numpy(), atol=1e-5)
  np.testing.assert_array_equal(np.where(mask[..., None], 0, d_x), 0)  # padding gets nothing


def test_bfloat16_matmuls_keep_float32_states_and_gradients():
  _, x_padded, _, mask = _padded_batch()
  variables = BiGRU(16).init(jax.random.key(0), x_padded, mask)
  def value_and_grads(dtype):
    model = BiGRU(16, dtype)
    return jax.jit(jax.value_and_grad(lambda v: model.apply(v, x_padded, mask).sum()))(variables)
  hlo = jax.jit(BiGRU(16, jnp.bfloat16).apply).lower(variables, x_padded, mask).as_text()
  assert 'bf16' in hlo
  for half, full in zip(jax.tree.leaves(value_and_grads(jnp.bfloat16)),
                        jax.tree.leaves(value_and_grads(jnp.float32))):
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05)


def test_padding_steps_do_not_change_the_result_and_empty_is_zero():
  model = TextEncoder(vocab_size=30, word_dim=8, hidden=6)
  tokens = np.array([[5, 6, 7, 0, 0]])
  variables = model.init(jax.random.key(0), tokens, tokens != 0)
  short = model.apply(variables, tokens[:, :3], tokens[:, :3] != 0)
  long = model.apply(variables, tokens, tokens != 0)
  np.testing.assert_allclose(short, long, atol=1e-6)
  phrases = np.array([[[5, 6, 0], [0, 0, 0]]])  # [B, n, words]: the second phrase is padding
  out = model.apply(variables, phrases, phrases != 0)
  assert out.shape == (1, 2, 12)
  np.testing.assert_array_equal(out[0, 1], 0)
  np.testing.assert_allclose(out[0, 0], model.apply(variables, phrases[:, 0, :2],
                                                    phrases[:, 0, :2] != 0)[0], atol=1e-6)
