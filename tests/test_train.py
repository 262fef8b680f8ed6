"""Training: frozen stage 1, exact resume after SIGTERM, 1 vs 2 devices, NaN stop, outputs."""
import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from dssl_jax.configs import base
from dssl_jax import checkpoints, evaluate, train
from dssl_jax import similarity as similarity_lib
from dssl_jax import state as state_lib
from dssl_jax.data import builders, pipeline
from dssl_jax.errors import UserError
from tests import processes as processes_lib
from tests.helpers import leaves, reference, tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_mesh_input(config):
  meta = pipeline.dataset_meta(config.data)
  model, mesh = state_lib.make_model(config, meta), state_lib.make_mesh()
  return model, mesh, pipeline.train_input(config, meta)


def _saved_steps(folder) -> list[int]:
  """The steps an orbax manager has written into `folder`."""
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def _epochs_that(monkeypatch, config, change):
  """TrainInput.epoch yields change(global batch index, batch) instead of each batch."""
  steps_per_epoch = _model_mesh_input(config)[2].steps_per_epoch
  original = pipeline.TrainInput.epoch
  def epoch(self, e, skip=0):
    for i, batch in enumerate(original(self, e, skip)):
      yield change(e * steps_per_epoch + skip + i, batch)
  monkeypatch.setattr(pipeline.TrainInput, 'epoch', epoch)
  return steps_per_epoch


def test_stage1_freezes_the_backbone_and_stage2_trains_it(tiny_dataset):
  config = tiny_train_config(tiny_dataset[0])  # 2 stage-2 epochs, the rate decayed after 1
  model, mesh, train_input = _model_mesh_input(config)
  steps_per_epoch = train_input.steps_per_epoch
  state = state_lib.create_train_state(config, model, mesh)
  before = leaves({'params': state.params, 'batch_stats': state.batch_stats})
  batch = train.global_batch(next(train_input.epoch(0)), mesh)
  after1, metrics = train.make_train_step(config, model, 1, steps_per_epoch, mesh)(state, batch)
  assert float(metrics['lr']) == pytest.approx(config.train.stage1_lr)
  after1 = leaves({'params': after1.params, 'batch_stats': after1.batch_stats})
  for key, value in before.items():
    if '/backbone/' in key:
      np.testing.assert_array_equal(after1[key], value, err_msg=key)
  assert not np.array_equal(after1['params/image_global/Dense_0/kernel'],
                            before['params/image_global/Dense_0/kernel'])
  state = state_lib.start_stage(state_lib.create_train_state(config, model, mesh), config, 2, mesh)
  # the second epoch of stage 2, after one decay: the step reports the rate it used
  state = state.replace(step=state.step + (config.train.stage1_epochs + 1) * steps_per_epoch)
  after2, metrics = train.make_train_step(config, model, 2, steps_per_epoch, mesh)(state, batch)
  t = config.train
  assert float(metrics['lr']) == pytest.approx(t.stage2_lr * t.lr_decay_factor) != t.stage2_lr
  after2 = leaves({'params': after2.params, 'batch_stats': after2.batch_stats})
  assert not np.array_equal(after2['params/backbone/conv1/kernel'],
                            before['params/backbone/conv1/kernel'])
  assert not np.array_equal(after2['batch_stats/backbone/bn1/mean'],
                            before['batch_stats/backbone/bn1/mean'])


def test_stage1_step_has_no_backbone_backward_pass(tiny_dataset):
  """The frozen backbone costs a forward pass only: stage 1 has far fewer FLOPs than stage 2."""
  config = tiny_train_config(tiny_dataset[0])
  model, mesh, train_input = _model_mesh_input(config)
  state = state_lib.create_train_state(config, model, mesh)
  batch = train.global_batch(next(train_input.epoch(0)), mesh)
  states = {1: state, 2: state_lib.start_stage(state, config, 2, mesh)}
  flops = {stage: train.make_train_step(config, model, stage, train_input.steps_per_epoch, mesh)
           .lower(states[stage], batch).compile().cost_analysis()['flops'] for stage in (1, 2)}
  assert flops[1] < 0.6 * flops[2], flops


