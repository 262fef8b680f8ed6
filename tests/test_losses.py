"""The losses against direct loops and formulas; every switch changes the stage-2 loss."""
import itertools

import jax
import ml_collections
import numpy as np
import pytest

from dssl_jax.configs import base, synthetic
from dssl_jax import losses
from dssl_jax.models import dssl
from dssl_jax.data.formats import random_batch
from dssl_jax.errors import UserError
from dssl_jax import similarity as similarity_lib
from tests.helpers import init_model, tiny_model_config


def _cos(a, b):
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def _rank_loop(x1, x2, ids, margin, valid=None, same=None, reduction='mean'):
  """eq. 3 pair by pair: each valid matched pair against its valid negatives (another person,
  not marked `same`), averaged over the anchors (or summed over the batch)."""
  n = len(x1)
  valid = np.ones(n, bool) if valid is None else valid
  same = np.zeros((n, n), bool) if same is None else same
  total, anchors = 0.0, 0
  for i in range(n):
    if not valid[i]:
      continue
    anchors += 1
    for j in range(n):
      if valid[j] and ids[j] != ids[i] and not same[i, j]:
        total += max(0, margin - _cos(x1[i], x2[i]) + _cos(x1[i], x2[j]))
        total += max(0, margin - _cos(x1[i], x2[i]) + _cos(x1[j], x2[i]))
  return total if reduction == 'sum' else total / max(anchors, 1)


def test_ranking_loss_matches_a_loop_over_pairs():
  rng = np.random.default_rng(0)
  x1, x2 = rng.normal(size=(2, 7, 5))
  ids = np.array([1, 1, 2, 3, 3, 3, 4])  # same-person pairs are not negatives
  np.testing.assert_allclose(losses.rank_loss(x1, x2, ids, 0.2), _rank_loop(x1, x2, ids, 0.2),
                             rtol=1e-5)
  valid = np.array([1, 0, 1, 1, 0, 1, 1], bool)
  np.testing.assert_allclose(
      losses.ranking_loss(losses.cosine_matrix(x1, x2), ids, 0.2, valid),
      _rank_loop(x1, x2, ids, 0.2, valid), rtol=1e-5)
  assert losses.rank_loss(x1, x1, np.zeros(7), 0.2) == 0  # no negatives at all
  np.testing.assert_allclose(
      losses.ranking_loss(losses.cosine_matrix(x1, x2), ids, 0.2, valid, reduction='sum'),
      _rank_loop(x1, x2, ids, 0.2, valid, reduction='sum'), rtol=1e-5)
  with pytest.raises(UserError, match='config.loss.rank_reduction'):
    losses.rank_loss(x1, x2, ids, 0.2, 'max')


def test_summed_ranking_loss_is_the_sum_of_every_hinge_term():
  """eq. 3 as printed, written out for 3 pairs of 3 people: both directions of every pair."""
  x1 = np.array([[1., 0.], [0., 1.], [1., 1.]])
  x2 = np.array([[1., 0.2], [0.3, 1.], [-1., 1.]])
  s = np.array([[_cos(a, b) for b in x2] for a in x1])  # s[i, j] = cos(x1_i, x2_j)
  hinge = lambda value: max(0.0, value)
  want = sum(hinge(0.2 - s[i, i] + s[i, j]) + hinge(0.2 - s[i, i] + s[j, i])
             for i in range(3) for j in range(3) if j != i)
  got = losses.rank_loss(x1, x2, np.array([0, 1, 2]), 0.2, 'sum')
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert want > 0.5  # some hinge terms are active, so a mean (want / 3) cannot pass
  np.testing.assert_allclose(losses.rank_loss(x1, x2, np.array([0, 1, 2]), 0.2, 'mean'),
                             want / 3, rtol=1e-5)


