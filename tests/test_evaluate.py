"""retrieval_metrics against a plain per-query implementation and hand-worked cases; Sim_TI."""
import numpy as np
import pytest

from dssl_jax import evaluate, losses, ranking
from dssl_jax.models import heads
from tests.helpers import reference_metrics


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('chunk', [7, 512])
def test_matches_a_plain_implementation_with_ties_and_repeated_ids(seed, chunk, monkeypatch):
  monkeypatch.setattr(ranking, 'CHUNK', chunk)  # rows at a time: several chunks, or one
  rng = np.random.default_rng(seed)
  similarity = rng.integers(0, 6, (40, 25)) / 5.0  # many ties
  gallery_ids = rng.integers(0, 8, 25)
  query_ids = rng.integers(0, 10, 40)  # ids 8, 9 are not in the gallery
  got = evaluate.retrieval_metrics(similarity, query_ids, gallery_ids)
  want, counted = reference_metrics(similarity, query_ids, gallery_ids)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key
  assert got['queries'] == counted and got['queries_without_match'] == 40 - counted
  got = evaluate.retrieval_metrics(similarity.T, gallery_ids, query_ids)  # image to text: a view
  want, _ = reference_metrics(similarity.T, gallery_ids, query_ids)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key


def test_hand_worked_case():
  gallery_ids = np.array([7, 3, 7, 5, 7])
  similarity = np.array([
      [0.9, 0.8, 0.1, 0.3, 0.2],  # person 7: ranks 1, 4, 5 -> AP (1 + 2/4 + 3/5)/3, INP 3/5
      [0.1, 0.2, 0.3, 0.4, 0.5],  # person 3: rank 4 -> R1 0, R5 1, AP 1/4, INP 1/4
      [0.5, 0.5, 0.5, 0.5, 0.5],  # person 5, all tied: gallery order, rank 4
      [0.5, 0.5, 0.5, 0.5, 0.5],  # person 9: not in the gallery
  ])
  got = evaluate.retrieval_metrics(similarity, np.array([7, 3, 5, 9]), gallery_ids)
  assert got['R1'] == pytest.approx(100 / 3) and got['R5'] == pytest.approx(100)
  ap = ((1 + 2 / 4 + 3 / 5) / 3 + 1 / 4 + 1 / 4) / 3  # = 0.4
  assert got['mAP'] == pytest.approx(100 * ap)
  assert got['mINP'] == pytest.approx(100 * (3 / 5 + 1 / 4 + 1 / 4) / 3)
  assert got['queries_without_match'] == 1
  assert got['R1_stderr'] == pytest.approx(100 * np.std([1, 0, 0], ddof=1) / np.sqrt(3))
  nobody = evaluate.retrieval_metrics(similarity[3:], np.array([9]), gallery_ids)
  assert nobody['R1'] == 0 and nobody['queries'] == 0  # no division by zero


def test_stderr_counts_people_not_queries():
  rng = np.random.default_rng(0)
  hits = rng.random(50) < 0.4
  people = np.arange(50)
  one_each = evaluate.stderr_over_people(hits, people)
  assert one_each == pytest.approx(np.std(hits, ddof=1) / np.sqrt(50))  # the plain std error
  # Each person asked 8 times with the same outcome: 8x the queries, no more information.
  assert evaluate.stderr_over_people(np.repeat(hits, 8), np.repeat(people, 8)) == pytest.approx(
      one_each)
  # Independent outcomes within a person do carry more: the error shrinks toward std / sqrt(400).
  independent = rng.random(400) < 0.4
  assert evaluate.stderr_over_people(independent, np.repeat(people, 8)) < 0.5 * one_each
  assert evaluate.stderr_over_people(hits[:1], people[:1]) == 0.0


@pytest.mark.parametrize('chunk', [4, 7, 64])
def test_similarity_in_chunks_is_sim_ti(chunk):
  rng = np.random.default_rng(0)
  gallery = {'V_P': rng.normal(size=(9, 8)), 'V_L': rng.normal(size=(9, 3, 8))}
  queries = {'T_P': rng.normal(size=(13, 8)), 'T_L': rng.normal(size=(13, 5, 8)),
             'phrase_valid': np.arange(5) < rng.integers(0, 6, 13)[:, None]}
  gallery = {k: v.astype(np.float32) for k, v in gallery.items()}
  queries = {k: v if v.dtype == bool else v.astype(np.float32) for k, v in queries.items()}
  got = evaluate.similarity(gallery, queries, 0.5, 0.25, chunk=chunk)
  want = (np.asarray(losses.cosine_matrix(queries['T_P'], gallery['V_P']))
          + 0.5 * np.asarray(heads.cross_attention_similarity(
              gallery['V_L'], np.ones((9, 3), bool), queries['T_P'])).T
          + 0.25 * np.asarray(heads.cross_attention_similarity(
              queries['T_L'], queries['phrase_valid'], gallery['V_P'])))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  only_global = evaluate.similarity(gallery, queries, 0, 0, chunk=chunk)
  np.testing.assert_allclose(only_global, losses.cosine_matrix(queries['T_P'], gallery['V_P']),
                             rtol=1e-5, atol=1e-6)


def test_image_to_text_ranks_the_captions_of_each_image():
  similarity = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])  # 3 captions x 2 images
  caption_ids, image_ids = np.array([1, 2, 2]), np.array([1, 2])
  got = evaluate.retrieval_metrics(similarity.T, image_ids, caption_ids)
  # Image 1: captions by score 0 (id 1), 2, 1 -> hit at rank 1. Image 2: 1 (id 2), 2 (id 2), 0.
  assert got['R1'] == 100 and got['queries'] == 2
  assert got['mAP'] == pytest.approx(100 * (1 + (1 + 1) / 2) / 2)


def _config(**switches):
  from configs import synthetic  # pylint: disable=g-import-not-at-top
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
  assert evaluate.sim_ti_weights(_config(**switches)) == weights


def test_sim_ti_without_align4_and_align5_is_the_person_cosine_alone():
  rng = np.random.default_rng(5)
  gallery = {'V_P': rng.normal(size=(9, 8)), 'V_L': rng.normal(size=(9, 3, 8))}
  queries = {'T_P': rng.normal(size=(5, 8)), 'T_L': rng.normal(size=(5, 4, 8)),
             'phrase_valid': np.arange(4) < rng.integers(1, 5, 5)[:, None]}
  cosine = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in gallery['V_P']]
                     for a in queries['T_P']])
  untrained = _config(loss__align4=False, loss__align5=False)
  np.testing.assert_allclose(
      evaluate.similarity(gallery, queries, *evaluate.sim_ti_weights(untrained)), cosine,
      rtol=1e-5, atol=1e-6)
  with_ca = evaluate.similarity(gallery, queries, *evaluate.sim_ti_weights(_config()))
  assert np.abs(with_ca - cosine).max() > 0.1  # the full model's CA terms are there
