"""Cross-modal re-ranking (the paper's RR, Table 6, after MTFN; docs/design.md's reading).

For each text query: take its top-K1 images; score each by the best rank, in that image's own
image-to-text list, of any of the query's K_near nearest texts (by text-text similarity, the query
itself included); reorder the top-K1 by that score, ties keeping the original order; leave the rest.
An image that "ranks the query's kind of text first" moves up.

Memory stays bounded at any test-set size: no [Q, Q] text matrix (neighbours come from the text
features, a chunk of queries at a time) and no argsort of the [Q, G] matrix (only the ranks of the
neighbour texts in the lists of the images that some query's top-K1 holds are counted).
"""
import numpy as np

from dssl_jax import ranking


def nearest_texts(text_features: np.ndarray, k_near: int) -> np.ndarray:
  """[Q, K_near] each text's nearest texts by dot product, itself first (rows of unit features:
  cosines), `ranking.CHUNK` texts at a time."""
  neighbours = []
  for rows in ranking.chunks(len(text_features)):
    block = np.asarray(text_features[rows] @ text_features.T, np.float64)
    block[np.arange(len(block)), np.arange(rows.start, rows.stop)] = np.inf
    neighbours.append(ranking.top_k(block, k_near))
  return np.concatenate(neighbours)


def rerank(similarity: np.ndarray, neighbours: np.ndarray, k1: int = 10) -> np.ndarray:
  """[Q, K1]: each query's top-K1 images of `similarity` [Q, G] in their re-ranked order, for
  metrics.retrieval_metrics(head=...). neighbours [Q, K_near]: `nearest_texts`."""
  num_queries, num_gallery = similarity.shape
  k1, k_near = min(k1, num_gallery), neighbours.shape[1]
  top = np.concatenate([ranking.top_k(similarity[rows], k1)
                        for rows in ranking.chunks(num_queries)])  # [Q, K1]
  # Every (top image, neighbour text) pair, grouped by image: the text's rank in the image's list.
  images = np.broadcast_to(top[:, :, None], (num_queries, k1, k_near)).ravel()
  texts = np.broadcast_to(neighbours[:, None, :], (num_queries, k1, k_near)).ravel()
  by_image = np.argsort(images, kind='stable')
  bounds = np.searchsorted(images[by_image], np.arange(num_gallery + 1))  # pairs of image g
  rank_in_image = np.empty(len(images), np.int64)
  for block in ranking.chunks(num_gallery):
    if bounds[block.start] == bounds[block.stop]:
      continue  # no query has these images in its top-K1
    columns = np.ascontiguousarray(similarity[:, block].T)  # [C, Q]: each image's texts
    sorted_columns = np.sort(columns, axis=1)
    for i, g in enumerate(range(block.start, block.stop)):
      pairs = by_image[bounds[g]:bounds[g + 1]]
      if len(pairs):
        rank_in_image[pairs] = ranking.ranks_in_row(columns[i], sorted_columns[i], texts[pairs])
  best_rank = rank_in_image.reshape(num_queries, k1, k_near).min(axis=2)
  return np.take_along_axis(top, np.argsort(best_rank, axis=1, kind='stable'), axis=1)
