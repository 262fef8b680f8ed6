"""Ranks and top-k from counts agree with a stable argsort, ties included."""
import numpy as np
import pytest

from dssl_jax import ranking


@pytest.mark.parametrize('seed', range(3))
def test_ranks_and_top_k_are_a_stable_argsorts(seed):
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, 4, (20, 15)) / 3.0  # many ties, at every position
  order = np.argsort(-rows, axis=1, kind='stable')
  for k in (1, 4, 15, 30):
    np.testing.assert_array_equal(ranking.top_k(rows, k), order[:, :k])
  for row, want in zip(rows, order):
    columns = rng.permutation(15)[:6]
    position = np.argsort(want)  # position[g]: where g stands in the stable order
    np.testing.assert_array_equal(ranking.ranks_in_row(row, np.sort(row), columns),
                                  position[columns])
