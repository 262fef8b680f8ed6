"""The one timing rule of the benchmarks, JAX's and PyTorch's side alike (no framework imported)."""
import statistics
import time
import tracemalloc


def median_seconds(fn, reps: int) -> float:
  """Median seconds of `reps` calls after one warm-up; fn must block until done."""
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_megabytes(fn) -> float:
  """Peak of the memory that `fn` allocates beyond what exists when it starts (numpy's arrays
  included: numpy reports them to tracemalloc), in MB. Run apart from timing: tracing costs time."""
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1] / 2**20
  finally:
    tracemalloc.stop()