def test_mec_and_id_loss_formulas():
  rng = np.random.default_rng(1)
  p, s = rng.normal(size=(2, 6, 9))
  np.testing.assert_allclose(losses.mec_loss(p, s, 'literal'), np.linalg.norm(p.T @ s), rtol=1e-5)
  mean_square = np.mean(np.square([_cos(a, b) for a in p for b in s]))
  np.testing.assert_allclose(losses.mec_loss(p, s, 'squared_cosine'), mean_square, rtol=1e-5)
  np.testing.assert_allclose(losses.mec_loss(p, s, 'cosine'), np.sqrt(mean_square), rtol=1e-5)
  logits, labels = rng.normal(size=(4, 5)), np.array([0, 3, 3, 1])
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(losses.id_loss(logits, labels),
                             -log_softmax[np.arange(4), labels].mean(), rtol=1e-5)


def test_mec_forms_on_hand_built_features():
  rng = np.random.default_rng(5)
  person = np.zeros((4, 8)); person[:, :4] = rng.normal(size=(4, 4))  # person: coordinates 0-3
  surroundings = np.zeros((4, 8)); surroundings[:, 4:] = rng.normal(size=(4, 4))  # 4-7
  row_scales = rng.uniform(0.01, 100, size=(4, 1))
  mixed = person + 0.5 * np.roll(surroundings, 1, axis=0)  # shares directions with S
  cosine = losses.mec_loss(mixed, surroundings, 'cosine')
  assert 0.05 < cosine <= 1
  np.testing.assert_allclose(losses.mec_loss(mixed, surroundings, 'squared_cosine'), cosine ** 2,
                             rtol=1e-5)
  for form in ('squared_cosine', 'cosine'):
    assert losses.mec_loss(person, surroundings, form) < 1e-5  # orthogonal -> 0
    np.testing.assert_allclose(losses.mec_loss(row_scales * mixed, 3 * surroundings, form),
                               losses.mec_loss(mixed, surroundings, form), rtol=1e-5)  # scale-free
  literal = losses.mec_loss(mixed, surroundings, 'literal')
  np.testing.assert_allclose(losses.mec_loss(0.1 * mixed, surroundings, 'literal'), 0.1 * literal,
                             rtol=1e-5)  # eq. 6 as printed: met by shrinking the features
  with pytest.raises(UserError, match='mec_form'):
    losses.mec_loss(person, surroundings, 'frobenius')


def test_squared_cosine_mec_pull_fades_with_the_overlap_and_the_root_does_not():
  """Why squared_cosine is the default: its gradient shrinks with the cosines, the root's not."""
  rng = np.random.default_rng(7)
  surroundings = rng.normal(size=(8, 16))
  person = rng.normal(size=(8, 16))
  person -= (person @ np.linalg.pinv(surroundings)) @ surroundings  # orthogonal to every V_S^j

  def pull(form, overlap):
    mec = lambda p: losses.mec_loss(p, surroundings, form)
    return float(np.linalg.norm(jax.grad(mec)(person + overlap * surroundings)))

  assert pull('squared_cosine', 1e-3) < 0.01 * pull('squared_cosine', 0.3)
  assert pull('cosine', 1e-3) > 0.3 * pull('cosine', 0.3)


def _train_features(config, batch_size=4):
  """(model, variables, batch, train-mode features) of a tiny random model and batch."""
  model, variables = init_model(config)
  batch = random_batch(config, 50, 7, batch_size=batch_size)
  f, _ = model.apply(variables, batch, train=True, rngs={'sdm': jax.random.key(2)},
                     mutable=['batch_stats'])
  return model, variables, batch, f


def test_align2_ranks_each_text_in_every_gallery_surroundings():
  """S[i, j] = cos(V_G^i, SPFM(T_P^j, V_S^i)), checked against one SPFM call per pair."""
  config = tiny_model_config()
  model, variables, batch, f = _train_features(config)
  similarity = np.asarray(losses.align2_similarity(f))
  spfm = lambda t, v: model.apply(variables, t, v, method=lambda m, t, v: m.spfm(t, v))
  for i, j in itertools.product(range(4), range(4)):
    v_r = spfm(f['T_P'][j:j + 1], f['V_S'][i:i + 1])[0]
    np.testing.assert_allclose(similarity[i, j], _cos(np.asarray(f['V_G'][i]), np.asarray(v_r)),
                               rtol=1e-4, atol=1e-6)
  ids = batch['person_id']
  gallery = losses.stage2_loss(f, batch, config)[1]['align2']
  np.testing.assert_allclose(gallery, losses.ranking_loss(similarity, ids, 0.2), rtol=1e-5)
  own = _override(config, 'loss.align2_surroundings', 'own')
  np.testing.assert_allclose(losses.stage2_loss(f, batch, own)[1]['align2'],
                             _rank_loop(f['V_G'], f['V_R'], ids, 0.2), rtol=1e-5)
  with pytest.raises(UserError, match='align2_surroundings'):
    losses.stage2_loss(f, batch, _override(config, 'loss.align2_surroundings', 'mine'))


