"""The DSSL model (paper Fig. 3): image and text encoders and every feature the losses name.

Features: V_G, M_V, V_P, V_S, V_L (image); T_G, M_T, T_P, T_L (text); V_R = SPFM(T_P, V_S) and
T_R = PDM(V_P) (pair), V_R_pairs (every text in every image's surroundings); `logits` holds the
shared ID classifier's output on each ID feature. A switch that removes a module makes its output
the identity (no SPSM: V_P = V_G; no SDM: T_P = T_G, T_L = M_T; no SAM: V_L = M_V), and the
features only it produces (V_S; V_R, V_R_pairs without SPFM; T_R without PDM) are absent, with
their ID terms.

The encoders (config.model.backbone): ImageNet ResNet + bi-GRU as in the paper, or CLIP's ViT and
text Transformer, whose class token and end-of-text token stand for the pooled feature map and
the sentence state, their patch grid for the feature map's strips; everything after the encoders
is the same.

Mixed precision (config.model.dtype = 'bfloat16'): the encoders and the heads' matmuls (SPFM's
per-pair layer and the ID classifier's the largest) compute in bfloat16; parameters, BN and GN
statistics, every feature but the per-pair V_R_pairs, the CA similarities (a few FLOPs, and eq.
12's threshold would move with bfloat16's rounding) and the losses stay float32.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import clip
from dssl_jax.models import heads
from dssl_jax.models.resnet import ResNet
from dssl_jax.models.text import TextEncoder


@dataclasses.dataclass(frozen=True)
class Switches:
  """Which modules exist; `baseline` (Tables 1-2, first row) removes every one of them.

  SPFM serves Align II alone and PDM Align III alone: Table 1's rows without those aligns turn
  them off (model.spfm, model.pdm), so that no ID(V_R) or ID(T_R) term trains a module no
  alignment uses. SPFM needs SPSM's V_S: model.spsm_spfm (Table 2) removes both.
  """
  separation: bool  # SPSM (V_P, V_S and MEC)
  spfm: bool
  sam: bool
  sdm: bool
  pdm: bool

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict) -> 'Switches':
    on = not model.baseline
    separation = on and model.spsm_spfm
    return cls(separation=separation, spfm=separation and model.spfm, sam=on and model.sam,
               sdm=on and model.sdm, pdm=on and model.pdm)


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
    model_config = self.config
    p, groups = model_config.embed_dim, model_config.gn_groups
    self.switches = Switches.from_config(model_config)
    dtype = compute_dtype(model_config)
    if model_config.backbone == 'clip':
      clip_config = model_config.clip
      if clip_config.phrases not in ('span', 'separate'):
        raise UserError(f"config.model.clip.phrases must be 'span' or 'separate', got "
                        f"{clip_config.phrases!r}")
      self.backbone, self.text = clip.encoders(clip_config, dtype)
    elif model_config.backbone == 'resnet':
      self.backbone = ResNet(model_config.depth, model_config.width, dtype,
                             model_config.zero_init_residual)
      self.text = TextEncoder(self.vocab_size, model_config.word_dim, p // 2, dtype)
    else:
      raise UserError("config.model.backbone must be 'resnet' or 'clip', got "
                      f'{model_config.backbone!r}')
    self.image_global = heads.GlobalHead(p, groups, dtype)
    self.image_local = heads.LocalHead(p, groups, dtype)
    self.text_global = heads.GlobalHead(p, groups, dtype)
    self.text_local = heads.LocalHead(p, groups, dtype)
    if self.switches.separation:
      self.spsm = heads.SPSM(p, dtype)
    if self.switches.spfm:
      self.spfm = heads.SPFM(p, model_config.spfm_fusion, dtype)
    if self.switches.pdm:
      self.pdm = heads.MLP(p, dtype)
    if self.switches.sam:
      self.sam = heads.SAM(p, groups, dtype)
    if self.switches.sdm:
      self.sdm = heads.SDM(p, model_config.sdm_zero_ratio, model_config.sdm_hidden or p // 2,
                           dtype)
    self.id_classifier = heads.IdClassifier(self.num_classes, groups, dtype)

  def encode_image(self, images: jax.Array, train: bool = False,
                   frozen_backbone: bool = False) -> dict:
    """images [B, H, W, 3] -> V_G, M_V, V_P, V_L (and V_S). A frozen backbone (stage 1) keeps its
    BN statistics and passes no gradient, so XLA computes no backward pass for it."""
    if self.config.backbone == 'clip':
      pooled, feature_map = self.backbone(images)
    else:
      feature_map = self.backbone(images, train=train and not frozen_backbone)
      pooled = feature_map.mean(axis=(1, 2))
    pooled, feature_map = pooled.astype(jnp.float32), feature_map.astype(jnp.float32)
    if frozen_backbone:
      pooled, feature_map = jax.lax.stop_gradient((pooled, feature_map))
    f = {'V_G': self.image_global(pooled),
         'M_V': self.image_local(heads.strip_pool(feature_map, self.config.num_strips))}
    f['V_P'] = f['V_G']
    if self.switches.separation:
      f['V_P'], f['V_S'] = self.spsm(f['V_G'])
    f['V_L'] = self.sam(f['V_P'], f['M_V']) if self.switches.sam else f['M_V']
    return f

  def encode_text(self, tokens, token_mask, phrases, phrase_mask, train: bool = False,
                  frozen_backbone: bool = False) -> dict:
    """tokens [B, L], phrases [B, n, l] with masks -> T_G, M_T, T_P, T_L, phrase_valid [B, n].
    CLIP's text encoder is frozen with the backbone (stage 1); the bi-GRU trains from the start.

    SDM (eq. 1) zeroes its input at train time only. config.sdm_zeroing 'features' (eq. 1 as
    printed): every training use of T_P and T_L (aligns, ID) sees the zeroed input, the test the
    clean one. 'loss': only eq. 2's reconstruction loss sees it, as a denoising autoencoder is
    trained, and the aligns train on the T_P and T_L the test uses.
    """
    if self.config.backbone == 'clip':
      sentence, phrase_states = self._clip_text(tokens, phrases, phrase_mask)
      if frozen_backbone:
        sentence, phrase_states = jax.lax.stop_gradient((sentence, phrase_states))
    else:
      sentence, phrase_states = self.text(tokens, token_mask), self.text(phrases, phrase_mask)
    f = {'T_G': self.text_global(sentence), 'M_T': self.text_local(phrase_states),
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

  def zero_shot_image(self, images: jax.Array) -> jax.Array:
    """CLIP's own image feature, the projected class token (no DSSL head): zero-shot retrieval."""
    self._need_clip('zero_shot_image')
    return self.backbone(images)[0].astype(jnp.float32)

  def zero_shot_text(self, tokens: jax.Array) -> jax.Array:
    """CLIP's own sentence feature, the projected end-of-text token: zero-shot retrieval."""
    self._need_clip('zero_shot_text')
    return self.text(tokens)[0].astype(jnp.float32)

  def _need_clip(self, what: str):
    if self.config.backbone != 'clip':
      raise UserError(f'{what}: zero-shot retrieval (config.eval.zero_shot) needs '
                      f"config.model.backbone='clip', got {self.config.backbone!r}")

  def _clip_text(self, tokens, phrases, phrase_mask) -> tuple[jax.Array, jax.Array]:
    """Sentence feature [B, d] and phrase features [B, n, d]. 'span': phrase_mask [B, n, L] marks
    each phrase's tokens in the sentence, whose pass gives them (mean over the span); 'separate':
    phrases [B, n, l] are token rows of their own, one encoder pass each."""
    sentence, token_states = self.text(tokens)
    if self.config.clip.phrases == 'span':
      span = phrase_mask.astype(jnp.float32)
      sums = jnp.einsum('bnl,bld->bnd', span, token_states.astype(jnp.float32))
      return sentence, sums / jnp.maximum(span.sum(-1, keepdims=True), 1.0)
    b, n, length = phrases.shape
    phrase_states, _ = self.text(phrases.reshape(b * n, length))
    return sentence, phrase_states.reshape(b, n, -1)

  def __call__(self, batch: dict, train: bool = True, frozen_backbone: bool = False) -> dict:
    """Every feature of a batch of (image, caption) pairs, and the ID logits of each ID feature.

    V_R_pairs[i, j] = SPFM(T_P^j, V_S^i) places text j in image i's surroundings (Align II); under
    jit it costs nothing when no loss reads it.
    """
    f = self.encode_image(batch['image'], train, frozen_backbone)
    f |= self.encode_text(batch['tokens'], batch['token_mask'], batch['phrases'],
                          batch['phrase_mask'], train, frozen_backbone)
    if self.switches.spfm:
      f['V_R'] = self.spfm(f['T_P'], f['V_S'])
      f['V_R_pairs'] = self.spfm.pairwise(f['T_P'], f['V_S'])
    if self.switches.pdm:
      f['T_R'] = self.pdm(f['V_P'])
    names = id_features(self.switches)  # one matmul for every ID feature (eq. 16)
    f['logits'] = dict(zip(names, self.id_classifier(jnp.stack([f[name] for name in names]))))
    return f


