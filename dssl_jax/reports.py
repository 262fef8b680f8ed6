"""What a run prints and logs: the progress line, scalars (JSON lines + TensorBoard), a profiler
trace, results tables. Its pictures are plots.py's."""
import collections
import json
import os
import statistics
import time

import jax
import ml_collections

from dssl_jax.errors import UserError

METRICS = ('R1', 'R5', 'R10', 'mAP', 'mINP')  # the columns of every results table
SEPARATION = 'separation/'  # feature statistics logged beside the loss terms, not loss terms


def say(text: str):
  """A progress or result line, from process 0 only: N hosts print it once, not N times."""
  if jax.process_index() == 0:
    print(text, flush=True)


class MetricLog:
  """Scalars into WORKDIR/metrics.jsonl and TensorBoard (clu.metric_writers), process 0 only.

  The run's config goes into TensorBoard as hyper-parameters, so that a sweep's runs appear side by
  side, with their metrics, in TensorBoard's HParams view.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict | None = None):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard = os.path.join(workdir, 'tensorboard')
    self.enabled = jax.process_index() == 0
    self.config = config
    self._writer = None  # created on the first write

  def resume_at(self, step: int):
    """Forgets what was logged after `step`: a resumed run logs those steps again."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(self.path + '.tmp', self.path)

  def write(self, step: int, values: dict, prefix: str = ''):
    if not self.enabled:
      return
    scalars = {prefix + k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')
    if self._writer is None:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._writer = metric_writers.SummaryWriter(self.tensorboard)
      if self.config is not None:
        self._writer.write_hparams(self.config.to_dict())
    self._writer.write_scalars(step, scalars)
    self._writer.flush()


class StepTrace:
  """A JAX profiler trace of the training steps `first`..`last` (1-based, as the progress line
  counts them) into `folder` (the workdir's TensorBoard folder: its Profile tab shows it)."""

  def __init__(self, window, folder: str):
    if window and not (len(window) == 2 and 1 <= window[0] <= window[1]):
      raise UserError(f'config.train.profile_steps {tuple(window)}: want (first, last) with '
                       '1 <= first <= last, or () for none')
    self.window, self.folder, self.active = tuple(window), folder, False

  def before(self, step: int):
    """Called with the number of steps done before the next one runs."""
    if self.window and step + 1 == self.window[0]:
      jax.profiler.start_trace(self.folder)
      self.active = True

  def after(self, step: int, outputs):
    if self.active and step >= self.window[1]:
      self.stop(outputs)

  def stop(self, outputs=None):
    if self.active:
      jax.block_until_ready(outputs)  # the traced steps' device work, not only their dispatch
      jax.profiler.stop_trace()
      self.active = False
      say(f'profile of steps {self.window[0]}-{self.window[1]} written to {self.folder} '
          f'(tensorboard --logdir {self.folder}, Profile tab)')


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


class Progress:
  """images/s and the ETA of the whole run, from the median rate of the last few intervals
  between lines: one interval that also compiled a step or ran a validation moves neither."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int, window: int = 5):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._last_step, self._last_time = start_step, time.time()
    self._rates = collections.deque(maxlen=window)

  def line(self, step: int, epoch: int, epochs: int, stage: int, values: dict) -> str:
    now = time.time()
    self._rates.append((step - self._last_step) / max(now - self._last_time, 1e-9))
    self._last_step, self._last_time = step, now
    rate = statistics.median(self._rates)
    terms = ' '.join(f'{k} {v:.3g}' for k, v in sorted(values.items())
                     if k not in ('loss', 'lr') and not k.startswith(SEPARATION))
    return (f'stage {stage} epoch {epoch + 1}/{epochs} step {step}/{self.total_steps} '
            f'loss {values["loss"]:.4g} [{terms}] lr {values["lr"]:.2g} '
            f'{rate * self.batch_size:.1f} img/s ETA {_duration((self.total_steps - step) / max(rate, 1e-9))}')


def metrics_line(metrics: dict) -> str:
  return ' '.join(f'{k} {metrics[k]:.2f}' for k in METRICS)


def mean_and_std(runs: list[dict]) -> dict:
  """{metric: (mean, std)} over the runs of one row (std with n - 1; 0 for a single run)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = {k: np.array([run[k] for run in runs], float) for k in METRICS}
  return {k: (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
          for k, v in values.items()}


def _cell(value) -> str:
  return f'{value[0]:.2f} ± {value[1]:.2f}' if isinstance(value, tuple) else f'{value:.2f}'


def metrics_table(rows: dict) -> str:
  """Markdown table: one row per name, columns R1 R5 R10 mAP mINP; a (mean, std) cell prints as
  mean ± std."""
  lines = ['| | ' + ' | '.join(METRICS) + ' |', '|---' * (len(METRICS) + 1) + '|']
  for name, m in rows.items():
    lines.append(f'| {name} | ' + ' | '.join(_cell(m[k]) for k in METRICS) + ' |')
  return '\n'.join(lines)