@pytest.mark.slow
@pytest.mark.parametrize('name', ['SIGTERM', 'SIGINT'])
def test_sigterm_or_ctrl_c_then_rerun_resumes_exactly(name, tiny_dataset, tmp_path, monkeypatch):
  config = tiny_train_config(tiny_dataset[0])
  reference = train.run_training(config, str(tmp_path / 'straight'))

  def signal_before_step_23(i, batch):  # mid stage 2, between checkpoints
    if i == 22:
      os.kill(os.getpid(), signal.Signals[name])
    return batch
  steps_per_epoch = _epochs_that(monkeypatch, config, signal_before_step_23)
  with pytest.raises(SystemExit, match=f'stopped by {name} at step 23'):
    train.run_training(config, str(tmp_path / 'resumed'))
  assert _saved_steps(tmp_path / 'resumed' / 'checkpoints')[-1] == 23
  monkeypatch.undo()
  resumed = train.run_training(config, str(tmp_path / 'resumed'))
  assert int(resumed.step) == int(reference.step) == 3 * steps_per_epoch
  want, got = leaves(reference.params), leaves(resumed.params)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_second_ctrl_c_aborts_at_once_and_the_handlers_are_restored():
  first = []
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt):
    with train.on_stop_signals(first.append) as received:
      os.kill(os.getpid(), signal.SIGINT)
      assert first == received == ['SIGINT']
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_during_the_final_evaluation_says_what_it_does(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'run_training', lambda config, workdir: None)  # trained already
  monkeypatch.setattr(train.plots, 'loss_curves', lambda *paths: None)
  monkeypatch.setattr(evaluate, 'evaluate_workdir',
                      lambda config, workdir: os.kill(os.getpid(), signal.SIGTERM))
  with pytest.raises(SystemExit, match=r'SIGTERM during the final evaluation: stopped it\. '
                     r'Training is complete and saved: --mode=eval with --workdir .* evaluates'):
    train.train_and_evaluate(base.get_config(), str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path,
                                                                 monkeypatch):
  config = tiny_train_config(tiny_dataset[0])
  _epochs_that(monkeypatch, config, lambda i, batch: batch | {  # float images, made NaN
      'image': np.full(batch['image'].shape, np.nan, np.float32)} if i >= 12 else batch)
  with pytest.raises(UserError, match=r'non-finite loss at step (14|15|20).*step 10\) is kept'):
    train.run_training(config, str(tmp_path))
  assert _saved_steps(tmp_path / 'checkpoints')[-1] == 10


def _truncate(folder):
  """As a bad copy or a full disk leaves a checkpoint: every file cut to half its size."""
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)


def _truncate_largest(folder):
  """The largest array file cut to 1,000 bytes: the metadata reads, the arrays do not. Whether
  TensorStore's reader threads then print hundreds of asyncio tracebacks ("Event loop is
  closed") depends on timing; a command-line evaluation here printed 566 into the log."""
  paths = [os.path.join(root, name) for root, _, files in os.walk(folder) for name in files]
  os.truncate(max(paths, key=os.path.getsize), 1000)


@pytest.fixture(scope='module')
def stage1_run(tiny_dataset, tmp_path_factory):
  """(config, workdir) of a stage-1-only run checkpointed every 4 steps; tests use copies."""
  config = tiny_train_config(tiny_dataset[0])
  config.train.stage1_epochs, config.train.stage2_epochs, config.train.checkpoint_every_steps = 1, 0, 4
  workdir = tmp_path_factory.mktemp('stage1')
  train.run_training(config, str(workdir))
  return config, workdir


def _copy_of(run, tmp_path):
  """The config of `run` and a copy of its workdir in tmp_path."""
  shutil.copytree(run[1], tmp_path, dirs_exist_ok=True)
  return run[0].copy_and_resolve_references()


