"""Two-stage training (paper 3.3 and 4.1.2), data parallel, resumable: the step and the loop.

One jit-compiled step over a ("data",) mesh of every device: parameters replicated, the batch
sharded (BN statistics are then global-batch). Orbax checkpoints every N steps and at the end of
each stage; rerunning the same command resumes at the same step with the same data order. The
state, its optimizers and schedules are dssl_jax/state.py's.

In reading order: the jit-compiled step, then the run: `run_training` (both stages, one loop),
`validate` (val after each epoch, the best checkpoint) and `train_and_evaluate`. The data stack
(TensorFlow) is imported by the functions that read data, so that the step builds where it is not
installed.
"""
import contextlib
import functools
import os
import signal
import threading
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dssl_jax import checkpoints, evaluate, losses, plots, reports
from dssl_jax import state as state_lib
from dssl_jax.data import augment as augment_lib
from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import dssl


# ------------------------------------------------------------------------ step

def train_step(state: state_lib.TrainState, batch: dict, *, model, tx, lr_schedule, config,
               stage: int):
  """One update: the stage's loss (eq. 18 or 21), its gradient, Adam; metrics are scalars, the
  learning rate of this step among them."""
  rng = jax.random.fold_in(state.rng, state.step)
  if batch['image'].dtype == jnp.uint8:  # config.data.augment_on='device': augmented here
    batch = batch | {'image': augment_lib.train_images(
        batch['image'], jax.random.fold_in(rng, 1), augment_lib.augmentations(config.data))}

  def loss_fn(params):
    features, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch, train=True,
        frozen_backbone=stage == 1, rngs={'sdm': rng}, mutable=['batch_stats'])
    if stage == 1:
      total, terms = losses.stage1_loss(features, batch)
    else:
      total, terms = losses.stage2_loss(features, batch, config)
      terms |= {reports.SEPARATION + k: v for k, v in losses.separation_stats(features).items()}
    return total, (terms, updates.get('batch_stats', {}))

  (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {'loss': total, **terms, 'lr': lr_schedule(state.step)}
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  return state, metrics


def make_train_step(config, model: dssl.DSSL, stage: int, steps_per_epoch: int,
                    mesh: jax.sharding.Mesh, donate: bool = True) -> Callable:
  """train_step of `stage`, jit-compiled: state replicated, batch as global_batch shards it."""
  step = functools.partial(
      train_step, model=model, tx=state_lib.make_optimizer(config, stage, steps_per_epoch),
      lr_schedule=state_lib.learning_rate(config, stage, steps_per_epoch), config=config,
      stage=stage)
  return jax.jit(step, out_shardings=(state_lib.replicated(mesh),) * 2,
                 donate_argnums=0 if donate else ())


def global_batch(local: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's rows of the batch, as one array sharded over every device of the mesh."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def check_finite(metrics: dict, step: int, saved: checkpoints.ocp.CheckpointManager):
  bad = {k: float(v) for k, v in jax.device_get(metrics).items() if not np.isfinite(v)}
  if bad:
    raise UserError(f'non-finite loss at step {step} ({bad}); the last good checkpoint '
                    f'(step {saved.latest_step()}) is kept in {saved.directory}')


# ------------------------------------------------------------------------ the run

@contextlib.contextmanager
def on_stop_signals(first: Callable[[str], None]):
  """While open, the first SIGTERM or SIGINT (Ctrl-C) calls first(its name); a second SIGINT
  aborts at once (KeyboardInterrupt). Yields the names received."""
  received = []

  def handler(number, _):
    if received and number == signal.SIGINT:
      raise KeyboardInterrupt
    received.append(signal.Signals(number).name)
    first(received[-1])
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for number, old in previous.items():
      signal.signal(number, old)


def run_training(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Runs (or resumes) both stages in WORKDIR; returns the final state."""
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  meta = pipeline.dataset_meta(config.data)
  checkpoints.save_workdir_files(workdir, config, meta)
  model, mesh = state_lib.make_model(config, meta), state_lib.make_mesh()
  train_input = pipeline.train_input(config, meta, jax.process_index(), jax.process_count())
  steps_per_epoch = train_input.steps_per_epoch
  epochs = config.train.stage1_epochs + config.train.stage2_epochs
  log = reports.MetricLog(workdir, config)
  encoder = evaluate.Encoder(model, mesh)
  stop = threading.Event()

  def on_signal(name: str):
    logging.warning(f'{name}: saving a checkpoint at the next step, then stopping (a second '
                    'Ctrl-C stops at once, unsaved)')
    stop.set()

  with checkpoints.managers(workdir, config) as (saved, best):
    # Start, or resume from the newest readable checkpoint.
    restored = checkpoints.latest_state(
        saved, functools.partial(state_lib.abstract_train_state, config, model, mesh))
    if restored:
      state, stage = restored[0], restored[1]['stage']
      reports.say(f'resuming from step {restored[1]["step"]} (stage {stage})')
    else:
      state = state_lib.create_train_state(config, model, mesh)
      stage = state_lib.stage_of(0, config)
    step = int(state.step)
    log.resume_at(step)
    step_fn = make_train_step(config, model, stage, steps_per_epoch, mesh)
    progress = reports.Progress(epochs * steps_per_epoch, step, config.train.batch_size)
    trace = reports.StepTrace(config.train.profile_steps, log.tensorboard)
    with contextlib.ExitStack() as cleanup:
      received = cleanup.enter_context(on_stop_signals(on_signal))
      cleanup.callback(trace.stop)
      for epoch in range(step // steps_per_epoch, epochs):
        if state_lib.stage_of(epoch, config) != stage:  # stage 1 -> 2: a new optimizer from scratch
          checkpoints.save_state(saved, state, stage)
          stage = state_lib.stage_of(epoch, config)
          state = state_lib.start_stage(state, config, stage, mesh)
          step_fn = make_train_step(config, model, stage, steps_per_epoch, mesh)
          reports.say(f'stage {stage} starts at epoch {epoch + 1}')

        # One epoch; resumed mid-epoch, the same order, skipping what was done.
        batches = train_input.epoch(epoch, skip=step - epoch * steps_per_epoch)
        metrics = None
        for batch in batches:
          trace.before(step)
          state, metrics = step_fn(state, global_batch(batch, mesh))
          step += 1
          trace.after(step, metrics)
          if step % config.train.log_every_steps == 0 or step % steps_per_epoch == 0:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            log.write(step, values, prefix='train/')
            reports.say(progress.line(step, epoch, epochs, stage, values))
          if step % config.train.checkpoint_every_steps == 0 or stop.is_set():
            check_finite(metrics, step, saved)
            checkpoints.save_state(saved, state, stage)
          if stop.is_set():
            saved.wait_until_finished()
            raise SystemExit(f'stopped by {received[0]} at step {step}: rerun the same command '
                             'to resume')
        if metrics is not None:
          check_finite(metrics, step, saved)

        # Val: the best checkpoint is chosen on val, never on test.
        every = config.train.eval_every_epochs
        if meta.kept.get('val', {}).get('images') and (epoch + 1) % every == 0:
          validate(encoder, state, config, meta, epoch, log, best)
      checkpoints.save_state(saved, state, stage)
  return state


def validate(encoder: evaluate.Encoder, state: state_lib.TrainState, config,
             meta: formats.DatasetMeta,
             epoch: int, log: reports.MetricLog, best: checkpoints.ocp.CheckpointManager):
  """The val split's metrics after `epoch`; the variables into WORKDIR/best when R1 improves."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  metrics = evaluate.evaluate_split(encoder, variables, config, meta, 'val',
                                    state_lib.stage_of(epoch, config)).metrics
  log.write(int(state.step), metrics, prefix='val/')
  reports.say(f'  val after epoch {epoch + 1}: ' + reports.metrics_line(metrics))
  if metrics['R1'] > checkpoints.best_r1(best):
    checkpoints.save_best(best, int(state.step), variables, {'epoch': epoch + 1, **metrics})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=train: both stages (or what is left of them), then the final evaluation, which a
  SIGTERM or SIGINT stops, saying how to run it again."""
  run_training(config, workdir)

  def on_signal(name: str):
    raise SystemExit(f'{name} during the final evaluation: stopped it. Training is complete and '
                     f'saved: --mode=eval with --workdir {workdir} evaluates it')
  with on_stop_signals(on_signal):
    if jax.process_index() == 0:
      plots.loss_curves(os.path.join(workdir, 'metrics.jsonl'),
                        os.path.join(workdir, 'loss_curves.png'))
    return evaluate.evaluate_workdir(config, workdir)
