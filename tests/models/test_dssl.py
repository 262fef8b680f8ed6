"""The forward pass returns every feature of the paper; a frozen backbone learns nothing."""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dssl_jax import losses
from dssl_jax.errors import UserError
from dssl_jax.models import dssl
from dssl_jax.data.formats import random_batch
from tests.helpers import init_model, lowered_for, tiny_model_config


def test_every_named_feature_with_its_shape():
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=3)
  model, variables = init_model(config)
  d = config.data
  f = jax.jit(model.apply, static_argnames='train')(variables, batch, train=False)
  p, k, n = config.model.embed_dim, config.model.num_strips, d.max_phrases
  for name in ('V_G', 'V_P', 'V_S', 'V_R', 'T_G', 'T_P', 'T_R'):
    assert f[name].shape == (3, p), name
  for name, parts in (('M_V', k), ('V_L', k), ('M_T', n), ('T_L', n)):
    assert f[name].shape == (3, parts, p), name
  assert set(f['logits']) == {'V_G', 'T_G', 'V_P', 'T_P', 'V_R', 'T_R'}
  assert f['logits']['V_R'].shape == (3, 7)
  np.testing.assert_array_equal(f['phrase_valid'], batch['phrase_mask'].any(-1))
  baseline = config.copy_and_resolve_references()
  baseline.model.baseline = True
  fb = dssl.DSSL(ml_collections.FrozenConfigDict(baseline.model), 50, 7).apply(
      variables, batch, train=False)
  assert 'V_S' not in fb and 'V_R' not in fb and 'T_R' not in fb
  np.testing.assert_array_equal(fb['V_P'], fb['V_G'])
  np.testing.assert_array_equal(fb['T_P'], fb['T_G'])
  np.testing.assert_array_equal(fb['V_L'], fb['M_V'])


def _train_apply(model, variables: dict, params, batch: dict, **kwargs) -> tuple:
  """(features, batch_stats updates) of a training forward pass, SDM's key fixed."""
  return model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                     train=True, mutable=['batch_stats'], rngs={'sdm': jax.random.key(1)}, **kwargs)


def test_the_program_for_an_accelerator_computes_the_cpu_programs_loss_and_gradients():
  """The forms chosen by platform (layers: 1x1 convolutions, max-pool's gradient) agree: the
  stage-2 loss and its gradient lowered for a GPU, run here, equal the CPU program's."""
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=4)
  model, variables = init_model(config)

  def loss_and_grads(params):
    loss_fn = lambda params: losses.stage2_loss(
        _train_apply(model, variables, params, batch)[0], batch, config)[0]
    return jax.value_and_grad(loss_fn)(params)

  cpu, gpu = (lowered_for(platform, loss_and_grads, variables['params']).compile()(
      variables['params']) for platform in ('cpu', 'cuda'))
  for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(gpu)):  # summation order differs
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max() + 1e-7


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_statistics():
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=4)
  model, variables = init_model(config)

  def grads_and_stats(frozen):
    def loss_fn(params):
      f, updates = _train_apply(model, variables, params, batch, frozen_backbone=frozen)
      return losses.stage1_loss(f, batch)[0], updates['batch_stats']
    return jax.jit(jax.grad(loss_fn, has_aux=True))(variables['params'])

  grads, stats = grads_and_stats(frozen=True)
  assert all((g == 0).all() for g in jax.tree.leaves(grads['backbone']))
  assert any((g != 0).any() for g in jax.tree.leaves(grads['image_global']))
  for a, b in zip(jax.tree.leaves(stats['backbone']),
                  jax.tree.leaves(variables['batch_stats']['backbone'])):
    np.testing.assert_array_equal(a, b)
  grads, stats = grads_and_stats(frozen=False)
  assert any((g != 0).any() for g in jax.tree.leaves(grads['backbone']))
  moved = flax.traverse_util.flatten_dict(stats['backbone'])
  before = flax.traverse_util.flatten_dict(variables['batch_stats']['backbone'])
  assert any(not np.array_equal(moved[key], before[key]) for key in moved)


