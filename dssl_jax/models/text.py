"""Word embeddings and one bi-GRU, shared by a sentence and its phrases (paper 3.1.1).

The output is the last forward and the last backward hidden state, concatenated (p/2 each).
Padding (at the end of a sequence) never changes the result: a padded step keeps the state, so the
forward direction ends at the last word and the backward one starts there, as with PyTorch's packed
sequences. Both directions run in one scan; the input projections are one matmul outside it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class BiGRU(nn.Module):
  """torch.nn.GRU(bidirectional=True) equations and gate order (r, z, n); direction axis first.

  `dtype` is the matmuls' (bfloat16 for mixed precision); gates and state stay float32.
  """
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [N, T, D], mask [N, T] -> [N, 2 * hidden]; an all-padding row gives zeros."""
    h_size = self.hidden
    init = _torch_uniform(h_size**-0.5)
    w_input = self.param('input_kernel', init, (2, x.shape[-1], 3 * h_size))
    b_input = self.param('input_bias', init, (2, 3 * h_size))
    w_hidden = self.param('hidden_kernel', init, (2, h_size, 3 * h_size))
    b_hidden = self.param('hidden_bias', init, (2, 3 * h_size))

    # Both directions' input projections as one 2-D matmul over time-major rows (XLA:CPU ran the
    # equivalent 3-D einsum ~20% slower), then the backward direction reads the sequence reversed.
    steps = x.shape[1]
    rows = x.transpose(1, 0, 2).reshape(-1, x.shape[-1]).astype(self.dtype)
    gates_in = jnp.matmul(rows, jnp.concatenate([w_input[0], w_input[1]], axis=-1).astype(
        self.dtype), preferred_element_type=jnp.float32).reshape(steps, -1, 2, 3 * h_size)
    gates_in += b_input  # [T, N, 2, 3H]
    gates_in = jnp.stack([gates_in[:, :, 0], gates_in[::-1, :, 1]], axis=1)  # [T, 2, N, 3H]
    step_mask = jnp.stack([mask.T, mask.T[::-1]], axis=1)[..., None]  # [T, 2, N, 1]

    w_hidden = w_hidden.astype(self.dtype)

    def step(h, inputs):
      gi, m = inputs
      gh = jnp.einsum('enh,ehg->eng', h.astype(self.dtype), w_hidden,
                      preferred_element_type=jnp.float32) + b_hidden[:, None]
      r = jax.nn.sigmoid(gi[..., :h_size] + gh[..., :h_size])
      z = jax.nn.sigmoid(gi[..., h_size:2 * h_size] + gh[..., h_size:2 * h_size])
      n = jnp.tanh(gi[..., 2 * h_size:] + r * gh[..., 2 * h_size:])
      return jnp.where(m, (1 - z) * n + z * h, h), None

    h0 = jnp.zeros((2, x.shape[0], h_size), jnp.float32)
    h, _ = jax.lax.scan(step, h0, (gates_in, step_mask))
    return jnp.concatenate([h[0], h[1]], axis=-1)


class TextEncoder(nn.Module):
  """Token ids [..., T] with mask -> [..., 2 * hidden]; any leading shape (sentences, phrases)."""
  vocab_size: int
  word_dim: int
  hidden: int
  dtype: jnp.dtype = jnp.float32  # the GRU's matmuls

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.word_dim,
                          embedding_init=nn.initializers.normal(1.0))
    self.gru = BiGRU(self.hidden, self.dtype)

  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    lead, steps = tokens.shape[:-1], tokens.shape[-1]
    words = self.embed(tokens.reshape(-1, steps))
    return self.gru(words, mask.reshape(-1, steps)).reshape(*lead, 2 * self.hidden)
