"""Two-stage training (paper 3.3 and 4.1.2), data parallel, resumable.

Stage 1: ID loss on V_G and T_G; the pre-trained encoders are frozen (an optax partition with
set_to_zero, BN statistics kept, no gradient: XLA computes no backward pass for them). Stage 2:
the full loss, everything trained, a fresh Adam whose rate is divided by 10 every 10 epochs (or
IRRA's warm-up and cosine, the encoders at a lower rate, for CLIP).

One jit-compiled step over a ("data",) mesh of every device: parameters replicated, the batch
sharded (BN statistics are then global-batch). Orbax checkpoints every N steps and at the end of
each stage; rerunning the same command resumes at the same step with the same data order.

In reading order: the model and optimizer (schedules, stage-1 freezing), the train state, the
jit-compiled step, then the run: `train` (both stages, one loop), `validate`, `evaluate_workdir`,
`train_and_evaluate` and `run` (what --mode does). The data stack (TensorFlow) is imported by the
functions that read data, so that the state and the step build where it is not installed.
"""
import functools
import os
import signal
import threading
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from dssl_jax import checkpoints, evaluate, losses, plots, reports, weights
from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import dssl


# ------------------------------------------------------------------------ model, optimizer

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # a raw uint32 key: step keys are fold_in(rng, step), so resume is exact


def make_model(config: ml_collections.ConfigDict, meta: formats.DatasetMeta) -> dssl.DSSL:
  return dssl.DSSL(ml_collections.FrozenConfigDict(config.model), meta.vocab_size,
                   meta.num_train_identities)


def make_mesh() -> jax.sharding.Mesh:
  # Auto axes (not jax.make_mesh's Explicit default): the global-batch similarity matrices of the
  # losses must be allowed to be computed from a sharded batch.
  return jax.sharding.Mesh(np.array(jax.devices()), ('data',))


def stage_of(epoch: int, config) -> int:
  return 1 if epoch < config.train.stage1_epochs else 2


def encoder_names(config) -> tuple[str, ...]:
  """The top-level modules that are pre-trained encoders: stage 1 freezes them; stage 2 may give
  them their own learning rate. The bi-GRU is trained from scratch, so it is not one."""
  return ('backbone', 'text') if config.model.backbone == 'clip' else ('backbone',)