def test_unreadable_checkpoints_are_moved_aside_and_the_newest_good_one_is_used(
    stage1_run, tmp_path, capsys, caplog):
  config = _copy_of(stage1_run, tmp_path)
  workdir = str(tmp_path)
  steps, best = _saved_steps(tmp_path / 'checkpoints'), _saved_steps(tmp_path / 'best')[-1]
  assert len(steps) == 3 and best == steps[-1]
  _truncate(os.path.join(workdir, 'checkpoints', str(steps[-1])))
  capsys.readouterr()
  train.run_training(config, workdir)  # the rerun: one warning line, then resume
  assert f'resuming from step {steps[-2]} (stage 1)' in capsys.readouterr().out
  _truncate(os.path.join(workdir, 'best', str(best)))
  model, mesh, _ = _model_mesh_input(config)
  assert state_lib.load_variables(config, workdir, model, mesh).which == (
      f'the last checkpoint (step {steps[-1]})')
  noise = ('custom data configuration', 'Waiting for previous save')  # TFDS; orbax under load
  warnings = [r.getMessage() for r in caplog.records if r.levelname in ('WARNING', 'ERROR')
              and not any(n in r.getMessage() for n in noise)]
  assert warnings == [
      f'checkpoint {workdir}/checkpoints/{steps[-1]} is unreadable (truncated or corrupt files): '
      f'moved to {workdir}/checkpoints.unreadable/{steps[-1]} (what the read raised: '
      f'{workdir}/checkpoint_reads.log)',
      f'checkpoint {workdir}/best/{best} is unreadable (truncated or corrupt files): '
      f'moved to {workdir}/best.unreadable/{best} (what the read raised: '
      f'{workdir}/checkpoint_reads.log)']
  assert 'Traceback' in (tmp_path / 'checkpoint_reads.log').read_text()
  assert os.listdir(os.path.join(workdir, 'checkpoints.unreadable')) == [str(steps[-1])]
  for step in os.listdir(os.path.join(workdir, 'checkpoints')):
    _truncate(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(UserError, match='no readable checkpoint in .*train first'):
    evaluate.evaluate_workdir(config, workdir)


def test_an_unreadable_best_is_stood_in_for_by_the_last_checkpoint_in_its_own_file(
    stage1_run, tmp_path, caplog):
  """results.json holds only the checkpoint the run chose: the stand-in's results go elsewhere."""
  config = _copy_of(stage1_run, tmp_path)
  workdir, last = str(tmp_path), _saved_steps(tmp_path / 'checkpoints')[-1]
  (tmp_path / 'results.json').write_text('{"R1": 12.5}')  # the best checkpoint's, from before
  _truncate(os.path.join(workdir, 'best', str(_saved_steps(tmp_path / 'best')[-1])))
  metrics = evaluate.evaluate_workdir(config, workdir)
  assert (tmp_path / 'results.json').read_text() == '{"R1": 12.5}'
  with open(tmp_path / f'results_test_{last}.json') as f:
    saved = json.load(f)
  assert saved['evaluated'] == f'the last checkpoint (step {last})'
  assert saved['R1'] == metrics['R1']
  assert [r.getMessage() for r in caplog.records if 'does not read back' in r.getMessage()] == [
      f'the best checkpoint on val does not read back: evaluating the last checkpoint (step '
      f'{last}) into results_test_{last}.json instead']


def test_a_stage_1_checkpoint_is_ranked_without_the_untrained_ca_terms(stage1_run, tmp_path):
  """Sim_TI's CA weights follow the chosen checkpoint: stage 1 trains no CA head."""
  config = _copy_of(stage1_run, tmp_path)
  evaluate.evaluate_workdir(config, str(tmp_path))
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['evaluated'].startswith('the best checkpoint on val') and results['stage'] == 1
  assert (results['lambda1'], results['lambda2']) == (0.0, 0.0)
  assert similarity_lib.sim_ti_weights(config) == (0.5, 0.5)  # a stage-2 checkpoint's


_EVAL_STAGE1_RUN = """
import sys
sys.path.insert(0, {root!r})
from dssl_jax import cli, modes
from tests.helpers import tiny_config, tiny_train_config
cli.quiet_logging()  # as the command line logs
config = tiny_train_config(tiny_config({data_dir!r}))
config.train.stage1_epochs, config.train.stage2_epochs, config.train.checkpoint_every_steps = 1, 0, 4
modes.run(config, {workdir!r}, 'eval')
"""


@pytest.mark.parametrize('corrupt', [_truncate, _truncate_largest])
def test_evaluating_past_a_corrupt_best_checkpoint_is_quiet_and_keeps_the_results(
    stage1_run, tmp_path, corrupt):
  """--mode=eval in a fresh process: at most 3 lines beyond the normal output, the unreadable step
  moved aside, results.json as it was, the stand-in's results in their own file, and what the
  read raised in the workdir's log."""
  _copy_of(stage1_run, tmp_path)
  best, last = _saved_steps(tmp_path / 'best')[-1], _saved_steps(tmp_path / 'checkpoints')[-1]
  (tmp_path / 'results.json').write_text('{"R1": 12.5}')
  corrupt(tmp_path / 'best' / str(best))
  script = _EVAL_STAGE1_RUN.format(root=ROOT, data_dir=stage1_run[0].data.data_dir,
                                   workdir=str(tmp_path))
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert len([line for line in out.stderr.splitlines() if line.strip()]) <= 3, out.stderr[-3000:]
  assert (tmp_path / 'results.json').read_text() == '{"R1": 12.5}'
  assert os.listdir(tmp_path / 'best.unreadable') == [str(best)]
  assert (tmp_path / f'results_test_{last}.json').is_file()
  assert 'Traceback' in (tmp_path / 'checkpoint_reads.log').read_text()


_STEPS = """
import itertools, json, os, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
from dssl_jax import train
from dssl_jax import state as state_lib
from dssl_jax.data import pipeline
from tests.helpers import tiny_config, tiny_train_config
if 'SLURM_JOB_ID' in os.environ:  # one of N processes (tests/processes.py)
  jax.distributed.initialize()
config = tiny_train_config(tiny_config({data_dir!r}))
meta = pipeline.dataset_meta(config.data)
model, mesh = state_lib.make_model(config, meta), state_lib.make_mesh()
train_input = pipeline.train_input(config, meta)
state = state_lib.start_stage(state_lib.create_train_state(config, model, mesh), config, 2, mesh)
step = train.make_train_step(config, model, 2, train_input.steps_per_epoch, mesh)
rows = config.train.batch_size // jax.process_count()  # each process feeds its rows of ...
mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
for batch in itertools.islice(train_input.epoch(0), 3):  # ... the same global batches
  local = {{k: v[mine] for k, v in batch.items()}}
  state, metrics = step(state, train.global_batch(local, mesh))
leaves = jax.tree.leaves(jax.device_get(state.params))
if jax.process_index() == 0:
  print(json.dumps({{'devices': jax.device_count(), 'processes': jax.process_count(),
                    'loss': float(metrics['loss']),
                    'params': [float(np.abs(x).sum()) for x in leaves]}}))
"""


def _steps(config, devices: int, processes: int) -> dict:
  """_STEPS's result on `devices` devices spread over `processes` processes."""
  script = _STEPS.format(root=ROOT, data_dir=config.data.data_dir)
  outs = processes_lib.spawn([sys.executable, '-c', script], processes, cwd=ROOT,
                             env={'JAX_NUM_CPU_DEVICES': str(devices // processes)})
  for out in outs:
    assert out.returncode == 0, processes_lib.why_it_failed(out.stderr)
  result = json.loads(outs[0].stdout.strip().splitlines()[-1])
  assert (result['devices'], result['processes']) == (devices, processes)
  return result


@pytest.fixture(scope='module')
def one_device_steps(tiny_dataset):
  return _steps(tiny_dataset[0], 1, 1)


@pytest.mark.parametrize('devices,processes', [
    (2, 1), pytest.param(2, 2, marks=pytest.mark.slow)], ids=['2 devices', '2 processes'])
def test_three_steps_are_the_same_on_one_device_and_on_several(devices, processes, tiny_dataset,
                                                               one_device_steps):
  """Data parallel over 2 local devices, or over 2 processes (hosts) on gloo, as on 1 device:
  same loss, same parameters, on the same global batches."""
  result = _steps(tiny_dataset[0], devices, processes)
  assert result['loss'] == pytest.approx(one_device_steps['loss'], rel=1e-5)
  # Adam divides by sqrt(v) + eps, so an element whose gradient is near 0 turns float order into
  # a visible step: the stem's BN bias (|x| summed: 0.018) moved by 3.6e-5 between 1 and 2 devices.
  np.testing.assert_allclose(result['params'], one_device_steps['params'], rtol=1e-5, atol=1e-4)


_TWO_MANAGERS = """
import sys
import jax, numpy as np, orbax.checkpoint as ocp
sys.path.insert(0, {root!r})
from dssl_jax import checkpoints
jax.distributed.initialize()
managers = [checkpoints.manager({workdir!r}, name, 1) for name in ('checkpoints', 'best')]
for manager in managers:  # process 0 still writes the first while process 1 (nothing to write) ...
  manager.save(11, args=ocp.args.StandardSave({{'w': np.arange(1e6)}}))  # ... reaches its barrier
for manager in managers:
  manager.wait_until_finished()
  manager.close()
print(sorted(manager.all_steps() for manager in managers))
"""


@pytest.mark.slow
def test_checkpoints_and_best_save_the_same_step_at_once_on_two_processes(tmp_path):
  """The run saves a step where validation improves in both managers; their background writes
  must not meet at one barrier (with one name, orbax fails: "Barrier ... is already ongoing")."""
  script = _TWO_MANAGERS.format(root=ROOT, workdir=str(tmp_path))
  for out in processes_lib.spawn([sys.executable, '-c', script], 2, cwd=ROOT, timeout=240):
    assert out.returncode == 0, processes_lib.why_it_failed(out.stderr)
    assert out.stdout.strip().splitlines()[-1] == '[[11], [11]]'


_EVAL = """
import json, sys
sys.path.insert(0, {root!r})
from dssl_jax.configs import base
from dssl_jax import evaluate
from tests.helpers import tiny_config, tiny_train_config
config = tiny_train_config(tiny_config({data_dir!r}))
print(json.dumps(evaluate.evaluate_workdir(config, {workdir!r})))
"""


def test_eval_checkpoint_picks_a_kept_step_into_its_own_results_file(stage1_run, tmp_path):
  config = _copy_of(stage1_run, tmp_path)
  model, mesh, _ = _model_mesh_input(config)
  abstract = functools.partial(state_lib.abstract_train_state, config, model, mesh)
  with checkpoints.managers(str(tmp_path), config) as (kept, _):
    steps = sorted(kept.all_steps())
    saved = {step: leaves(checkpoints.read_state(kept, step, abstract)[0].params)
             for step in (steps[0], steps[-1])}
  assert any(not np.array_equal(saved[steps[0]][k], saved[steps[-1]][k]) for k in saved[steps[0]])
  for choice, which, step in (('last', f'the last checkpoint (step {steps[-1]})', steps[-1]),
                              (str(steps[0]), f'checkpoint {steps[0]}', steps[0])):
    config.eval.checkpoint = choice
    loaded = state_lib.load_variables(config, str(tmp_path), model, mesh)
    variables, got = loaded.variables, loaded.which
    assert got == which
    for key, value in leaves(variables['params']).items():
      np.testing.assert_array_equal(value, saved[step][key])
  evaluate.evaluate_workdir(config, str(tmp_path))
  with open(tmp_path / f'results_test_{steps[0]}.json') as f:
    assert json.load(f)['evaluated'] == f'checkpoint {steps[0]}'
  assert os.path.isfile(tmp_path / f'retrieval_test_{steps[0]}.png')
  assert not os.path.exists(tmp_path / 'results.json')  # the best checkpoint's file is its own
  config.eval.checkpoint = '7'
  with pytest.raises(UserError, match=f"checkpoint='7': best, last or a step kept in .*{steps[0]}"):
    evaluate.evaluate_workdir(config, str(tmp_path))


@pytest.mark.slow
def test_eval_from_checkpoint_in_a_fresh_process_on_two_devices(tiny_dataset, tmp_path):
  config = tiny_train_config(tiny_dataset[0])
  in_process = train.train_and_evaluate(config, str(tmp_path))
  for name in ('results.json', 'config.json', 'metrics.jsonl', 'loss_curves.png',
               'retrieval_test.png'):
    assert os.path.isfile(tmp_path / name), name
  assert os.listdir(tmp_path / 'tensorboard')
  with open(tmp_path / 'results.json') as f:
    saved = json.load(f)
  assert set(saved) >= {'R1', 'R5', 'R10', 'mAP', 'mINP', 'rerank', 'image_to_text'}
  # Sim_TI's weights, as used: a stage-1 checkpoint's CA heads are untrained
  assert (saved['lambda1'], saved['lambda2']) == {1: (0, 0), 2: (0.5, 0.5)}[saved['stage']]
  script = _EVAL.format(root=ROOT, data_dir=config.data.data_dir, workdir=str(tmp_path))
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT,
                       env=os.environ | {'JAX_NUM_CPU_DEVICES': '2'}, timeout=600)
  assert out.returncode == 0, processes_lib.why_it_failed(out.stderr)
  fresh = json.loads(out.stdout.strip().splitlines()[-1])
  for key in ('R1', 'R5', 'R10', 'mAP', 'mINP'):
    assert fresh[key] == pytest.approx(in_process[key], abs=1e-6), key
    assert fresh['rerank'][key] == pytest.approx(in_process['rerank'][key], abs=1e-6), key


def test_a_workdir_saved_before_an_option_existed_loads_with_its_default(tmp_path):
  config = base.get_config()
  config.model.width = 8
  saved = config.to_dict()
  del saved['model']['zero_init_residual'], saved['eval']['checkpoint']
  del saved['loss']['rank_reduction']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  (tmp_path / checkpoints.META_FILE).write_text(json.dumps({'vocabulary': ['<pad>', 'red'],
                                                      'num_train_identities': 3}))
  loaded, meta = checkpoints.load_workdir(str(tmp_path))
  assert loaded.model.zero_init_residual == base.get_config().model.zero_init_residual
  assert loaded.eval.checkpoint == 'best'
  assert loaded.loss.rank_reduction == 'mean'  # what eq. 3 did before the option existed
  assert loaded.model.width == 8 and loaded.data.image_size == tuple(config.data.image_size)
  assert meta.vocabulary == ['<pad>', 'red'] and meta.num_train_identities == 3


def test_eval_without_checkpoint_or_with_another_model_is_one_clear_error(tiny_dataset,
                                                                          tmp_path):
  config = tiny_train_config(tiny_dataset[0])
  with pytest.raises(UserError, match='no readable checkpoint in .*train first'):
    evaluate.evaluate_workdir(config, str(tmp_path))
  config.train.stage1_epochs, config.train.stage2_epochs = 1, 0
  model, mesh, _ = _model_mesh_input(config)
  with checkpoints.managers(str(tmp_path), config) as (saved, _):
    checkpoints.save_state(saved, state_lib.create_train_state(config, model, mesh), stage=1)
  other = config.copy_and_resolve_references()
  other.model.embed_dim = 64
  with pytest.raises(UserError, match='does not fit the configured model'):
    evaluate.evaluate_workdir(other, str(tmp_path))


def test_mixed_precision_trains_like_float32(tiny_dataset):
  """Stage-2 steps on one batch from the same start: bfloat16 compute follows float32's losses."""
  curves = {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny_train_config(tiny_dataset[0])
    config.model.dtype = dtype
    model, mesh, train_input = _model_mesh_input(config)
    state = state_lib.start_stage(state_lib.create_train_state(config, model, mesh), config, 2,
                                  mesh)
    step = train.make_train_step(config, model, 2, train_input.steps_per_epoch, mesh)
    batch = train.global_batch(next(train_input.epoch(0)), mesh)
    curves[dtype] = []
    for _ in range(12):
      state, metrics = step(state, batch)
      curves[dtype].append(float(metrics['loss']))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype('float32')}
  print({k: [round(x, 2) for x in v] for k, v in curves.items()})
  assert curves['float32'][-1] < 0.75 * curves['float32'][0]  # it trains
  np.testing.assert_allclose(curves['bfloat16'], curves['float32'], rtol=0.1)


@pytest.mark.slow
def test_tiny_clip_trains_on_the_synthetic_default_far_above_chance(tmp_path):
  """configs/synthetic_clip_tiny.py, shortened to 1 + 3 epochs, from random weights. The test
  split's 300 identities (4 images each) put chance at R1 0.33, R10 3.3 and mAP about 0.4; this
  run gave R1 1.4, R10 15.8, mAP 3.4 (1 + 6 epochs: R1 3.5, R10 22.2)."""
  from dssl_jax.configs import synthetic_clip_tiny  # pylint: disable=g-import-not-at-top
  config = synthetic_clip_tiny.get_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.model.clip.bpe_path = reference('open_clip.tokenizer').default_bpe()
  config.train.stage2_epochs = 3
  builders.prepare(config.data)
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  print({k: metrics[k] for k in ('R1', 'R5', 'R10', 'mAP')})
  assert metrics['R1'] > 2 * 100 / 300 and metrics['R10'] > 3 * 1000 / 300
  assert metrics['mAP'] > 2.0