def id_features(switches: Switches, stage: int = 2) -> tuple[str, ...]:
  """eq. 17 (stage 1) and eq. 19 (stage 2), without features a switch made identical to another."""
  if stage == 1:
    return ('V_G', 'T_G')
  extra = ((('V_P',) if switches.separation else ()) + (('V_R',) if switches.spfm else ())
           + (('T_P',) if switches.sdm else ()) + (('T_R',) if switches.pdm else ()))
  return ('V_G', 'T_G') + extra


def init_variables(model: DSSL, rng: jax.Array, config: ml_collections.ConfigDict) -> dict:
  """Variables for a batch of 1 of the config's input shapes (jit: eager init is much slower);
  'batch_stats' is always there."""
  d = config.data
  phrase_shape = (1, d.max_phrases, formats.phrase_length(config))
  batch = {'image': jnp.zeros((1, *d.image_size, 3)),
           'tokens': jnp.ones((1, d.max_words), jnp.int32),
           'token_mask': jnp.ones((1, d.max_words), bool),
           'phrases': jnp.ones(phrase_shape, jnp.int32),
           'phrase_mask': jnp.ones(phrase_shape, bool)}
  params_rng, sdm_rng = jax.random.split(rng)
  variables = jax.jit(model.init, static_argnames='train')({'params': params_rng, 'sdm': sdm_rng},
                                                           batch, train=False)
  return {'batch_stats': {}, **variables}  # CLIP has no BatchNorm: an empty collection
