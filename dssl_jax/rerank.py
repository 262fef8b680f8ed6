"""Cross-modal re-ranking (the paper's RR, Table 6, after MTFN; DESIGN.md's reading).

For each text query: take its top-K1 images; score each by the best rank, in that image's own
image-to-text list, of any of the query's K_near nearest texts (by text-text similarity, the query
itself included); reorder the top-K1 by that score, ties keeping the original order; leave the rest.
An image that "ranks the query's kind of text first" moves up.
"""
import numpy as np


def rerank(similarity: np.ndarray, text_similarity: np.ndarray, k1: int = 10,
           k_near: int = 5) -> np.ndarray:
  """A re-ranked copy of `similarity` [Q, G]: the top-K1 of each row get new, ordered scores
  above every other entry, so any ranking metric reads the new order. text_similarity is [Q, Q]."""
  num_queries, num_gallery = similarity.shape
  k1, k_near = min(k1, num_gallery), min(k_near, num_queries)
  top = np.argsort(-similarity, axis=1, kind='stable')[:, :k1]  # [Q, K1]
  # rank_of[g, t]: 0-based position of text t in image g's list of texts.
  rank_of = np.argsort(np.argsort(-similarity.T, axis=1, kind='stable'), axis=1, kind='stable')
  texts = np.array(text_similarity, dtype=np.float64)  # the query is its own first neighbour
  np.fill_diagonal(texts, np.inf)
  neighbours = np.argsort(-texts, axis=1, kind='stable')[:, :k_near]  # [Q, K_near]
  best_rank = rank_of[top[:, :, None], neighbours[:, None, :]].min(axis=2)  # [Q, K1]
  new_order = np.take_along_axis(top, np.argsort(best_rank, axis=1, kind='stable'), axis=1)
  out = np.array(similarity, dtype=np.float64, copy=True)
  ceiling = out.max() + 1.0
  rows = np.arange(num_queries)[:, None]
  out[rows, new_order] = ceiling + (k1 - np.arange(k1)) / k1  # first gets the highest score
  return out
