"""Our bi-GRU against torch.nn.GRU(bidirectional=True) with copied weights, padding included."""
import jax
import numpy as np

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


def test_matches_torch_gru_on_padded_sequences():
  torch.manual_seed(0)
  gru = torch.nn.GRU(12, 16, batch_first=True, bidirectional=True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 9, 12)).astype(np.float32)
  lengths = np.array([9, 4, 1, 7, 2])
  mask = np.arange(9) < lengths[:, None]
  x_padded = np.where(mask[..., None], x, 123.0).astype(np.float32)  # garbage in the padding
  packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                                   batch_first=True, enforce_sorted=False)
  with torch.no_grad():
    _, h_n = gru(packed)
  want = torch.cat([h_n[0], h_n[1]], dim=-1).numpy()
  got = np.asarray(BiGRU(16).apply(_torch_params(gru), x_padded, mask))
  print(f'bi-GRU max abs error {np.abs(got - want).max():.2e}')
  np.testing.assert_allclose(got, want, atol=1e-5)


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
