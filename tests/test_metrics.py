"""retrieval_metrics against a plain per-query implementation and hand-worked cases; R1's standard
error over people."""
import numpy as np
import pytest

from dssl_jax import ranking
from dssl_jax import metrics as metrics_lib
from tests.helpers import reference_metrics


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('chunk', [7, 512])
def test_matches_a_plain_implementation_with_ties_and_repeated_ids(seed, chunk, monkeypatch):
  monkeypatch.setattr(ranking, 'CHUNK', chunk)  # rows at a time: several chunks, or one
  rng = np.random.default_rng(seed)
  similarity = rng.integers(0, 6, (40, 25)) / 5.0  # many ties
  gallery_ids = rng.integers(0, 8, 25)
  query_ids = rng.integers(0, 10, 40)  # ids 8, 9 are not in the gallery
  got = metrics_lib.retrieval_metrics(similarity, query_ids, gallery_ids)
  want, counted = reference_metrics(similarity, query_ids, gallery_ids)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key
  assert got['queries'] == counted and got['queries_without_match'] == 40 - counted
  got = metrics_lib.retrieval_metrics(similarity.T, gallery_ids, query_ids)  # image to text: a view
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
  got = metrics_lib.retrieval_metrics(similarity, np.array([7, 3, 5, 9]), gallery_ids)
  assert got['R1'] == pytest.approx(100 / 3) and got['R5'] == pytest.approx(100)
  ap = ((1 + 2 / 4 + 3 / 5) / 3 + 1 / 4 + 1 / 4) / 3  # = 0.4
  assert got['mAP'] == pytest.approx(100 * ap)
  assert got['mINP'] == pytest.approx(100 * (3 / 5 + 1 / 4 + 1 / 4) / 3)
  assert got['queries_without_match'] == 1
  assert got['R1_stderr'] == pytest.approx(100 * np.std([1, 0, 0], ddof=1) / np.sqrt(3))
  nobody = metrics_lib.retrieval_metrics(similarity[3:], np.array([9]), gallery_ids)
  assert nobody['R1'] == 0 and nobody['queries'] == 0  # no division by zero


def test_stderr_counts_people_not_queries():
  rng = np.random.default_rng(0)
  hits = rng.random(50) < 0.4
  people = np.arange(50)
  one_each = metrics_lib.stderr_over_people(hits, people)
  assert one_each == pytest.approx(np.std(hits, ddof=1) / np.sqrt(50))  # the plain std error
  # Each person asked 8 times with the same outcome: 8x the queries, no more information.
  assert metrics_lib.stderr_over_people(np.repeat(hits, 8), np.repeat(people, 8)) == pytest.approx(
      one_each)
  # Independent outcomes within a person do carry more: the error shrinks toward std / sqrt(400).
  independent = rng.random(400) < 0.4
  assert metrics_lib.stderr_over_people(independent, np.repeat(people, 8)) < 0.5 * one_each
  assert metrics_lib.stderr_over_people(hits[:1], people[:1]) == 0.0


def test_image_to_text_ranks_the_captions_of_each_image():
  similarity = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])  # 3 captions x 2 images
  caption_ids, image_ids = np.array([1, 2, 2]), np.array([1, 2])
  got = metrics_lib.retrieval_metrics(similarity.T, image_ids, caption_ids)
  # Image 1: captions by score 0 (id 1), 2, 1 -> hit at rank 1. Image 2: 1 (id 2), 2 (id 2), 0.
  assert got['R1'] == 100 and got['queries'] == 2
  assert got['mAP'] == pytest.approx(100 * (1 + (1 + 1) / 2) / 2)