def test_separation_stats_and_mec_weight():
  config = tiny_model_config()
  _, _, batch, f = _train_features(config)
  stats = losses.separation_stats(f)
  np.testing.assert_allclose(stats['norm_V_S'], np.linalg.norm(f['V_S'], axis=1).mean(), rtol=1e-5)
  np.testing.assert_allclose(stats['abs_cos_V_P_V_S'], np.mean(
      [abs(_cos(np.asarray(a), np.asarray(b))) for a, b in zip(f['V_P'], f['V_S'])]), rtol=1e-5)
  mec = losses.stage2_loss(f, batch, config)[1]['mec']
  np.testing.assert_allclose(mec, losses.mec_loss(f['V_P'], f['V_S'], 'squared_cosine'),
                             rtol=1e-6)
  np.testing.assert_allclose(
      losses.stage2_loss(f, batch, _override(config, 'loss.mec_weight', 3.0))[1]['mec'], 3 * mec,
      rtol=1e-6)


def _features(rng, batch=6, n=4, p=8):
  f = {k: rng.normal(size=(batch, p)).astype(np.float32) for k in ('T_G', 'T_P', 'V_P')}
  f |= {k: rng.normal(size=(batch, n, p)).astype(np.float32) for k in ('M_T', 'T_L', 'V_L')}
  f['phrase_valid'] = np.arange(n) < rng.integers(1, n + 1, batch)[:, None]
  return f


def test_sdm_loss_sums_phrase_slots_over_valid_phrases():
  rng = np.random.default_rng(2)
  f, ids = _features(rng), np.array([1, 2, 2, 3, 4, 5])
  want = _rank_loop(f['T_G'], f['T_P'], ids, 0.2) + sum(
      _rank_loop(f['M_T'][:, i], f['T_L'][:, i], ids, 0.2, f['phrase_valid'][:, i])
      for i in range(4))
  np.testing.assert_allclose(losses.sdm_loss(f, ids, 0.2, 'rank'), want, rtol=1e-5)
  summed = _rank_loop(f['T_G'], f['T_P'], ids, 0.2, reduction='sum') + sum(
      _rank_loop(f['M_T'][:, i], f['T_L'][:, i], ids, 0.2, f['phrase_valid'][:, i],
                 reduction='sum') for i in range(4))
  np.testing.assert_allclose(losses.sdm_loss(f, ids, 0.2, 'rank', reduction='sum'), summed,
                             rtol=1e-5)
  valid = f['phrase_valid']
  squared = ((f['M_T'] - f['T_L'])**2).sum(-1)
  want = ((f['T_G'] - f['T_P'])**2).sum(-1).mean() + sum(
      squared[valid[:, i], i].mean() for i in range(4))
  np.testing.assert_allclose(losses.sdm_loss(f, ids, 0.2, 'euclidean'), want, rtol=1e-5)


def test_sdm_loss_phrase_mean_averages_over_the_slots_in_use():
  rng = np.random.default_rng(4)
  f, ids = _features(rng), np.array([1, 2, 2, 3, 4, 5])
  f['phrase_valid'][:, 3] = False  # no caption of the batch has a 4th phrase
  sentence = _rank_loop(f['T_G'], f['T_P'], ids, 0.2)
  slots = sum(_rank_loop(f['M_T'][:, i], f['T_L'][:, i], ids, 0.2, f['phrase_valid'][:, i])
              for i in range(3))
  np.testing.assert_allclose(losses.sdm_loss(f, ids, 0.2, 'rank', 'mean'), sentence + slots / 3,
                             rtol=1e-5)
  with pytest.raises(UserError, match='config.loss.sdm_phrases'):
    losses.sdm_loss(f, ids, 0.2, 'rank', 'max')


