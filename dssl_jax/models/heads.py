"""The paper's heads (section 3): feature branches, SDM, SPSM, SPFM, PDM, SAM and the ID
classifier. The cross-modal attention CA, a similarity, is dssl_jax/similarity.py's.

Readings of what the paper leaves open (docs/design.md): the k strips share one GN-FC-ReLU-FC
head, as the phrases do; one SDM serves T_G and the phrases; the MLPs are p -> 2p -> p; SDM's
auto-encoder is p -> p/2 -> p.

`dtype` is each head's compute dtype (config.model.dtype): its matmuls run in it, GN's statistics
and the parameters stay float32, and every head returns float32 features, except SPFM's per-pair
output, which stays in the compute dtype (it is B x B x p).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dssl_jax.errors import UserError


class GroupNorm(nn.Module):
  """GN over the feature axis of vectors of any leading shape (torch's eps)."""
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, dtype=self.dtype)(
        x.reshape(-1, x.shape[-1])).reshape(x.shape)


class GlobalHead(nn.Module):
  """GN -> FC: V_G from the pooled feature map, T_G from the sentence state."""
  features: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, dtype=self.dtype)(GroupNorm(self.groups, self.dtype)(x))
    return x.astype(jnp.float32)


class LocalHead(nn.Module):
  """GN -> FC -> ReLU -> FC, on each strip (M_V) or phrase (M_T)."""
  features: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = GroupNorm(self.groups, self.dtype)(x)
    x = nn.relu(nn.Dense(self.features, dtype=self.dtype, name='hidden')(x))
    return nn.Dense(self.features, dtype=self.dtype, name='out')(x).astype(jnp.float32)


class MLP(nn.Module):
  """p -> 2p -> p, ReLU between, tanh at the end: SPSM's branches, SPFM and PDM."""
  features: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.hidden = nn.Dense(2 * self.features, dtype=self.dtype)
    self.out = nn.Dense(self.features, dtype=self.dtype)

  def __call__(self, x):
    return self.from_hidden(self.hidden(x)).astype(jnp.float32)

  def from_hidden(self, pre_activation):
    """The MLP after its first (affine) layer: what cannot be shared between pairs."""
    return jnp.tanh(self.out(nn.relu(pre_activation)))


def strip_pool(feature_map: jax.Array, k: int) -> jax.Array:
  """[B, H, W, C] -> [B, k, C]: average over k horizontal bands (torch AdaptiveAvgPool2d((k, 1)))."""
  height = feature_map.shape[1]
  bands = [feature_map[:, (i * height) // k:-(-(i + 1) * height // k)].mean(axis=(1, 2))
           for i in range(k)]
  return jnp.stack(bands, axis=1)


class SPSM(nn.Module):
  """Surroundings-person separation (eq. 4): V_P, V_S = two parallel MLPs of V_G."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, v_g):
    return (MLP(self.features, self.dtype, name='person')(v_g),
            MLP(self.features, self.dtype, name='surroundings')(v_g))


class SPFM(nn.Module):
  """Surroundings-person fusion (eq. 7): V_R = MLP(T_P + V_S) or MLP([T_P, V_S]) (Table 3)."""
  features: int
  fusion: str = 'add'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.fusion not in ('add', 'concat'):
      raise UserError(f"config.model.spfm_fusion must be 'add' or 'concat', got {self.fusion!r}")
    self.mlp = MLP(self.features, self.dtype)

  def fuse(self, t_p, v_s):
    return t_p + v_s if self.fusion == 'add' else jnp.concatenate([t_p, v_s], axis=-1)

  def __call__(self, t_p, v_s):
    return self.mlp(self.fuse(t_p, v_s))

  def pairwise(self, t_p, v_s):
    """V_R[i, j] = SPFM(T_P^j, V_S^i) for every surroundings i and text j: [B_s, B_t, p].

    Both fusions are linear, so the first layer splits: W fuse(t, v) + b = (W fuse(t, 0) + b) +
    (W fuse(0, v) + b) - b. It runs once per text and once per surroundings; only the second layer
    runs per pair (Align II in the gallery's surroundings, see losses.align2_similarity), in the
    compute dtype.
    """
    text_only = self.fuse(t_p, jnp.zeros_like(t_p))
    from_text = self.mlp.hidden(text_only)
    from_surroundings = self.mlp.hidden(self.fuse(jnp.zeros_like(v_s), v_s))
    bias = self.mlp.hidden(jnp.zeros_like(text_only[:1]))
    return self.mlp.from_hidden(from_surroundings[:, None] + (from_text - bias)[None])


class SAM(nn.Module):
  """Salient attention (eq. 11): a gate from V_P scales every strip of M_V."""
  features: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, v_p, m_v):
    hidden = nn.relu(nn.Dense(self.features, dtype=self.dtype, name='W1')(v_p))
    hidden = GroupNorm(self.groups, self.dtype)(hidden)
    gate = jax.nn.sigmoid(nn.Dense(self.features, dtype=self.dtype, name='W2')(hidden))
    return gate.astype(jnp.float32)[..., None, :] * m_v


def zero_entries(x: jax.Array, ratio: float, rng: jax.Array) -> jax.Array:
  """Z(x, r) of eq. 1: sets exactly round(r * p) random entries of each vector to zero."""
  count = round(ratio * x.shape[-1])
  if count == 0:
    return x
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng, x.shape), axis=-1), axis=-1)
  return jnp.where(rank < count, 0, x)


class SDM(nn.Module):
  """Signal denoising (eq. 1): y = Dec(Enc(Z(x, r))); zeroing only at train time. The code's width
  (`hidden`) is not given by the paper (config.model.sdm_hidden)."""
  features: int
  zero_ratio: float
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if train:
      x = zero_entries(x, self.zero_ratio, self.make_rng('sdm'))
    code = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='encoder')(x))
    return nn.Dense(self.features, dtype=self.dtype, name='decoder')(code).astype(jnp.float32)


class IdClassifier(nn.Module):
  """eq. 16: logits = W_id GN(X), one bias-free W_id (Q x p) shared by every feature."""
  num_classes: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = GroupNorm(self.groups, self.dtype)(x)
    return nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name='W_id')(x).astype(
        jnp.float32)
