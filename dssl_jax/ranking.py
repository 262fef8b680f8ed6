"""Ranks and top-k under the field's order (score descending, ties by index), a few rows at a time.

A full argsort of a [Q, G] similarity matrix costs Q x G int64 indices (3 GB at ICFG-PEDES's 19,848
x 19,848) and Q x G log G time, where the metrics and the re-ranking only need the ranks of a few
entries per row: counting the entries above each one (a sort of the row's values, then a binary
search) gives those ranks, identical to a stable argsort's, in memory bounded by CHUNK rows.
"""
from typing import Iterator

import numpy as np

CHUNK = 512  # rows per step: a [CHUNK, G] float32 copy is 40 MB at G = 20,000


def chunks(count: int) -> Iterator[slice]:
  for start in range(0, count, CHUNK):
    yield slice(start, min(start + CHUNK, count))


def ranks_in_row(row: np.ndarray, sorted_row: np.ndarray, columns: np.ndarray) -> np.ndarray:
  """0-based positions of row[columns] in the stable descending order of `row`
  (sorted_row = np.sort(row)): the entries above each, plus its equals at a lower index."""
  values = row[columns]
  right = np.searchsorted(sorted_row, values, 'right')
  ranks = len(row) - right  # the entries above
  tied = right - np.searchsorted(sorted_row, values, 'left')
  for i in np.flatnonzero(tied > 1):  # exact ties are rare in real scores: count them one by one
    ranks[i] += np.count_nonzero(row[:columns[i]] == values[i])
  return ranks


def top_k(rows: np.ndarray, k: int) -> np.ndarray:
  """[R, k] indices of each row's k highest entries, in stable descending order (ties: lower
  index first). rows [R, N]: a partition per row, then a sort of the k."""
  k = min(k, rows.shape[1])
  picked = np.argpartition(rows, rows.shape[1] - k, axis=1)[:, -k:]
  values = np.take_along_axis(rows, picked, axis=1)
  top = np.take_along_axis(picked, np.lexsort((picked, -values), axis=-1), axis=1)
  # A tie at the k-th value: the partition may have kept a later index than a stable sort would.
  kth = values.min(axis=1, keepdims=True)
  for r in np.flatnonzero((rows == kth).sum(axis=1) > (values == kth).sum(axis=1)):
    above = np.flatnonzero(rows[r] > kth[r])
    candidates = np.concatenate([above, np.flatnonzero(rows[r] == kth[r])[:k - len(above)]])
    top[r] = candidates[np.lexsort((candidates, -rows[r, candidates]))]
  return top