def test_sdm_loss_leaves_identical_phrases_out_of_the_negatives():
  config = _override(tiny_model_config(), 'loss.sdm_phrase_negatives', 'distinct')
  batch = random_batch(config, 50, 7, batch_size=6)
  batch['person_id'] = np.arange(6)
  batch['phrases'][3, 0] = batch['phrases'][0, 0]  # one phrase, said of two people
  batch['phrase_mask'][3, 0] = batch['phrase_mask'][0, 0]
  batch['phrases'][3, 0][~batch['phrase_mask'][3, 0]] += 1  # differs only in padding
  same = np.asarray(losses.identical_phrases(batch, config))
  words = [[tuple(row[mask]) for row, mask in zip(phrases, masks)]
           for phrases, masks in zip(batch['phrases'], batch['phrase_mask'])]
  n = config.data.max_phrases
  want = np.array([[[words[a][i] == words[b][i] for i in range(n)] for b in range(6)]
                   for a in range(6)])
  np.testing.assert_array_equal(same, want)
  assert same[0, 3, 0] and not same[0, 3, 1]

  f = _features(np.random.default_rng(6), n=n)
  ids = batch['person_id']
  sentence = _rank_loop(f['T_G'], f['T_P'], ids, 0.2)
  slot = lambda i, same_i: _rank_loop(f['M_T'][:, i], f['T_L'][:, i], ids, 0.2,
                                      f['phrase_valid'][:, i], same_i)
  np.testing.assert_allclose(losses.sdm_loss(f, ids, 0.2, 'rank', 'sum', same),
                             sentence + sum(slot(i, same[:, :, i]) for i in range(n)), rtol=1e-5)
  assert losses.identical_phrases(batch, tiny_model_config()) is None  # eq. 3 as printed
  np.testing.assert_allclose(losses.sdm_loss(f, ids, 0.2, 'rank'),
                             sentence + sum(slot(i, None) for i in range(n)), rtol=1e-5)
  spans = _override(config, 'model.backbone', 'clip')
  spans.model.clip.phrases = 'span'
  assert losses.identical_phrases(batch, spans) is None  # read in context: never the same
  with pytest.raises(UserError, match='config.loss.sdm_phrase_negatives'):
    losses.identical_phrases(batch, _override(config, 'loss.sdm_phrase_negatives', 'any'))


