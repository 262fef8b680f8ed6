"""Cross-modal re-ranking: hand-built cases whose new order is known, and the chunked,
bounded-memory implementation against the plain full-matrix one it replaced."""
import numpy as np
import pytest

from dssl_jax import evaluate, ranking
from dssl_jax.rerank import nearest_texts, rerank
from dssl_jax import metrics as metrics_lib
from tests.helpers import reference_metrics

# Two texts, four images. Image 0 ranks text 1 above text 0; image 1 ranks text 0 first.
SIMILARITY = np.array([[0.9, 0.8, 0.1, 0.05],
                       [0.95, 0.7, 0.3, 0.2]])
TEXTS = np.eye(2)  # text features: each text is nearest to itself, then the other


def reference_rerank(similarity, text_similarity, k1, k_near):
  """The full-matrix implementation (argsorts of [Q, G] and [G, Q]): a re-ranked score matrix."""
  num_queries, num_gallery = similarity.shape
  k1, k_near = min(k1, num_gallery), min(k_near, num_queries)
  top = np.argsort(-similarity, axis=1, kind='stable')[:, :k1]
  rank_of = np.argsort(np.argsort(-similarity.T, axis=1, kind='stable'), axis=1, kind='stable')
  texts = np.array(text_similarity, dtype=np.float64)
  np.fill_diagonal(texts, np.inf)
  neighbours = np.argsort(-texts, axis=1, kind='stable')[:, :k_near]
  best_rank = rank_of[top[:, :, None], neighbours[:, None, :]].min(axis=2)
  new_order = np.take_along_axis(top, np.argsort(best_rank, axis=1, kind='stable'), axis=1)
  out = np.array(similarity, dtype=np.float64, copy=True)
  out[np.arange(num_queries)[:, None], new_order] = out.max() + 1.0 + (k1 - np.arange(k1)) / k1
  return out


def test_an_image_that_prefers_other_texts_moves_down():
  # Text 0: image 0 has text 0 at rank 2 of its list, image 1 at rank 1 -> 1, 0.
  # Text 1: image 0 has it first, image 1 second -> unchanged.
  assert rerank(SIMILARITY, nearest_texts(TEXTS, 1), k1=2).tolist() == [[1, 0], [0, 1]]


def test_neighbour_texts_vote_and_ties_keep_the_order():
  # With both texts as neighbours, images 0 and 1 each rank one of them first: a tie, kept.
  assert rerank(SIMILARITY, nearest_texts(TEXTS, 2), k1=2).tolist() == [[0, 1], [0, 1]]


def test_only_the_top_k1_move_and_metrics_read_the_new_order():
  similarity = np.array([[0.5, 0.9, 0.8, 0.7, 0.6], [0.1, 0.95, 0.2, 0.3, 0.99]])
  head = rerank(similarity, nearest_texts(np.eye(2), 1), k1=3)
  # Text 0's top 3 are images 1, 2, 3; image 1 prefers text 1 -> 2, 3, 1 (then 4, 0 as before).
  assert head[0].tolist() == [2, 3, 1]
  gallery_ids = np.array([0, 0, 7, 0, 0])
  assert metrics_lib.retrieval_metrics(similarity[:1], np.array([7]), gallery_ids)['R1'] == 0.0
  reranked = metrics_lib.retrieval_metrics(similarity[:1], np.array([7]), gallery_ids, head[:1])
  assert reranked['R1'] == 100
  one_text = nearest_texts(np.ones((1, 1)), 10)
  assert rerank(similarity[:1], one_text, k1=10).shape == (1, 5)  # k larger than the data


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('chunk', [3, 512])
def test_matches_the_full_matrix_implementation_with_ties(seed, chunk, monkeypatch):
  monkeypatch.setattr(ranking, 'CHUNK', chunk)
  rng = np.random.default_rng(seed)
  similarity = rng.integers(0, 6, (30, 20)) / 5.0  # many ties, in the top-K1 and among texts
  texts = rng.integers(-1, 2, (30, 4)).astype(np.float64)  # integer dot products: exact, tied
  query_ids, gallery_ids = rng.integers(0, 8, 30), rng.integers(0, 6, 20)
  for k1, k_near in [(5, 3), (10, 1), (20, 30)]:
    want = reference_rerank(similarity, texts @ texts.T, k1, k_near)
    head = rerank(similarity, nearest_texts(texts, k_near), k1)
    np.testing.assert_array_equal(head, np.argsort(-want, axis=1, kind='stable')[:, :head.shape[1]])
    got = metrics_lib.retrieval_metrics(similarity, query_ids, gallery_ids, head)
    expected, counted = reference_metrics(want, query_ids, gallery_ids)
    assert got['queries'] == counted
    for key, value in expected.items():
      assert got[key] == pytest.approx(value, abs=1e-9), key


def test_reranked_metrics_of_an_evaluation_result_use_the_texts_cosines():
  rng = np.random.default_rng(5)
  similarity = rng.integers(0, 6, (30, 20)) / 5.0
  t_p = rng.normal(size=(30, 8)).astype(np.float32) * rng.uniform(0.5, 3, (30, 1))  # any scale
  unit = t_p / np.linalg.norm(t_p, axis=1, keepdims=True)
  result = evaluate.SplitEvaluation(
      metrics={}, similarity=similarity, queries={'T_P': t_p, 'person_id': rng.integers(0, 8, 30)},
      gallery={'person_id': rng.integers(0, 6, 20)}, seconds={})
  got = evaluate.reranked_metrics(result, k1=5, k_near=3)
  expected, _ = reference_metrics(reference_rerank(similarity, unit @ unit.T, 5, 3),
                                  result.queries['person_id'], result.gallery['person_id'])
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key
