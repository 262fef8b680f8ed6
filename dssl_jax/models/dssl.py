"""The DSSL model (paper Fig. 3): image and text encoders and every feature the losses name.

Features: V_G, M_V, V_P, V_S, V_L (image); T_G, M_T, T_P, T_L (text); V_R = SPFM(T_P, V_S) and
T_R = PDM(V_P) (pair), V_R_pairs (every text in every image's surroundings); `logits` holds the
shared ID classifier's output on each ID feature. A switch that removes a module makes its output
the identity (no SPSM: V_P = V_G; no SDM: T_P = T_G, T_L = M_T; no SAM: V_L = M_V), and the
features only it produces (V_S, V_R, V_R_pairs) are absent.

Mixed precision (config.model.dtype = 'bfloat16'): the backbone and the GRU, where nearly all the
FLOPs are, compute in bfloat16; parameters, BN statistics, the heads, every feature and the losses
stay float32.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dssl_jax.errors import UserError
from dssl_jax.models import heads
from dssl_jax.models.resnet import ResNet
from dssl_jax.models.text import TextEncoder


@dataclasses.dataclass(frozen=True)
class Switches:
  """Which modules exist; `baseline` (Tables 1-2, first row) removes every one of them."""
  separation: bool  # SPSM + SPFM
  sam: bool
  sdm: bool
  pdm: bool

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict) -> 'Switches':
    on = not model.baseline
    return cls(separation=on and model.spsm_spfm, sam=on and model.sam, sdm=on and model.sdm,
               pdm=on)


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(model: ml_collections.ConfigDict):
  if model.dtype not in COMPUTE_DTYPES:
    raise UserError(f'config.model.dtype must be one of {", ".join(COMPUTE_DTYPES)}, '
                    f'got {model.dtype!r}')
  return COMPUTE_DTYPES[model.dtype]


class DSSL(nn.Module):
  config: ml_collections.FrozenConfigDict  # config.model
  vocab_size: int
  num_classes: int

  def setup(self):
    c = self.config
    p, groups = c.embed_dim, c.gn_groups
    self.switches = Switches.from_config(c)
    dtype = compute_dtype(c)
    self.backbone = ResNet(c.depth, c.width, dtype)
    self.image_global = heads.GlobalHead(p, groups)
    self.image_local = heads.LocalHead(p, groups)
    self.text = TextEncoder(self.vocab_size, c.word_dim, p // 2, dtype)
    self.text_global = heads.GlobalHead(p, groups)
    self.text_local = heads.LocalHead(p, groups)
    if self.switches.separation:
      self.spsm = heads.SPSM(p)
      self.spfm = heads.SPFM(p, c.spfm_fusion)
    if self.switches.pdm:
      self.pdm = heads.MLP(p)
    if self.switches.sam:
      self.sam = heads.SAM(p, groups)
    if self.switches.sdm:
      self.sdm = heads.SDM(p, c.sdm_zero_ratio, c.sdm_hidden or p // 2)
    self.id_classifier = heads.IdClassifier(self.num_classes, groups)

  def encode_image(self, images: jax.Array, train: bool = False,
                   frozen_backbone: bool = False) -> dict:
    """images [B, H, W, 3] -> V_G, M_V, V_P, V_L (and V_S). A frozen backbone (stage 1) keeps its
    BN statistics and passes no gradient, so XLA computes no backward pass for it."""
    feature_map = self.backbone(images, train=train and not frozen_backbone).astype(jnp.float32)
    if frozen_backbone:
      feature_map = jax.lax.stop_gradient(feature_map)
    f = {'V_G': self.image_global(feature_map.mean(axis=(1, 2))),
         'M_V': self.image_local(heads.strip_pool(feature_map, self.config.num_strips))}
    f['V_P'] = f['V_G']
    if self.switches.separation:
      f['V_P'], f['V_S'] = self.spsm(f['V_G'])
    f['V_L'] = self.sam(f['V_P'], f['M_V']) if self.switches.sam else f['M_V']
    return f

  def encode_text(self, tokens, token_mask, phrases, phrase_mask, train: bool = False) -> dict:
    """tokens [B, L], phrases [B, n, l] with masks -> T_G, M_T, T_P, T_L, phrase_valid [B, n].

    SDM (eq. 1) zeroes its input at train time only. config.sdm_zeroing 'features' (eq. 1 as
    printed): every training use of T_P and T_L (aligns, ID) sees the zeroed input, the test the
    clean one. 'loss': only eq. 2's reconstruction loss sees it, as a denoising autoencoder is
    trained, and the aligns train on the T_P and T_L the test uses.
    """
    f = {'T_G': self.text_global(self.text(tokens, token_mask)),
         'M_T': self.text_local(self.text(phrases, phrase_mask)),
         'phrase_valid': phrase_mask.any(axis=-1)}
    if self.switches.sdm:
      zeroing = self.config.sdm_zeroing
      if zeroing not in ('features', 'loss'):
        raise UserError(f"config.model.sdm_zeroing must be 'features' or 'loss', got {zeroing!r}")
      noisy = train and zeroing == 'features'
      f['T_P'], f['T_L'] = self.sdm(f['T_G'], noisy), self.sdm(f['M_T'], noisy)
      if train and zeroing == 'loss':  # zeroed copies for eq. 2 only
        f['T_P_zeroed'], f['T_L_zeroed'] = self.sdm(f['T_G'], True), self.sdm(f['M_T'], True)
    else:
      f['T_P'], f['T_L'] = f['T_G'], f['M_T']
    return f

  def __call__(self, batch: dict, train: bool = True, frozen_backbone: bool = False) -> dict:
    """Every feature of a batch of (image, caption) pairs, and the ID logits of each ID feature.

    V_R_pairs[i, j] = SPFM(T_P^j, V_S^i) places text j in image i's surroundings (Align II); under
    jit it costs nothing when no loss reads it.
    """
    f = self.encode_image(batch['image'], train, frozen_backbone)
    f |= self.encode_text(batch['tokens'], batch['token_mask'], batch['phrases'],
                          batch['phrase_mask'], train)
    if self.switches.separation:
      f['V_R'] = self.spfm(f['T_P'], f['V_S'])
      f['V_R_pairs'] = self.spfm.pairwise(f['T_P'], f['V_S'])
    if self.switches.pdm:
      f['T_R'] = self.pdm(f['V_P'])
    f['logits'] = {name: self.id_classifier(f[name]) for name in id_features(self.switches)}
    return f


def id_features(switches: Switches, stage: int = 2) -> tuple[str, ...]:
  """eq. 17 (stage 1) and eq. 19 (stage 2), without features a switch made identical to another."""
  if stage == 1:
    return ('V_G', 'T_G')
  extra = ((('V_P', 'V_R') if switches.separation else ()) + (('T_P',) if switches.sdm else ())
           + (('T_R',) if switches.pdm else ()))
  return ('V_G', 'T_G') + extra


def init_variables(model: DSSL, rng: jax.Array, image_size, max_words: int, max_phrases: int,
                   max_phrase_words: int) -> dict:
  """Variables for a batch of 1 of the given input shapes (jit: eager init is ~10x slower)."""
  batch = {'image': jnp.zeros((1, *image_size, 3)),
           'tokens': jnp.ones((1, max_words), jnp.int32),
           'token_mask': jnp.ones((1, max_words), bool),
           'phrases': jnp.ones((1, max_phrases, max_phrase_words), jnp.int32),
           'phrase_mask': jnp.ones((1, max_phrases, max_phrase_words), bool)}
  params_rng, sdm_rng = jax.random.split(rng)
  return jax.jit(model.init, static_argnames='train')({'params': params_rng, 'sdm': sdm_rng},
                                                      batch, train=False)