def test_align4_and_align5_similarities_are_image_by_text():
  rng = np.random.default_rng(3)
  f = _features(rng)
  s4, s5 = np.asarray(losses.align4_similarity(f)), np.asarray(losses.align5_similarity(f))
  all_strips = np.ones(4, bool)
  for i, j in itertools.product(range(6), range(6)):
    np.testing.assert_allclose(s4[i, j], similarity_lib.cross_attention_similarity(
        f['V_L'][i:i + 1], all_strips[None], f['T_P'][j:j + 1])[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s5[i, j], similarity_lib.cross_attention_similarity(
        f['T_L'][j:j + 1], f['phrase_valid'][j:j + 1], f['V_P'][i:i + 1])[0, 0], rtol=1e-5,
        atol=1e-6)


def _stage2(config, batch, variables):
  """Train-mode stage-2 loss; a model with fewer modules simply ignores the others' variables."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), 50, 7)
  f, _ = model.apply(variables, batch, train=True, rngs={'sdm': jax.random.key(9)},
                     mutable=['batch_stats'])
  total, terms = losses.stage2_loss(f, batch, config)
  return float(total), {k: float(v) for k, v in terms.items()}


SWITCH_TERMS = {  # override -> the terms it must remove
    'loss.align1': {'align1'}, 'loss.align2': {'align2'}, 'loss.align3': {'align3'},
    'loss.align4': {'align4'}, 'loss.align5': {'align5'}, 'loss.mec': {'mec'},
    'model.spsm_spfm': {'align2', 'mec', 'id_V_P', 'id_V_R'}, 'model.sdm': {'sdm', 'id_T_P'},
    'model.sam': set(),
}


def _override(config, field, value):
  changed = config.copy_and_resolve_references()
  section, name = field.split('.')
  changed[section][name] = value
  return changed


def test_every_switch_removes_its_terms_and_changes_the_loss():
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=6)
  variables = init_model(config)[1]
  total, terms = _stage2(config, batch, variables)
  assert set(terms) == {'id_V_G', 'id_T_G', 'id_V_P', 'id_T_P', 'id_V_R', 'id_T_R', 'align1',
                        'align2', 'align3', 'align4', 'align5', 'mec', 'sdm'}
  np.testing.assert_allclose(total, sum(terms.values()), rtol=1e-5)
  for field, removed in SWITCH_TERMS.items():
    off_total, off_terms = _stage2(_override(config, field, False), batch, variables)
    assert set(terms) - set(off_terms) == removed, field
    assert off_total != pytest.approx(total, rel=1e-4), field
  for field, value in (('model.sdm_zero_ratio', 0.25), ('model.sdm_zeroing', 'features'),
                       ('loss.sdm', 'euclidean'), ('loss.sdm_phrases', 'mean'),
                       ('loss.margin', 0.5), ('loss.rank_reduction', 'sum')):
    assert _stage2(_override(config, field, value), batch, variables)[0] != pytest.approx(
        total, rel=1e-4), field
  concat = _override(config, 'model.spfm_fusion', 'concat')
  assert _stage2(concat, batch, init_model(concat)[1])[0] != pytest.approx(total, rel=1e-4)
  _, baseline_terms = _stage2(_override(config, 'model.baseline', True), batch, variables)
  assert set(baseline_terms) == {'id_V_G', 'id_T_G', 'align1'}


def test_pdm_and_spfm_exist_only_with_their_aligns_and_take_their_id_terms_along():
  """model.pdm off: no PDM parameters, no T_R and no ID(T_R); model.spfm off: the same for SPFM,
  V_R and ID(V_R). Table 1's rows without Align III (II) turn PDM (SPFM) off."""
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=6)
  variables = init_model(config)[1]
  without_aligns = _override(_override(config, 'loss.align2', False), 'loss.align3', False)
  _, with_modules = _stage2(without_aligns, batch, variables)
  neither = _override(_override(without_aligns, 'model.pdm', False), 'model.spfm', False)
  params = init_model(neither)[1]['params']
  assert 'pdm' not in params and 'spfm' not in params and 'spsm' in params
  _, terms = _stage2(neither, batch, variables)
  assert set(with_modules) - set(terms) == {'id_V_R', 'id_T_R'}
  assert not any(name.endswith('_R') for name in terms)
  no_pdm = _override(_override(config, 'loss.align3', False), 'model.pdm', False)
  assert 'pdm' not in init_model(no_pdm)[1]['params']
  assert {'id_T_R', 'align3'}.isdisjoint(_stage2(no_pdm, batch, variables)[1])
  with pytest.raises(UserError, match='config.loss.align3 needs config.model.pdm'):
    _stage2(_override(config, 'model.pdm', False), batch, variables)
  with pytest.raises(UserError, match='config.loss.align2 needs config.model.spfm'):
    _stage2(_override(config, 'model.spfm', False), batch, variables)


def _loss_and_grad(config, batch, num_classes):
  model, variables = init_model(config, 100, num_classes)

  @jax.jit
  def loss_and_grad(params, batch_stats, batch, rng):
    def loss_fn(params):
      f, _ = model.apply({'params': params, 'batch_stats': batch_stats}, batch, train=True,
                         rngs={'sdm': rng}, mutable=['batch_stats'])
      return losses.stage2_loss(f, batch, config)[0]
    return jax.value_and_grad(loss_fn)(params)

  loss, grads = loss_and_grad(variables['params'], variables['batch_stats'], batch,
                              jax.random.key(1))
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads['backbone']))


def test_jit_stage2_loss_and_gradient_synthetic_config():
  config = synthetic.get_config()
  _loss_and_grad(config, random_batch(config, 100, 50, config.train.batch_size), 50)


@pytest.mark.slow
def test_jit_stage2_loss_and_gradient_paper_size():
  config = base.get_config()  # 384x128, ResNet-50, p=1024, k=6, n=26
  _loss_and_grad(config, random_batch(config, 100, 11003, batch_size=2), 11003)
