"""CA's attention and pairwise similarity against explicit CA vectors; Sim_TI in chunks, and its
weights."""
import jax.numpy as jnp
import numpy as np
import pytest

from dssl_jax import losses
from dssl_jax import similarity as similarity_lib


def test_attention_keeps_only_weights_above_average():
  cosines = jnp.array([0.9, 0.1, 0.5, -0.2, 0.7])
  mask = jnp.array([True, True, True, True, False])  # the fifth part is padding
  alpha = np.exp([0.9, 0.1, 0.5, -0.2]) / np.exp([0.9, 0.1, 0.5, -0.2]).sum()
  # alpha = [0.390, 0.175, 0.261, 0.130]; average 1/4: parts 0 and 2 are selected.
  np.testing.assert_allclose(similarity_lib.attention_weights(cosines, mask),
                             [alpha[0], 0, alpha[2], 0, 0], rtol=1e-6)
  assert not similarity_lib.attention_weights(cosines, jnp.zeros(5, bool)).any()


def test_cross_attention_similarity_matches_explicit_ca_vectors():
  rng = np.random.default_rng(0)
  parts = rng.normal(size=(3, 5, 8)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
  queries = rng.normal(size=(4, 8)).astype(np.float32)
  got = np.asarray(similarity_lib.cross_attention_similarity(parts, mask, queries))
  for a in range(3):
    for b in range(4):
      x, m, q = parts[a][mask[a]], mask[a].sum(), queries[b]
      if m == 0:
        assert got[a, b] == 0
        continue
      cos = x @ q / np.linalg.norm(x, axis=1) / np.linalg.norm(q)
      alpha = np.exp(cos) / np.exp(cos).sum()
      ca = (alpha[alpha > 1 / m, None] * x[alpha > 1 / m]).sum(0)  # eq. 12
      np.testing.assert_allclose(got[a, b], ca @ q / np.linalg.norm(ca) / np.linalg.norm(q),
                                 rtol=1e-5)


@pytest.mark.parametrize('chunk', [4, 7, 64])
def test_similarity_in_chunks_is_sim_ti(chunk):
  rng = np.random.default_rng(0)
  gallery = {'V_P': rng.normal(size=(9, 8)), 'V_L': rng.normal(size=(9, 3, 8))}
  queries = {'T_P': rng.normal(size=(13, 8)), 'T_L': rng.normal(size=(13, 5, 8)),
             'phrase_valid': np.arange(5) < rng.integers(0, 6, 13)[:, None]}
  gallery = {k: v.astype(np.float32) for k, v in gallery.items()}
  queries = {k: v if v.dtype == bool else v.astype(np.float32) for k, v in queries.items()}
  got = similarity_lib.similarity(gallery, queries, 0.5, 0.25, chunk=chunk)
  want = (np.asarray(losses.cosine_matrix(queries['T_P'], gallery['V_P']))
          + 0.5 * np.asarray(similarity_lib.cross_attention_similarity(
              gallery['V_L'], np.ones((9, 3), bool), queries['T_P'])).T
          + 0.25 * np.asarray(similarity_lib.cross_attention_similarity(
              queries['T_L'], queries['phrase_valid'], gallery['V_P'])))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  only_global = similarity_lib.similarity(gallery, queries, 0, 0, chunk=chunk)
  np.testing.assert_allclose(only_global, losses.cosine_matrix(queries['T_P'], gallery['V_P']),
                             rtol=1e-5, atol=1e-6)


def _config(**switches):
  from dssl_jax.configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config()
  for field, value in switches.items():
    section, name = field.split('__')
    config[section][name] = value
  return config


@pytest.mark.parametrize('switches, weights', [
    ({}, (0.5, 0.5)),
    ({'loss__align4': False}, (0.0, 0.5)),
    ({'loss__align5': False}, (0.5, 0.0)),
    ({'loss__align4': False, 'loss__align5': False}, (0.0, 0.0)),
    ({'model__baseline': True}, (0.0, 0.0)),  # the baseline trains no CA term
    ({'loss__align4': False, 'eval__lambda1': 0.3}, (0.3, 0.5)),  # set: used as given
    ({'eval__lambda1': 0.0, 'eval__lambda2': 1.0}, (0.0, 1.0)),
])
def test_sim_ti_weights_leave_out_the_ca_terms_a_run_did_not_train(switches, weights):
  assert similarity_lib.sim_ti_weights(_config(**switches)) == weights


def test_sim_ti_without_align4_and_align5_is_the_person_cosine_alone():
  rng = np.random.default_rng(5)
  gallery = {'V_P': rng.normal(size=(9, 8)), 'V_L': rng.normal(size=(9, 3, 8))}
  queries = {'T_P': rng.normal(size=(5, 8)), 'T_L': rng.normal(size=(5, 4, 8)),
             'phrase_valid': np.arange(4) < rng.integers(1, 5, 5)[:, None]}
  cosine = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in gallery['V_P']]
                     for a in queries['T_P']])
  untrained = _config(loss__align4=False, loss__align5=False)
  np.testing.assert_allclose(
      similarity_lib.similarity(gallery, queries, *similarity_lib.sim_ti_weights(untrained)),
      cosine, rtol=1e-5, atol=1e-6)
  with_ca = similarity_lib.similarity(gallery, queries, *similarity_lib.sim_ti_weights(_config()))
  assert np.abs(with_ca - cosine).max() > 0.1  # the full model's CA terms are there


def test_a_stage_1_checkpoint_gets_no_ca_term_unless_one_is_set():
  assert similarity_lib.sim_ti_weights(_config(), stage=1) == (0.0, 0.0)
  assert similarity_lib.sim_ti_weights(_config(eval__lambda1=0.3), stage=1) == (0.3, 0.0)
