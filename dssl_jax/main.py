"""dssl_jax entry point: python -m dssl_jax.main --config configs/cuhk.py --workdir DIR [--mode].

Modes: prepare (build the dataset named by the config; for synthetic, generate its raw data
first); train (prepare, both training stages, then the test evaluation into WORKDIR/results.json);
eval (the test evaluation of the best, else latest, checkpoint in WORKDIR).
Bad input ends with one line on stderr and exit code 1.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# jaxlib 0.10.2 sends every CPU convolution to YNNPACK, slow for kernel gradients; this keeps the
# training step ~2x faster on CPU (DESIGN.md). Must be set before jax is imported; no effect on GPU.
_CPU_CONV_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
if _CPU_CONV_FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _CPU_CONV_FLAG).strip()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from dssl_jax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/synthetic.py; '
                                'override fields with --config.a.b=value.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for this run (checkpoints, logs, results).')
flags.DEFINE_enum('mode', 'train', ['prepare', 'train', 'eval'], 'What to do.')


def run(config, workdir: str | None, mode: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # tf.data only: leave accelerators to JAX
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from dssl_jax import train  # pylint: disable=g-import-not-at-top
  from dssl_jax.data import builders  # pylint: disable=g-import-not-at-top
  if config.train.distributed:
    jax.distributed.initialize()
  if mode != 'prepare' and not workdir:
    raise UserError(f'--mode={mode} needs --workdir')
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  if mode in ('prepare', 'train'):
    if jax.process_index() == 0:
      builders.prepare(config.data)
    if jax.process_count() > 1:  # the others wait for the dataset on shared storage
      multihost_utils.sync_global_devices('dataset prepared')
  if mode == 'train':
    train.train_and_evaluate(config, workdir)
  elif mode == 'eval':
    train.evaluate_workdir(config, workdir)


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's parsing, with a bad --config.x=y (typo, wrong type) as one line instead of a trace."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    while e.args and isinstance(e.args[0], Exception):  # ConfigDict wraps its KeyError
      e = e.args[0]
    fail('config override rejected: ' + ' '.join(str(e.args[0] if e.args else e).split()))


def quiet_logging():
  """Our progress lines and warnings only (TFDS and orbax log a lot); --verbosity=0 for all."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quiet_logging()
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except UserError as e:
    fail(str(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
