"""The one timing rule of the benchmarks, JAX's and PyTorch's side alike (no framework imported)."""
import statistics
import time


def median_seconds(fn, reps: int) -> float:
  """Median seconds of `reps` calls after one warm-up; fn must block until done."""
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
