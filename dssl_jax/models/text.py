"""Word embeddings and one bi-GRU, shared by a sentence and its phrases (paper 3.1.1).

The output is the last forward and the last backward hidden state, concatenated (p/2 each).
Padding (at the end of a sequence) never changes the result: a padded step keeps the state, so the
forward direction ends at the last word and the backward one starts there, as with PyTorch's packed
sequences.

The recurrence is the step's only sequential work, so it is written for few, large kernels: the
input projections of both directions are one matmul outside the loop, both directions advance in
one loop (the backward one over a time-reversed copy), unrolled `unroll` steps per iteration, and
its gradient is written by hand (`recurrence`): the forward loop keeps only the states, the
backward loop runs one matmul and two elementwise fusions a step. This form also ran fastest on
XLA:CPU, ahead of one loop per direction (docs/benchmarks.md, "Fewer, larger kernels").
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def _gates(gates_in, gates_hidden):
  """torch.nn.GRU's r, z, n from the input and hidden projections [..., 3H] (gate order r, z, n)."""
  gi_r, gi_z, gi_n = jnp.split(gates_in, 3, axis=-1)
  gh_r, gh_z, gh_n = jnp.split(gates_hidden, 3, axis=-1)
  r, z = jax.nn.sigmoid(gi_r + gh_r), jax.nn.sigmoid(gi_z + gh_z)
  return r, z, jnp.tanh(gi_n + r * gh_n)


def _forward(gates_in, mask, w_hidden, b_hidden, unroll):
  def step(h, inputs):
    gi, m = inputs
    gh = jnp.einsum('dnh,dhk->dnk', h.astype(w_hidden.dtype), w_hidden,
                    preferred_element_type=jnp.float32) + b_hidden[:, None]
    r, z, n = _gates(gi, gh)
    return jnp.where(m, (1 - z) * n + z * h, h), h
  h0 = jnp.zeros(gates_in.shape[1:-1] + (w_hidden.shape[1],), jnp.float32)
  return jax.lax.scan(step, h0, (gates_in, mask), unroll=unroll)  # (h_T, states entering)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def recurrence(gates_in, mask, w_hidden, b_hidden, unroll: int = 1):
  """The GRU over time-major inputs, D directions at once, each already in its reading order.

  gates_in [T, D, N, 3H] (input projections with their bias), mask [T, D, N, 1] (False: keep the
  state), w_hidden [D, H, 3H] (the matmuls' dtype), b_hidden [D, 3H] -> the last state [D, N, H].
  """
  return _forward(gates_in, mask, w_hidden, b_hidden, unroll)[0]


def _recurrence_fwd(gates_in, mask, w_hidden, b_hidden, unroll):
  h_last, states = _forward(gates_in, mask, w_hidden, b_hidden, unroll)
  return h_last, (gates_in, mask, w_hidden, b_hidden, states)


def _recurrence_bwd(unroll, residuals, g):
  """Backpropagation through time. Every gate is known from the forward states, so all that does
  not depend on dh (the hidden projections, and each gate pre-activation's derivative per unit of
  dh) is computed for every step before the loop; a step of the loop is then one matmul and two
  elementwise fusions, and the weights' gradients are one matmul after it."""
  gates_in, mask, w_hidden, b_hidden, states = residuals
  gates_hidden = jnp.stack([  # [T, D, N, 3H]; 2-D matmuls: XLA:CPU has no batched bf16 -> f32 here
      jnp.matmul(states[:, d].astype(w_hidden.dtype), w_hidden[d],
                 preferred_element_type=jnp.float32) + b_hidden[d]
      for d in range(len(w_hidden))], axis=1)
  r, z, n = _gates(gates_in, gates_hidden)
  d_n = (1 - z) * (1 - n * n)  # d(n's pre-activation) / dh, and so on
  d_r, d_z = d_n * gates_hidden[..., 2 * n.shape[-1]:] * r * (1 - r), (states - n) * z * (1 - z)
  per_dh_hidden = jnp.concatenate([d_r, d_z, d_n * r], axis=-1)  # d(gates_hidden) / dh
  times_dh = lambda dh, per_dh: (  # [..., H] times each H-block of [..., 3H]
      dh[..., None, :] * per_dh.reshape(*dh.shape[:-1], 3, -1)).reshape(per_dh.shape)

  def step(dh, inputs):
    per_dh, z, m = inputs
    dh_step = jnp.where(m, dh, 0)  # a padded step passed h through: dh goes straight to h
    d_hidden = times_dh(dh_step, per_dh)
    return dh - dh_step * (1 - z) + jnp.einsum(
        'dnk,dhk->dnh', d_hidden.astype(w_hidden.dtype), w_hidden,
        preferred_element_type=jnp.float32), dh_step

  _, dh_steps = jax.lax.scan(step, g, (per_dh_hidden, z, mask), reverse=True, unroll=unroll)
  d_gates_in = times_dh(dh_steps, jnp.concatenate([d_r, d_z, d_n], axis=-1))
  d_hidden = times_dh(dh_steps, per_dh_hidden)
  d_w = jnp.einsum('tdnh,tdnk->dhk', states.astype(w_hidden.dtype),
                   d_hidden.astype(w_hidden.dtype), preferred_element_type=jnp.float32)
  return d_gates_in, None, d_w.astype(w_hidden.dtype), d_hidden.sum((0, 2))


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class BiGRU(nn.Module):
  """torch.nn.GRU(bidirectional=True) equations and gate order (r, z, n); the parameters' leading
  axis is the direction (forward, backward).

  `dtype` is the matmuls' (bfloat16 for mixed precision); gates and state stay float32. `unroll`:
  the loop's steps per iteration (8: docs/benchmarks.md, "Fewer, larger kernels").
  """
  hidden: int
  dtype: jnp.dtype = jnp.float32
  unroll: int = 8

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [N, T, D], mask [N, T] -> [N, 2 * hidden]; an all-padding row gives zeros."""
    h_size = self.hidden
    init = _torch_uniform(h_size**-0.5)
    w_input = self.param('input_kernel', init, (2, x.shape[-1], 3 * h_size))
    b_input = self.param('input_bias', init, (2, 3 * h_size))
    w_hidden = self.param('hidden_kernel', init, (2, h_size, 3 * h_size)).astype(self.dtype)
    b_hidden = self.param('hidden_bias', init, (2, 3 * h_size))

    count, steps = mask.shape
    rows = x.transpose(1, 0, 2).reshape(-1, x.shape[-1]).astype(self.dtype)  # time-major
    both = jnp.concatenate([w_input[0], w_input[1]], axis=-1).astype(self.dtype)  # one matmul
    gates_in = jnp.matmul(rows, both, preferred_element_type=jnp.float32).reshape(
        steps, count, 2, 3 * h_size).transpose(0, 2, 1, 3) + b_input[:, None]  # [T, 2, N, 3H]
    # Each direction in its reading order: the backward one reads a time-reversed copy.
    gates_in = jnp.stack([gates_in[:, 0], gates_in[::-1, 1]], axis=1)
    mask = jnp.stack([mask.T, mask.T[::-1]], axis=1)[..., None]  # [T, 2, N, 1]
    h = recurrence(gates_in, mask, w_hidden, b_hidden, min(self.unroll, steps))
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
