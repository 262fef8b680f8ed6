"""The train state and what builds it: the model, the device mesh, the two stages' optimizers and
learning-rate schedules (paper 4.1.2), the initial state with the pre-trained encoders, the
abstract state a checkpoint is read into, and the variables an evaluation reads.

Stage 1 trains the ID loss with the pre-trained encoders frozen (an optax partition with
set_to_zero, BN statistics kept, no gradient: XLA computes no backward pass for them). Stage 2
trains the full loss, everything, with a fresh Adam whose rate is divided by 10 every 10 epochs
(or IRRA's warm-up and cosine, the encoders at a lower rate, for CLIP). Builds where TensorFlow is
not installed: the Retriever, the search index and the benchmarks use it without the loop.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dssl_jax import checkpoints, reports, weights
from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import dssl


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; what a checkpoint holds."""
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
  train_config = config.train
  schedule = stage2_schedule(config, steps_per_epoch)
  if (train_config.encoder_lr_factor, train_config.bias_lr_factor, train_config.weight_decay) == (1.0, 1.0, 0.0):
    return optax.adam(schedule)

  def group(encoder: bool, bias: bool):
    factor = (train_config.encoder_lr_factor if encoder else 1.0) * (train_config.bias_lr_factor if bias else 1.0)
    adam = optax.adam(lambda step: factor * schedule(step))
    return adam if bias or not train_config.weight_decay else optax.chain(
        optax.add_decayed_weights(train_config.weight_decay), adam)

  return optax.partition(
      {f'{e}/{b}': group(e, b) for e in (True, False) for b in (True, False)},
      lambda params: labels(params, lambda path: f'{path[0] in encoders}/{path[-1] == "bias"}'))



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
  return jax.device_put(state, replicated(mesh))


def abstract_train_state(config, model: dssl.DSSL, mesh: jax.sharding.Mesh,
                         stage: int) -> TrainState:
  """Shapes, dtypes and shardings of a `stage` state, without computing one: what a checkpoint
  is restored into."""
  tx = make_optimizer(config, stage, steps_per_epoch=1)
  def build():
    variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
    return TrainState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
                      tx.init(variables['params']), jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
                      jax.eval_shape(build))


def start_stage(state: TrainState, config, stage: int, mesh: jax.sharding.Mesh) -> TrainState:
  """The state with `stage`'s optimizer from scratch (stage 1 -> 2: a fresh Adam)."""
  tx = make_optimizer(config, stage, steps_per_epoch=1)
  return state.replace(opt_state=jax.device_put(tx.init(state.params), replicated(mesh)))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Every device of `mesh` holds the whole array: how parameters and optimizer state live."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def load_variables(config, workdir: str, model: dssl.DSSL,
                   mesh: jax.sharding.Mesh) -> checkpoints.EvaluationVariables:
  """config.eval.checkpoint's variables of a trained WORKDIR, and which checkpoint they are."""
  with checkpoints.managers(workdir, config) as (saved, best):
    return checkpoints.evaluation_variables(
        config, saved, best, functools.partial(abstract_train_state, config, model, mesh))


def zero_shot_variables(config, model: dssl.DSSL,
                        mesh: jax.sharding.Mesh) -> checkpoints.EvaluationVariables:
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
  return checkpoints.EvaluationVariables(jax.device_put(variables, replicated(mesh)),
                                         f'zero-shot CLIP ({path})')
