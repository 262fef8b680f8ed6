"""What `python -m dssl_jax.main --mode=prepare|train|eval` does, for the command line and for
launch/sweep.py alike; this module defines no flags, so both can import it."""
import os

import jax
from jax.experimental import multihost_utils
import ml_collections

from dssl_jax import checkpoints, weights
from dssl_jax.errors import UserError


def run(config: ml_collections.ConfigDict, workdir: str | None, mode: str):
  """What `python -m dssl_jax.main --mode=prepare|train|eval` does (launch.sweep trains each row
  with it): process 0 prepares the dataset, the others wait for it on shared storage."""
  from dssl_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  from dssl_jax.data import builders  # pylint: disable=g-import-not-at-top
  if mode != 'prepare' and not workdir:
    raise UserError(f'--mode={mode} needs --workdir')
  if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir {workdir!r} is a file: give a folder (new, or a run\'s)')
  for name, path in (('--workdir', workdir), ('config.data.data_dir', config.data.data_dir),
                     ('config.data.manual_dir', config.data.manual_dir)):
    if path and '://' in path:
      raise UserError(f'{name} {path!r}: dssl_jax reads and writes through the local filesystem; '
                      'mount the bucket (gcsfuse, s3fs) and pass the mounted path')
  if mode == 'train':
    weights.check_backbone_weights(config.model)
  if workdir and mode in ('train', 'eval'):
    checkpoints.check_workdir_config(workdir, config)
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
    train.train_and_evaluate(config, workdir)
  elif mode == 'eval':
    evaluate.evaluate_workdir(config, workdir)
