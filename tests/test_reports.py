"""Logs: scalars into metrics.jsonl and TensorBoard, the config as TensorBoard hyper-parameters;
profiler traces."""
import glob
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from dssl_jax.configs import synthetic
from dssl_jax import reports
from dssl_jax.errors import UserError


def _events(folder):
  for path in sorted(glob.glob(f'{folder}/events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      yield from ((event.step, value) for value in event.summary.value)


def test_scalars_and_hyperparameters_reach_tensorboard(tmp_path):
  config = synthetic.get_config()
  config.model.sdm_zero_ratio = 0.25
  log = reports.MetricLog(str(tmp_path), config)
  log.write(10, {'loss': 2.5, 'align1': 1.0, 'note': 'not a number'}, prefix='train/')
  log.write(20, {'R1': 40.0}, prefix='val/')
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(line) for line in f] == [
        {'step': 10, 'train/loss': 2.5, 'train/align1': 1.0}, {'step': 20, 'val/R1': 40.0}]
  scalars, hparams = {}, {}
  for step, value in _events(tmp_path / 'tensorboard'):
    if value.metadata.plugin_data.plugin_name == 'hparams':
      data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
      hparams |= {k: v.WhichOneof('kind') and getattr(v, v.WhichOneof('kind'))
                  for k, v in data.session_start_info.hparams.items()}
    else:
      scalars[(value.tag, step)] = float(tf.make_ndarray(value.tensor))
  assert scalars == {('train/loss', 10): 2.5, ('train/align1', 10): 1.0, ('val/R1', 20): 40.0}
  assert hparams['model.sdm_zero_ratio'] == 0.25 and hparams['model.sdm_zeroing'] == 'loss'
  assert hparams['train.batch_size'] == 32 and hparams['data.image_size.0'] == 192


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(reports.jax, 'process_index', lambda: 1)
  log = reports.MetricLog(str(tmp_path), synthetic.get_config())
  log.write(1, {'loss': 1.0})
  assert list(tmp_path.iterdir()) == []


def test_step_trace_covers_its_window_only(tmp_path, capsys):
  """A trace starts before step `first` and stops after step `last`, with their device work."""
  step_fn = jax.jit(lambda x: x @ x)
  trace = reports.StepTrace((2, 3), str(tmp_path))
  x, started = np.eye(64, dtype=np.float32), []
  for step in range(5):
    trace.before(step)
    started.append(trace.active)
    x = step_fn(x)
    trace.after(step + 1, x)
  assert started == [False, True, True, False, False]
  assert len(list(tmp_path.glob('plugins/profile/*/*.xplane.pb'))) == 1
  assert capsys.readouterr().out.startswith(f'profile of steps 2-3 written to {tmp_path}')
  with pytest.raises(UserError, match=r'config.train.profile_steps \(3, 2\): want \(first, last\)'):
    reports.StepTrace((3, 2), str(tmp_path))


def test_a_resumed_run_logs_each_step_once(tmp_path):
  log = reports.MetricLog(str(tmp_path), synthetic.get_config())
  for step in (10, 20, 30):  # the run reached step 30; its last checkpoint was at step 20
    log.write(step, {'loss': float(step)}, prefix='train/')
  log.write(20, {'R1': 40.0}, prefix='val/')
  log.resume_at(20)
  log.write(30, {'loss': 29.0}, prefix='train/')
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(line) for line in f] == [
        {'step': 10, 'train/loss': 10.0}, {'step': 20, 'train/loss': 20.0},
        {'step': 20, 'val/R1': 40.0}, {'step': 30, 'train/loss': 29.0}]


def test_throughput_and_eta_ride_out_one_slow_interval(monkeypatch):
  """An interval that also compiled or validated moves the median rate not at all."""
  clock = iter([0.0, 10.0, 20.0, 320.0, 330.0])  # 10 steps in 10 s, but once in 300 s
  monkeypatch.setattr(reports.time, 'time', lambda: next(clock))
  progress = reports.Progress(total_steps=1000, start_step=0, batch_size=32)
  values = {'loss': 1.0, 'lr': 1e-3}
  lines = [progress.line(step, 0, 1, 2, values) for step in (10, 20, 30, 40)]
  assert [line.split('] lr 0.001 ')[1] for line in lines] == [
      '32.0 img/s ETA 16m30s', '32.0 img/s ETA 16m20s', '32.0 img/s ETA 16m10s',
      '32.0 img/s ETA 16m00s']
