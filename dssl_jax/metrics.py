"""The field's retrieval metrics (R@1/5/10, mAP, mINP) as its reference evaluation computes them,
and R1's standard error over a split's people. Ranks come from dssl_jax/ranking.py, in chunks of
rows, so memory stays small at any test size."""
import numpy as np

from dssl_jax import ranking


def retrieval_metrics(similarity: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray,
                      head: np.ndarray | None = None) -> dict:
  """R@1/5/10, mAP and mINP (percent) of ranking the gallery for each query (row).

  As the field's reference evaluation: every gallery entry of the query's person is relevant;
  R@k succeeds if one is in the top k; AP is non-interpolated; INP = relevant count / 1-based rank
  of the last relevant. Ties keep gallery order. Queries whose person is not in the gallery have no
  defined rank: they are left out of every average and counted in `queries_without_match`.
  `head` [Q, K]: a new order of each row's top K (re-ranking's output); the rest keep their ranks.
  Only the relevant entries' ranks are computed, `ranking.CHUNK` rows at a time.
  R1_stderr: R1's standard error over the queries' people (`stderr_over_people`), what another
  test split of as many people would move it by.
  """
  by_id = np.argsort(gallery_ids, kind='stable')
  ids, starts = np.unique(gallery_ids[by_id], return_index=True)
  bounds = np.append(starts, len(by_id))
  first_hit, average_precision, inverse_negative, ranked_ids = [], [], [], []
  for rows in ranking.chunks(len(similarity)):
    block = np.ascontiguousarray(similarity[rows])  # also a transposed matrix's rows
    sorted_block = np.sort(block, axis=1)
    for i, q in enumerate(range(rows.start, rows.stop)):
      at = np.searchsorted(ids, query_ids[q])
      if at == len(ids) or ids[at] != query_ids[q]:
        continue
      relevant = by_id[bounds[at]:bounds[at + 1]]
      ranks = ranking.ranks_in_row(block[i], sorted_block[i], relevant)
      if head is not None:
        moved, position = np.nonzero(relevant[:, None] == head[q][None, :])
        ranks[moved] = position
      ranks = np.sort(ranks) + 1
      first_hit.append(ranks[0])
      ranked_ids.append(query_ids[q])
      average_precision.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
      inverse_negative.append(len(ranks) / ranks[-1])
  first_hit = np.array(first_hit)
  percent = lambda x: float(100 * np.mean(x)) if len(x) else 0.0
  return {'R1': percent(first_hit <= 1), 'R5': percent(first_hit <= 5),
          'R10': percent(first_hit <= 10), 'mAP': percent(average_precision),
          'mINP': percent(inverse_negative),
          'R1_stderr': 100 * stderr_over_people(first_hit <= 1, np.array(ranked_ids)),
          'queries': len(first_hit), 'queries_without_match': len(similarity) - len(first_hit)}


def stderr_over_people(values: np.ndarray, people: np.ndarray) -> float:
  """Standard error of values.mean() when the people, not the queries, are the sample.

  A person's queries share their gallery images, so they succeed or fail together: the binomial
  error over Q queries understates how much a metric would move on another test split of as many
  people. This is the cluster-robust (sandwich) estimate, with people as clusters:
  sqrt(C / (C - 1) * sum_c (sum_{q in c} (v_q - mean))^2) / Q for C people; with one query per
  person it is the plain std / sqrt(Q). 0 when fewer than 2 people.
  """
  values = np.asarray(values, float)
  unique, cluster = np.unique(people, return_inverse=True)
  count = len(unique)
  if count < 2:
    return 0.0
  residual_sums = np.bincount(cluster, values - values.mean(), minlength=count)
  return float(np.sqrt(count / (count - 1) * np.sum(residual_sums ** 2)) / len(values))
