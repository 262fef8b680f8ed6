"""Two-stage training (paper 3.3 and 4.1.2), data parallel, resumable.

Stage 1: ID loss on V_G and T_G; the pre-trained encoders are frozen (an optax partition with
set_to_zero, BN statistics kept, no gradient: XLA computes no backward pass for them). Stage 2:
the full loss, everything trained, a fresh Adam whose rate is divided by 10 every 10 epochs (or
IRRA's warm-up and cosine, the encoders at a lower rate, for CLIP).

One jit-compiled step over a ("data",) mesh of every device: parameters replicated, the batch
sharded (BN statistics are then global-batch). Orbax checkpoints every N steps and at the end of
each stage; rerunning the same command resumes at the same step with the same data order.
"""
import contextlib
import functools
import itertools
import json
import os
import signal
import time
from typing import Any

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from configs import base as base_config
from dssl_jax import evaluate, losses, reports, weights
from dssl_jax.data import builders, pipeline
from dssl_jax.errors import UserError
from dssl_jax.models import dssl


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # a raw uint32 key: step keys are fold_in(rng, step), so resume is exact


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


def train_step(state: TrainState, batch: dict, *, model, tx, config, stage: int):
  """One update: the stage's loss (eq. 18 or 21), its gradient, Adam; metrics are scalars."""
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
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  return state, {'loss': total, **terms}


def _checkpoint_manager(workdir: str, name: str, max_to_keep: int) -> ocp.CheckpointManager:
  """WORKDIR/NAME. Each manager names its barriers after its folder: both save at a step where
  validation improves, and with one name their background writes of that step meet at the same
  barrier in another process, which fails the save ("Barrier ... is already ongoing")."""
  return ocp.CheckpointManager(
      os.path.join(workdir, name),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)))


