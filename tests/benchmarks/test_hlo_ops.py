"""The executed-op count (benchmarks/hlo_ops.py) on programs whose count is known by hand."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import hlo_ops


def _count(fn, *args):
  return hlo_ops.count(jax.jit(fn).lower(*args).compile().as_text())


def _loop(trips: int, x):
  return jax.lax.fori_loop(0, trips, lambda i, c: jnp.sin(c) * 2 + i, x)


@pytest.mark.parametrize('trips', [3, 7])
def test_a_loop_body_counts_once_per_iteration(trips):
  x = jnp.ones(4)
  counts = {n: _count(lambda x, n=n: _loop(n, x).sum(), x) for n in (trips, trips + 1, 2 * trips)}
  assert [c['loop_iterations'] for c in counts.values()] == [trips, trips + 1, 2 * trips]
  body = counts[trips + 1]['ops'] - counts[trips]['ops']
  assert body > 0 and counts[2 * trips]['ops'] - counts[trips]['ops'] == trips * body


def test_nested_loops_multiply_and_a_fusion_is_one_op():
  x = jnp.ones(4)
  nested = _count(lambda x: jax.lax.fori_loop(
      0, 3, lambda j, c: _loop(5, jnp.cos(c) + j), x).sum(), x)
  assert nested['loop_iterations'] == 3 + 3 * 5
  fused = _count(lambda x: (jnp.sin(x) * 2 + jnp.cos(x)).sum(), x)
  assert fused == {'ops': 1, 'loop_iterations': 0}  # one fusion; its body is not counted


def test_a_conditional_counts_its_larger_branch():
  x = jnp.ones(4)
  got = _count(lambda x, p: jax.lax.cond(p, lambda x: _loop(4, x), jnp.sin, x).sum(), x, True)
  assert got['loop_iterations'] == 4


def test_parsing_needs_an_entry_and_known_trip_counts():
  with pytest.raises(ValueError, match='no ENTRY'):
    hlo_ops.count('%f (a: f32[]) -> f32[] {\n  ROOT %a = f32[] parameter(0)\n}\n')
  text = jax.jit(lambda x: jax.lax.while_loop(lambda c: c.sum() < 10, lambda c: c + 1, x)).lower(
      jnp.ones(4)).compile().as_text()
  with pytest.raises(ValueError, match='no known trip count'):
    hlo_ops.count(text)