def test_mixed_precision_computes_in_bfloat16_with_float32_params_features_and_loss():
  """bfloat16 encoders and heads (SPFM's per-pair layer and the ID classifier included) stay
  within bounds of float32, loss term by loss term (nearly all the difference comes from the
  encoders: tests/models/test_heads.py bounds the heads alone)."""
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=4)
  model32, variables = init_model(config)
  config.model.dtype = 'bfloat16'
  model16, variables16 = init_model(config)
  assert {x.dtype for x in jax.tree.leaves(variables16)} == {np.dtype('float32')}

  def loss_fn(model):
    def fn(params):
      f, _ = _train_apply(model, variables, params, batch)
      return losses.stage2_loss(f, batch, config)[0], f
    return fn
  hlo = jax.jit(jax.grad(loss_fn(model16), has_aux=True)).lower(variables['params']).as_text()
  for op in ('stablehlo.convolution', 'stablehlo.dot_general'):  # backbone; GRU, heads
    assert any(op in line and 'bf16' in line for line in hlo.splitlines()), op
  classes, pairs = f'x{model16.num_classes}xbf16>', f'4x4x{2 * config.model.embed_dim}xbf16>'
  for shape in (classes, pairs):  # the ID classifier's and SPFM's per-pair matmuls
    assert any('stablehlo.dot_general' in line and shape in line for line in hlo.splitlines())

  (loss16, f16), grads = jax.jit(jax.value_and_grad(loss_fn(model16), has_aux=True))(
      variables['params'])
  loss32, f32 = jax.jit(loss_fn(model32))(variables['params'])
  terms16, terms32 = (losses.stage2_loss(f, batch, config)[1] for f in (f16, f32))
  assert f16.pop('V_R_pairs').dtype == jnp.bfloat16
  assert loss16.dtype == np.float32 and all(
      x.dtype == np.float32 for x in jax.tree.leaves(f16) if x.dtype != bool)
  assert all(np.isfinite(g).all() and g.dtype == np.float32 for g in jax.tree.leaves(grads))
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  for name, value in terms32.items():
    np.testing.assert_allclose(terms16[name], value, rtol=0.1, atol=3e-3, err_msg=name)
  for name in ('V_G', 'T_G', 'V_L', 'V_P', 'T_P', 'V_R', 'T_R'):
    cosine = (f16[name] * f32[name]).sum(-1) / np.linalg.norm(f16[name], axis=-1) / np.linalg.norm(
        f32[name], axis=-1)
    assert cosine.min() > 0.98, name  # bfloat16 keeps 8 bits of mantissa
  config.model.dtype = 'float16'
  with pytest.raises(UserError, match="dtype must be one of float32, bfloat16, got 'float16'"):
    dssl.compute_dtype(config.model)


@pytest.mark.parametrize('zeroing', ['features', 'loss'])
def test_sdm_zeroing_reaches_the_features_or_only_the_reconstruction_loss(zeroing):
  config = tiny_model_config()
  config.model.sdm_zeroing = zeroing
  batch = random_batch(config, 50, 7, batch_size=3)
  model, variables = init_model(config)
  text = lambda train: model.apply(variables, batch['tokens'], batch['token_mask'],
                                   batch['phrases'], batch['phrase_mask'], train,
                                   method=model.encode_text, rngs={'sdm': jax.random.key(1)})
  clean, trained = text(False), text(True)
  zeroed = trained['T_P'] if zeroing == 'features' else trained['T_P_zeroed']
  assert np.abs(zeroed - clean['T_P']).max() > 1e-3  # half of T_G's entries zeroed
  if zeroing == 'loss':  # alignments see what the test sees
    np.testing.assert_allclose(trained['T_P'], clean['T_P'], rtol=1e-6)
    np.testing.assert_allclose(trained['T_L'], clean['T_L'], rtol=1e-6)
    assert np.abs(trained['T_L_zeroed'] - clean['T_L']).max() > 1e-3
  else:
    assert 'T_P_zeroed' not in trained


