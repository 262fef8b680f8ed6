"""Cross-modal re-ranking on hand-built cases whose new order is known."""
import numpy as np

from dssl_jax import evaluate
from dssl_jax.rerank import rerank

# Two texts, four images. Image 0 ranks text 1 above text 0; image 1 ranks text 0 first.
SIMILARITY = np.array([[0.9, 0.8, 0.1, 0.05],
                       [0.95, 0.7, 0.3, 0.2]])
TEXTS = np.array([[1.0, 0.5], [0.5, 1.0]])


def _order(similarity):
  return np.argsort(-similarity, axis=1, kind='stable').tolist()


def test_an_image_that_prefers_other_texts_moves_down():
  out = rerank(SIMILARITY, TEXTS, k1=2, k_near=1)
  # Text 0: image 0 has text 0 at rank 2 of its list, image 1 at rank 1 -> 1, 0; the rest stays.
  # Text 1: image 0 has it first, image 1 second -> unchanged.
  assert _order(out) == [[1, 0, 2, 3], [0, 1, 2, 3]]


def test_neighbour_texts_vote_and_ties_keep_the_order():
  # With both texts as neighbours, images 0 and 1 each rank one of them first: a tie, kept.
  assert _order(rerank(SIMILARITY, TEXTS, k1=2, k_near=2)) == _order(SIMILARITY)


def test_only_the_top_k1_move_and_metrics_read_the_new_order():
  similarity = np.array([[0.5, 0.9, 0.8, 0.7, 0.6]])
  texts = np.ones((1, 1))
  out = rerank(np.concatenate([similarity, [[0.1, 0.95, 0.2, 0.3, 0.99]]]),
               np.array([[1.0, 0.0], [0.0, 1.0]]), k1=3, k_near=1)
  # Text 0's top 3 are images 1, 2, 3; image 1 prefers text 1 -> 2, 3, 1; images 4, 0 stay last.
  assert _order(out)[0] == [2, 3, 1, 4, 0]
  metrics = evaluate.retrieval_metrics(out[:1], np.array([7]), np.array([0, 0, 7, 0, 0]))
  assert metrics['R1'] == 100.0
  assert rerank(similarity, texts, k1=10, k_near=10).shape == (1, 5)  # k larger than the data