class Trainer:
  """Holds what one run needs: model, mesh, compiled steps, checkpoints, logs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               meta: pipeline.DatasetMeta | None = None):
    """`meta` defaults to the built dataset's; inference without the dataset passes the one saved
    in the workdir (see `load_meta`)."""
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.meta = meta or pipeline.dataset_meta(config.data)
    self.model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), self.meta.vocab_size,
                           self.meta.num_train_identities)
    self.mesh = make_mesh()
    self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.data_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('data'))
    self.total_epochs = config.train.stage1_epochs + config.train.stage2_epochs
    self.encoder = evaluate.Encoder(self.model, self.mesh)
    with _orbax_quiet():  # an unreadable checkpoint is reported once, when it is restored
      self.checkpoints = _checkpoint_manager(self.workdir, 'checkpoints',
                                             config.train.keep_checkpoints)
      self.best = _checkpoint_manager(self.workdir, 'best', 1)
    self.log = reports.MetricLog(self.workdir, config)
    self._steps = {}
    self._stop = False

  @functools.cached_property
  def input(self) -> pipeline.TrainInput:
    return pipeline.TrainInput(self.config, self.meta, jax.process_index(), jax.process_count())

  @property
  def steps_per_epoch(self) -> int:
    return self.input.steps_per_epoch

  def close(self):
    """Waits for pending saves and stops orbax's background threads."""
    self.checkpoints.close()
    self.best.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # ---------------------------------------------------------------- state

  def _tx(self, stage):
    return make_optimizer(self.config, stage, self.steps_per_epoch)

  def _initial_variables(self, rng):
    return dssl.init_variables(self.model, rng, self.config)

  def _abstract_state(self, stage: int) -> TrainState:
    tx = make_optimizer(self.config, stage, steps_per_epoch=1)  # the state's structure only
    def build():
      variables = self._initial_variables(jax.random.PRNGKey(0))
      return TrainState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
                        tx.init(variables['params']), jax.random.PRNGKey(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
                        jax.eval_shape(build))

  def initial_state(self) -> TrainState:
    params_rng, step_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))
    variables = flax.core.unfreeze(self._initial_variables(params_rng))
    weights.check_backbone_weights(self.config.model)
    path = self.config.model.backbone_weights
    params = variables['params']
    if path != weights.SCRATCH and self.config.model.backbone == 'clip':
      loaded = weights.load_backbone(path, {'image': params['backbone'], 'text': params['text']},
                                     'config.model.clip and data.image_size')
      params['backbone'], params['text'] = loaded['image'], loaded['text']
      reports.say(f'CLIP encoders initialised from {path}')
    elif path != weights.SCRATCH:
      backbone = weights.load_backbone(path, {'params': params['backbone'],
                                              'batch_stats': variables['batch_stats']['backbone']})
      params['backbone'] = backbone['params']
      variables['batch_stats']['backbone'] = backbone['batch_stats']
      reports.say(f'backbone initialised from {path}')
    stage = stage_of(0, self.config)
    state = TrainState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
                       self._tx(stage).init(variables['params']), step_rng)
    return jax.device_put(state, self.replicated)

  def read(self, step: int) -> tuple[TrainState, dict]:
    """Checkpoint `step` onto this run's devices, and its meta."""
    meta = self.checkpoints.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    state = self.checkpoints.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(self._abstract_state(meta['stage']))))['state']
    return state, meta

  def restore(self) -> tuple[TrainState, dict] | None:
    """The newest readable checkpoint, onto this run's devices, and its meta (None: there is none)."""
    return newest_readable(self.checkpoints, self.read)

  def save(self, state: TrainState, stage: int):
    step = int(state.step)
    if step in self.checkpoints.all_steps():
      return
    self.checkpoints.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({'stage': stage, 'step': step})),
                          force=True)

  # ---------------------------------------------------------------- steps

  def step_fn(self, stage: int):
    if stage not in self._steps:
      self._steps[stage] = jax.jit(
          functools.partial(train_step, model=self.model, tx=self._tx(stage), config=self.config,
                            stage=stage),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    return self._steps[stage]

  def global_batch(self, local: dict) -> dict:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.data_sharding, x),
                        local)

  # ---------------------------------------------------------------- loop

  def _on_sigterm(self, *_):
    logging.warning('SIGTERM: saving a checkpoint at the next step, then stopping')
    self._stop = True

  def train(self) -> TrainState:
    """Runs (or resumes) both stages; returns the final state."""
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
        f.write(self.config.to_json_best_effort(indent=2))
      with open(os.path.join(self.workdir, META_FILE), 'w') as f:  # for inference without data
        json.dump({'vocabulary': self.meta.vocabulary,
                   'num_train_identities': self.meta.num_train_identities,
                   'tagger': self.meta.tagger}, f)
    restored = self.restore()
    if restored:
      state, meta = restored
      reports.say(f'resuming from step {meta["step"]} (stage {meta["stage"]})')
      stage = meta['stage']
    else:
      state, stage = self.initial_state(), stage_of(0, self.config)
    previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    trace = reports.StepTrace(self.config.train.profile_steps, self.log.tensorboard)
    try:
      state = self._loop(state, stage, trace)
    finally:
      trace.stop()
      signal.signal(signal.SIGTERM, previous_handler)
      self.checkpoints.wait_until_finished()
      self.best.wait_until_finished()
    return state

  def _loop(self, state: TrainState, stage: int, trace: reports.StepTrace) -> TrainState:
    spe, t = self.steps_per_epoch, self.config.train
    total_steps = self.total_epochs * spe
    step = int(state.step)
    timer = reports.Progress(total_steps, step, t.batch_size)
    for epoch in range(step // spe, self.total_epochs):
      if stage_of(epoch, self.config) != stage:  # stage 1 -> 2: a new optimizer from scratch
        self.save(state, stage)
        stage = stage_of(epoch, self.config)
        state = state.replace(opt_state=jax.device_put(self._tx(stage).init(state.params),
                                                       self.replicated))
        reports.say(f'stage {stage} starts at epoch {epoch + 1}')
      step_fn = self.step_fn(stage)
      batches = self.input.epoch(epoch)
      for _ in range(step - epoch * spe):  # resume mid-epoch: same order, skip what was done
        next(batches)
      metrics = None
      for batch in batches:
        trace.before(step)
        state, metrics = step_fn(state, self.global_batch(batch))
        step += 1
        trace.after(step, metrics)
        if step % t.log_every_steps == 0 or step % spe == 0:
          self._report(metrics, step, epoch, stage, timer)
        if step % t.checkpoint_every_steps == 0:
          self._check_finite(metrics, step)
          self.save(state, stage)
        if self._stop:
          self._check_finite(metrics, step)
          self.save(state, stage)
          self.checkpoints.wait_until_finished()
          raise SystemExit(f'stopped by SIGTERM at step {step}: rerun the same command to resume')
      if metrics is not None:
        self._check_finite(metrics, step)
      self._end_of_epoch(state, epoch)
    self.save(state, stage)
    return state

  def _check_finite(self, metrics, step):
    bad = {k: float(v) for k, v in jax.device_get(metrics).items() if not np.isfinite(v)}
    if bad:
      last = self.checkpoints.latest_step()
      raise UserError(f'non-finite loss at step {step} ({bad}); the last good checkpoint '
                      f'(step {last}) is kept in {self.checkpoints.directory}')

  def _report(self, metrics, step, epoch, stage, timer):
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    values['lr'] = float(self._learning_rate(step, stage))
    self.log.write(step, values, prefix='train/')
    reports.say(timer.line(step, epoch, self.total_epochs, stage, values))

  def _learning_rate(self, step, stage):
    if stage == 1:
      return self.config.train.stage1_lr
    stage1_steps = self.config.train.stage1_epochs * self.steps_per_epoch
    return stage2_schedule(self.config, self.steps_per_epoch)(step - 1 - stage1_steps)

  def _end_of_epoch(self, state, epoch):
    """Val evaluation; the best checkpoint is chosen on val, never on test."""
    if (not self.meta.kept.get('val', {}).get('images')
        or (epoch + 1) % self.config.train.eval_every_epochs):
      return
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    metrics = evaluate.evaluate(self.encoder, variables, self.config, self.meta, 'val')['metrics']
    self.log.write(int(state.step), metrics, prefix='val/')
    reports.say(f'  val after epoch {epoch + 1}: ' + reports.metrics_line(metrics))
    best = newest_readable(self.best, lambda step: self.best.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'], BEST_ITEMS)
    if metrics['R1'] > (best['R1'] if best else -1.0):
      self.best.save(int(state.step), args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          meta=ocp.args.JsonSave({'epoch': epoch + 1, **metrics})), force=True)

  def evaluation_variables(self) -> tuple[dict, str]:
    """config.eval.checkpoint's variables (best: the best on val when a val split picked one,
    else the latest checkpoint's; last; or a kept step), onto this run's devices, whatever device
    count saved them."""
    self.checkpoints.wait_until_finished()
    self.best.wait_until_finished()
    choice = self.config.eval.checkpoint
    abstract = self._abstract_state(2)
    abstract = {'params': abstract.params, 'batch_stats': abstract.batch_stats}
    try:
      if choice == 'best':
        best = newest_readable(self.best, lambda step: (step, self.best.restore(
            step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract)))[
                'variables']), BEST_ITEMS)
        if best:
          return best[1], f'the best checkpoint on val (step {best[0]})'
      if choice in ('best', 'last'):
        restored = self.restore()
      else:
        kept = self.checkpoints.all_steps()
        if not choice.isdigit() or int(choice) not in kept:
          raise UserError(f'config.eval.checkpoint={choice!r}: best, last or a step kept in '
                          f'{self.checkpoints.directory} ({", ".join(map(str, sorted(kept)))})')
        restored = self.read(int(choice))
    except (ValueError, KeyError) as e:  # orbax's words for a tree of other names or shapes
      raise UserError(f'the checkpoint in {self.workdir} does not fit the configured model '
                      f'(config.model, dataset vocabulary or identities differ): '
                      f'{str(e).splitlines()[0][:300]}') from None
    if not restored:
      raise UserError(f'no readable checkpoint in {self.checkpoints.directory}: train first '
                      '(--mode=train with the same --workdir)')
    state, meta = restored
    which = (f'the last checkpoint (step {meta["step"]})' if choice in ('best', 'last')
             else f'checkpoint {meta["step"]}')
    return {'params': state.params, 'batch_stats': state.batch_stats}, which

  def final_evaluation(self) -> dict:
    """config.eval.split, plain and re-ranked, into WORKDIR/results.json (results_<split>.json for
    another split, results_<split>_<checkpoint>.json for another checkpoint), a table and a
    picture."""
    config, split = self.config, self.config.eval.split
    variables, which = self.evaluation_variables()
    start = time.time()
    result = evaluate.evaluate(self.encoder, variables, config, self.meta, split)
    metrics = dict(result['metrics'])
    rows = {'DSSL': metrics}
    if config.eval.rerank:
      metrics['rerank'] = evaluate.reranked_metrics(result, config.eval.rerank_k1,
                                                    config.eval.rerank_k_near)
      rows['DSSL + RR'] = metrics['rerank']
    if config.eval.image_to_text:
      metrics['image_to_text'] = evaluate.retrieval_metrics(
          result['similarity'].T, result['gallery']['person_id'], result['queries']['person_id'])
      rows['image to text'] = metrics['image_to_text']
    seconds = time.time() - start
    unmatched = metrics['queries_without_match']
    lambda1, lambda2 = evaluate.sim_ti_weights(config)
    reports.say(f'{split} split, {which}, {metrics["queries"]} queries, '
                f'{len(result["gallery"]["person_id"])} images, Sim_TI with lambda1 = {lambda1:g}, '
                f'lambda2 = {lambda2:g} ({seconds:.1f}s)'
                + (f'; {unmatched} queries whose person has no gallery image were left out'
                   if unmatched else '') + ':')
    reports.say(reports.metrics_table(rows))
    reports.say(f'R1 has a standard error of {metrics["R1_stderr"]:.2f} over this split\'s '
                'people: another split of as many would move it by about that.')
    if jax.process_index() == 0:
      other = '' if config.eval.checkpoint == 'best' else f'_{config.eval.checkpoint}'
      name = 'results.json' if (split, other) == ('test', '') else f'results_{split}{other}.json'
      save_results(os.path.join(self.workdir, name), metrics,
                   {'split': split, 'evaluated': which, 'eval_seconds': round(seconds, 1),
                    'lambda1': lambda1, 'lambda2': lambda2})
      reports.retrieval_picture(
          os.path.join(self.workdir, f'retrieval_{split}{other}.png'), result['similarity'],
          result['queries']['text'], result['queries']['person_id'],
          result['gallery']['file_path'], result['gallery']['person_id'],
          os.path.join(builders.manual_dir(config.data), 'imgs'))
    return metrics