def test_sdm_zeroing_typo_is_one_line():
  config = tiny_model_config()
  config.model.sdm_zeroing = 'both'
  with pytest.raises(UserError, match="sdm_zeroing must be 'features' or 'loss'"):
    init_model(config)


def _clip_model_config(phrases='span'):
  """tiny_model_config with configs/synthetic_clip_tiny.py's encoders, narrower still."""
  config = tiny_model_config()
  config.data.image_size, config.data.max_words = (64, 32), 12
  config.model.backbone = 'clip'
  config.model.clip.update(image_width=32, image_layers=1, image_heads=2, text_width=32,
                           text_layers=1, text_heads=2, context=12, embed_dim=16, phrases=phrases)
  return config


def _clip_batch(config, batch_size=3):
  """random_batch with valid CLIP rows: start, ids, end (the largest id), padding."""
  batch = random_batch(config, 49406, 7, batch_size)
  length = batch['token_mask'].sum(-1)
  tokens = np.where(batch['token_mask'], batch['tokens'], 0)
  tokens[:, 0] = 49406
  tokens[np.arange(batch_size), length - 1] = 49407
  return batch | {'tokens': tokens, 'token_mask': tokens != 0}


@pytest.mark.parametrize('phrases', ['span', 'separate'])
def test_clip_phrases_pool_the_sentence_pass_or_run_their_own(phrases):
  """M_T's input: the mean of the sentence's token features over each span, or the features of
  each phrase's own pass; V_G's the class feature, M_V's the patch grid's bands."""
  config = _clip_model_config(phrases)
  batch = _clip_batch(config)
  model, variables = init_model(config)
  assert set(variables['params']['backbone']) >= {'conv1', 'class_embedding', 'proj'}
  f = model.apply(variables, batch, train=False)
  sentence, tokens = model.apply(variables, batch['tokens'], method=lambda m, t: m.text(t))
  np.testing.assert_allclose(f['T_G'], model.apply(
      variables, sentence, method=lambda m, x: m.text_global(x)), atol=1e-6)
  if phrases == 'span':
    span = batch['phrase_mask']
    want = (span[..., None] * tokens[:, None]).sum(2) / np.maximum(span.sum(-1), 1)[..., None]
  else:
    b, n, length = batch['phrases'].shape
    want = model.apply(variables, batch['phrases'].reshape(b * n, length),
                       method=lambda m, t: m.text(t))[0].reshape(b, n, -1)
  np.testing.assert_allclose(f['M_T'], model.apply(
      variables, want, method=lambda m, x: m.text_local(x)), atol=1e-5)
  pooled, grid = model.apply(variables, batch['image'], method=lambda m, x: m.backbone(x))
  assert grid.shape == (3, 4, 2, 16)
  np.testing.assert_allclose(f['V_G'], model.apply(
      variables, pooled, method=lambda m, x: m.image_global(x)), atol=1e-6)


def test_stage1_freezes_both_clip_encoders():
  config = _clip_model_config()
  batch = _clip_batch(config, 4)
  model, variables = init_model(config)

  def grads(frozen):
    def loss_fn(params):
      f = model.apply({'params': params}, batch, train=True, frozen_backbone=frozen,
                      rngs={'sdm': jax.random.key(1)})
      return losses.stage1_loss(f, batch)[0]
    return jax.jit(jax.grad(loss_fn))(variables['params'])

  frozen, trained = grads(True), grads(False)
  for encoder in ('backbone', 'text'):
    assert all((g == 0).all() for g in jax.tree.leaves(frozen[encoder])), encoder
    assert any((g != 0).any() for g in jax.tree.leaves(trained[encoder])), encoder
  assert any((g != 0).any() for g in jax.tree.leaves(frozen['text_global']))


def test_unknown_backbone_or_phrase_mode_is_one_line():
  config = tiny_model_config()
  config.model.backbone = 'vit'
  with pytest.raises(UserError, match="config.model.backbone must be 'resnet' or 'clip'"):
    init_model(config)
  config = _clip_model_config('pooled')
  with pytest.raises(UserError, match="config.model.clip.phrases must be 'span' or 'separate'"):
    init_model(config)