def stage2_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Counted from stage 2's first step. 'step' (the paper): stage2_lr, divided by
  lr_decay_factor every lr_decay_epochs. 'cosine' (IRRA): a linear warm-up from warmup_factor *
  stage2_lr over warmup_epochs, then a cosine to 0 at the end of stage 2."""
  t = config.train
  if t.stage2_schedule == 'cosine':
    warmup = t.warmup_epochs * steps_per_epoch
    return optax.join_schedules([
        optax.linear_schedule(t.warmup_factor * t.stage2_lr, t.stage2_lr, warmup),
        optax.cosine_decay_schedule(t.stage2_lr, t.stage2_epochs * steps_per_epoch - warmup)],
        [warmup])
  if t.stage2_schedule != 'step':
    raise UserError(f"config.train.stage2_schedule must be 'step' or 'cosine', got "
                    f"{t.stage2_schedule!r}")
  decays = range(1, -(-t.stage2_epochs // t.lr_decay_epochs))  # boundaries inside stage 2
  return optax.piecewise_constant_schedule(
      t.stage2_lr, {k * t.lr_decay_epochs * steps_per_epoch: t.lr_decay_factor for k in decays})


def learning_rate(config, stage: int, steps_per_epoch: int) -> optax.Schedule:
  """The (head) rate of `stage` at a global step: what the progress line and TensorBoard show."""
  if stage == 1:
    return lambda step: jnp.asarray(config.train.stage1_lr, jnp.float32)
  stage1_steps = config.train.stage1_epochs * steps_per_epoch
  schedule = stage2_schedule(config, steps_per_epoch)
  return lambda step: schedule(step - stage1_steps)


def make_optimizer(config, stage: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """Stage 1: Adam on the heads, the encoders frozen. Stage 2: Adam on everything; with
  encoder_lr_factor, bias_lr_factor or weight_decay set (IRRA's recipe for CLIP), one Adam per
  (encoder or head, bias or weight) group, each at its rate, L2 on weights only."""
  encoders = encoder_names(config)

  def labels(params, label):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({path: label(path) for path in flat})

  if stage == 1:
    return optax.partition(
        {'trainable': optax.adam(config.train.stage1_lr), 'frozen': optax.set_to_zero()},
        lambda params: labels(params, lambda path: 'frozen' if path[0] in encoders else 'trainable'))
  t = config.train
  schedule = stage2_schedule(config, steps_per_epoch)
  if (t.encoder_lr_factor, t.bias_lr_factor, t.weight_decay) == (1.0, 1.0, 0.0):
    return optax.adam(schedule)

  def group(encoder: bool, bias: bool):
    factor = (t.encoder_lr_factor if encoder else 1.0) * (t.bias_lr_factor if bias else 1.0)
    adam = optax.adam(lambda step: factor * schedule(step))
    return adam if bias or not t.weight_decay else optax.chain(
        optax.add_decayed_weights(t.weight_decay), adam)

  return optax.partition(
      {f'{e}/{b}': group(e, b) for e in (True, False) for b in (True, False)},
      lambda params: labels(params, lambda path: f'{path[0] in encoders}/{path[-1] == "bias"}'))



# ------------------------------------------------------------------------ state

def _with_pretrained_encoders(config, variables: dict) -> dict:
  """config.model.backbone_weights (ImageNet ResNet-50 or CLIP, converted) in place of the random
  initialisation; the heads and the bi-GRU stay random."""
  weights.check_backbone_weights(config.model)
  path, params = config.model.backbone_weights, variables['params']
  if path == weights.SCRATCH:
    return variables
  if config.model.backbone == 'clip':
    loaded = weights.load_backbone(path, {'image': params['backbone'], 'text': params['text']},
                                   'config.model.clip and data.image_size')
    params['backbone'], params['text'] = loaded['image'], loaded['text']
    reports.say(f'CLIP encoders initialised from {path}')
  else:
    backbone = weights.load_backbone(path, {'params': params['backbone'],
                                            'batch_stats': variables['batch_stats']['backbone']})
    params['backbone'] = backbone['params']
    variables['batch_stats']['backbone'] = backbone['batch_stats']
    reports.say(f'backbone initialised from {path}')
  return variables


def create_train_state(config, model: dssl.DSSL, mesh: jax.sharding.Mesh) -> TrainState:
  """Step 0: initialised variables (pre-trained encoders where configured) and the first stage's
  optimizer state, replicated over the mesh."""
  params_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = _with_pretrained_encoders(
      config, flax.core.unfreeze(dssl.init_variables(model, params_rng, config)))
  tx = make_optimizer(config, stage_of(0, config), steps_per_epoch=1)  # its state's structure
  state = TrainState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
                     tx.init(variables['params']), step_rng)
  return jax.device_put(state, _replicated(mesh))


def abstract_train_state(config, model: dssl.DSSL, mesh: jax.sharding.Mesh,
                         stage: int) -> TrainState:
  """Shapes, dtypes and shardings of a `stage` state, without computing one: what a checkpoint
  is restored into."""
  tx = make_optimizer(config, stage, steps_per_epoch=1)
  def build():
    variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
    return TrainState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
                      tx.init(variables['params']), jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_replicated(mesh)),
                      jax.eval_shape(build))


def start_stage(state: TrainState, config, stage: int, mesh: jax.sharding.Mesh) -> TrainState:
  """The state with `stage`'s optimizer from scratch (stage 1 -> 2: a fresh Adam)."""
  tx = make_optimizer(config, stage, steps_per_epoch=1)
  return state.replace(opt_state=jax.device_put(tx.init(state.params), _replicated(mesh)))


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


# ------------------------------------------------------------------------ step

def train_step(state: TrainState, batch: dict, *, model, tx, learning_rate, config, stage: int):
  """One update: the stage's loss (eq. 18 or 21), its gradient, Adam; metrics are scalars, the
  learning rate of this step among them."""
  rng = jax.random.fold_in(state.rng, state.step)

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
  metrics = {'loss': total, **terms, 'lr': learning_rate(state.step)}
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  return state, metrics


def make_train_step(config, model: dssl.DSSL, stage: int, steps_per_epoch: int,
                    mesh: jax.sharding.Mesh, donate: bool = True) -> Callable:
  """train_step of `stage`, jit-compiled: state replicated, batch as global_batch shards it."""
  step = functools.partial(
      train_step, model=model, tx=make_optimizer(config, stage, steps_per_epoch),
      learning_rate=learning_rate(config, stage, steps_per_epoch), config=config, stage=stage)
  return jax.jit(step, out_shardings=(_replicated(mesh),) * 2,
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

def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Runs (or resumes) both stages in WORKDIR; returns the final state."""
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  workdir, t = os.path.abspath(workdir), config.train
  os.makedirs(workdir, exist_ok=True)
  meta = pipeline.dataset_meta(config.data)
  checkpoints.save_workdir_files(workdir, config, meta)
  model, mesh = make_model(config, meta), make_mesh()
  train_input = pipeline.TrainInput(config, meta, jax.process_index(), jax.process_count())
  steps_per_epoch, epochs = train_input.steps_per_epoch, t.stage1_epochs + t.stage2_epochs
  log = reports.MetricLog(workdir, config)
  encoder = evaluate.Encoder(model, mesh)
  stop = threading.Event()

  def on_sigterm(*_):
    logging.warning('SIGTERM: saving a checkpoint at the next step, then stopping')
    stop.set()

  with checkpoints.managers(workdir, config) as (saved, best):
    # Start, or resume from the newest readable checkpoint.
    restored = checkpoints.latest_state(
        saved, functools.partial(abstract_train_state, config, model, mesh))
    if restored:
      state, stage = restored[0], restored[1]['stage']
      reports.say(f'resuming from step {restored[1]["step"]} (stage {stage})')
    else:
      state, stage = create_train_state(config, model, mesh), stage_of(0, config)
    step = int(state.step)
    step_fn = make_train_step(config, model, stage, steps_per_epoch, mesh)
    progress = reports.Progress(epochs * steps_per_epoch, step, t.batch_size)
    trace = reports.StepTrace(t.profile_steps, log.tensorboard)
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
      for epoch in range(step // steps_per_epoch, epochs):
        if stage_of(epoch, config) != stage:  # stage 1 -> 2: a new optimizer from scratch
          checkpoints.save_state(saved, state, stage)
          stage = stage_of(epoch, config)
          state = start_stage(state, config, stage, mesh)
          step_fn = make_train_step(config, model, stage, steps_per_epoch, mesh)
          reports.say(f'stage {stage} starts at epoch {epoch + 1}')

        # One epoch; resumed mid-epoch, the same order, skipping what was done.
        batches = train_input.epoch(epoch)
        for _ in range(step - epoch * steps_per_epoch):
          next(batches)
        metrics = None
        for batch in batches:
          trace.before(step)
          state, metrics = step_fn(state, global_batch(batch, mesh))
          step += 1
          trace.after(step, metrics)
          if step % t.log_every_steps == 0 or step % steps_per_epoch == 0:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            log.write(step, values, prefix='train/')
            reports.say(progress.line(step, epoch, epochs, stage, values))
          if step % t.checkpoint_every_steps == 0 or stop.is_set():
            check_finite(metrics, step, saved)
            checkpoints.save_state(saved, state, stage)
          if stop.is_set():
            saved.wait_until_finished()
            raise SystemExit(f'stopped by SIGTERM at step {step}: rerun the same command to '
                             'resume')
        if metrics is not None:
          check_finite(metrics, step, saved)

        # Val: the best checkpoint is chosen on val, never on test.
        if meta.kept.get('val', {}).get('images') and (epoch + 1) % t.eval_every_epochs == 0:
          validate(encoder, state, config, meta, epoch, log, best)
      checkpoints.save_state(saved, state, stage)
    finally:
      trace.stop()
      signal.signal(signal.SIGTERM, previous_handler)
  return state


def validate(encoder: evaluate.Encoder, state: TrainState, config, meta: formats.DatasetMeta,
             epoch: int, log: reports.MetricLog, best: checkpoints.ocp.CheckpointManager):
  """The val split's metrics after `epoch`; the variables into WORKDIR/best when R1 improves."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  metrics = evaluate.evaluate(encoder, variables, config, meta, 'val')['metrics']
  log.write(int(state.step), metrics, prefix='val/')
  reports.say(f'  val after epoch {epoch + 1}: ' + reports.metrics_line(metrics))
  if metrics['R1'] > checkpoints.best_r1(best):
    checkpoints.save_best(best, int(state.step), variables, {'epoch': epoch + 1, **metrics})


def load_variables(config, workdir: str, model: dssl.DSSL,
                   mesh: jax.sharding.Mesh) -> tuple[dict, str]:
  """config.eval.checkpoint's variables of a trained WORKDIR, and which checkpoint they are."""
  with checkpoints.managers(workdir, config) as (saved, best):
    return checkpoints.evaluation_variables(
        config, saved, best, functools.partial(abstract_train_state, config, model, mesh))


def zero_shot_variables(config, model: dssl.DSSL, mesh: jax.sharding.Mesh) -> tuple[dict, str]:
  """config.model.backbone_weights' CLIP encoders (the heads, random, go unused): what
  config.eval.zero_shot ranks with, with no training."""
  path = config.model.backbone_weights
  if config.model.backbone != 'clip' or path in ('', weights.SCRATCH):
    raise UserError('config.eval.zero_shot ranks with pre-trained CLIP features: set '
                    "config.model.backbone='clip' and config.model.backbone_weights to a converted "
                    f'CLIP file (got backbone {config.model.backbone!r}, weights {path!r})')
  variables = _with_pretrained_encoders(  # no optimizer state: nothing trains
      config, flax.core.unfreeze(dssl.init_variables(model, jax.random.PRNGKey(config.seed),
                                                     config)))
  return jax.device_put(variables, _replicated(mesh)), f'zero-shot CLIP ({path})'


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: the final evaluation of a trained workdir (see evaluate.final_evaluation), or
  of CLIP's own features with config.eval.zero_shot."""
  from dssl_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top
  meta = pipeline.dataset_meta(config.data)
  model, mesh = make_model(config, meta), make_mesh()
  if config.eval.zero_shot:
    variables, which = zero_shot_variables(config, model, mesh)
  else:
    variables, which = load_variables(config, workdir, model, mesh)
  return evaluate.final_evaluation(
      evaluate.Encoder(model, mesh, config.eval.zero_shot), variables, which, config, meta,
      os.path.abspath(workdir), image_root=os.path.join(builders.manual_dir(config.data), 'imgs'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=train: both stages (or what is left of them), then the final evaluation."""
  train(config, workdir)
  if jax.process_index() == 0:
    plots.loss_curves(os.path.join(workdir, 'metrics.jsonl'),
                      os.path.join(workdir, 'loss_curves.png'))
  return evaluate_workdir(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str | None, mode: str):
  """What `python -m dssl_jax.main --mode=prepare|train|eval` does (launch.sweep trains each row
  with it): process 0 prepares the dataset, the others wait for it on shared storage."""
  from dssl_jax.data import builders  # pylint: disable=g-import-not-at-top
  if mode != 'prepare' and not workdir:
    raise UserError(f'--mode={mode} needs --workdir')
  for name, path in (('--workdir', workdir), ('config.data.data_dir', config.data.data_dir),
                     ('config.data.manual_dir', config.data.manual_dir)):
    if path and '://' in path:
      raise UserError(f'{name} {path!r}: dssl_jax reads and writes through the local filesystem; '
                      'mount the bucket (gcsfuse, s3fs) and pass the mounted path')
  if mode == 'train':
    weights.check_backbone_weights(config.model)
  if config.train.distributed:
    jax.distributed.initialize()
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  if mode in ('prepare', 'train') or (mode == 'eval' and config.eval.zero_shot):
    if jax.process_index() == 0:
      builders.prepare(config.data)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('dataset prepared')
  if mode == 'train':
    train_and_evaluate(config, workdir)
  elif mode == 'eval':
    evaluate_workdir(config, workdir)