META_FILE = 'vocabulary.json'
BEST_ITEMS = ('variables', 'meta')  # of a best/ checkpoint (checkpoints/: state and meta)


def newest_readable(manager: ocp.CheckpointManager, read, items=('state', 'meta')):
  """read(step) of the newest checkpoint that reads back; None when none does.

  A checkpoint that fails to read, and also fails to read without a target (so the failure is
  the files', not a model that differs), is moved aside into DIRECTORY.unreadable/STEP, never
  deleted, with one warning line: a truncated copy or a full disk must not stop every rerun.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      with _orbax_quiet():
        return read(step)
    except Exception:  # pylint: disable=broad-except
      if _reads_without_target(manager, step, items):
        raise  # the files are fine: the caller reports the mismatch
    aside = epath.Path(f'{manager.directory}.unreadable') / str(step)
    for n in itertools.count(1):  # an earlier run's step of the same number may be there
      if not aside.exists():
        break
      aside = aside.with_name(f'{step}-{n}')
    if jax.process_index() == 0:
      aside.parent.mkdir(parents=True, exist_ok=True)
      (manager.directory / str(step)).rename(aside)
      logging.warning('checkpoint %s is unreadable (truncated or corrupt files): moved to %s',
                      manager.directory / str(step), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'moved aside {manager.directory}/{step}')
    with _orbax_quiet():
      manager.reload()
  return None


def _reads_without_target(manager, step, items) -> bool:
  """Whether every item of checkpoint `step` reads back as it was saved."""
  try:
    with _orbax_quiet():
      manager.restore(step, args=ocp.args.Composite(**{
          name: ocp.args.JsonRestore() if name == 'meta' else ocp.args.StandardRestore()
          for name in items}))
  except Exception:  # pylint: disable=broad-except
    return False
  return True


@contextlib.contextmanager
def _orbax_quiet():
  """orbax logs its own errors (at absl's ERROR level) before raising: ours is the one line."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _fill_missing(saved: dict, defaults: dict, prefix: str = '') -> list[str]:
  """Adds to `saved` (in place) the keys of `defaults` it lacks; returns their dotted names.

  A new option defaults to the behaviour before it existed, so a workdir trained before it reads
  as what it was trained with."""
  added = []
  for key, default in defaults.items():
    if key not in saved:
      saved[key] = default
      added.append(prefix + key)
    elif isinstance(default, dict) and isinstance(saved[key], dict):
      added += _fill_missing(saved[key], default, f'{prefix}{key}.')
  return added


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, pipeline.DatasetMeta]:
  """The config and the vocabulary a run was trained with, from its workdir alone."""
  paths = [os.path.join(workdir, name) for name in ('config.json', META_FILE)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f'{missing[0]} not found: --workdir must be a trained dssl_jax workdir')
  with open(paths[0]) as f:
    saved = json.load(f)
  added = _fill_missing(saved, base_config.get_config().to_dict())
  if added:
    logging.warning(f'{paths[0]} predates {", ".join(added)}: using the defaults of configs/base.py')
  saved['data']['image_size'] = tuple(saved['data']['image_size'])  # json made it a list
  config = ml_collections.ConfigDict(saved)
  with open(paths[1]) as f:
    meta = json.load(f)
  return config, pipeline.DatasetMeta(meta['vocabulary'], meta['num_train_identities'], {}, (),
                                      meta.get('tagger', ''))


def save_results(path: str, metrics: dict, extra: dict | None = None):
  """R1, R5, R10, mAP, mINP (and the rest) into the json file `path`, atomically."""
  with open(path + '.tmp', 'w') as f:
    json.dump(metrics | (extra or {}), f, indent=2)
  os.replace(path + '.tmp', path)


def run(config: ml_collections.ConfigDict, workdir: str | None, mode: str):
  """What `python -m dssl_jax.main --mode=prepare|train|eval` does (launch.sweep trains each row
  with it): process 0 prepares the dataset, the others wait for it on shared storage."""
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
  if mode in ('prepare', 'train'):
    if jax.process_index() == 0:
      builders.prepare(config.data)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('dataset prepared')
  if mode == 'train':
    train_and_evaluate(config, workdir)
  elif mode == 'eval':
    evaluate_workdir(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=train: both stages (or what is left of them), then the final evaluation."""
  with Trainer(config, workdir) as trainer:
    trainer.train()
    if jax.process_index() == 0:
      reports.loss_curves(trainer.log.path, os.path.join(trainer.workdir, 'loss_curves.png'))
    return trainer.final_evaluation()


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: the final evaluation of a trained workdir."""
  with Trainer(config, workdir) as trainer:
    return trainer.final_evaluation()
