"""Word embeddings and one bi-GRU, shared by a sentence and its phrases (paper 3.1.1).

The output is the last forward and the last backward hidden state, concatenated (p/2 each).
Padding (at the end of a sequence) never changes the result: a padded step keeps the state, so the
forward direction ends at the last word and the backward one starts there, as with PyTorch's packed
sequences. Each direction is one scan of 2-D matmuls over time-major rows (the backward one
scanning in reverse), its input projection one matmul outside the loop: on XLA:CPU this ran
faster than both directions in one scan of batched [2, N, H] matmuls over a reversed copy
(docs/benchmarks.md, "Figures behind code comments").
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class BiGRU(nn.Module):
  """torch.nn.GRU(bidirectional=True) equations and gate order (r, z, n); the parameters' leading
  axis is the direction (forward, backward).

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

    count, steps = mask.shape
    rows = x.transpose(1, 0, 2).reshape(-1, x.shape[-1]).astype(self.dtype)  # time-major
    h0 = jnp.zeros((count, h_size), jnp.float32)
    states = []
    for direction in range(2):
      gates_in = jnp.matmul(rows, w_input[direction].astype(self.dtype),
                            preferred_element_type=jnp.float32).reshape(steps, count, -1)
      gates_in += b_input[direction]  # [T, N, 3H]
      w_h, b_h = w_hidden[direction].astype(self.dtype), b_hidden[direction]

      def step(h, inputs):  # traced by the scan below, in this same iteration
        gi, m = inputs
        gh = jnp.matmul(h.astype(self.dtype), w_h, preferred_element_type=jnp.float32) + b_h
        r = jax.nn.sigmoid(gi[..., :h_size] + gh[..., :h_size])
        z = jax.nn.sigmoid(gi[..., h_size:2 * h_size] + gh[..., h_size:2 * h_size])
        n = jnp.tanh(gi[..., 2 * h_size:] + r * gh[..., 2 * h_size:])
        return jnp.where(m, (1 - z) * n + z * h, h), None

      h, _ = jax.lax.scan(step, h0, (gates_in, mask.T[..., None]), reverse=direction == 1)
      states.append(h)
    return jnp.concatenate(states, axis=-1)


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
