"""dssl_jax entry point: python -m dssl_jax.main --config configs/cuhk.py --workdir DIR [--mode].

Modes: prepare (build the dataset named by the config; for synthetic, generate its raw data first).
Bad input ends with one line on stderr and exit code 1.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from dssl_jax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/synthetic.py; '
                                'override fields with --config.a.b=value.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for this run (checkpoints, logs, results).')
flags.DEFINE_enum('mode', 'prepare', ['prepare'], 'What to do.')
flags.mark_flags_as_required(['config'])


def run(config, workdir: str | None, mode: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # tf.data only: leave accelerators to JAX
  from dssl_jax.data import builders  # pylint: disable=g-import-not-at-top
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  if mode == 'prepare':
    builders.prepare(config.data)


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's parsing, with a bad --config.x=y (typo, wrong type) as one line instead of a trace."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    while e.args and isinstance(e.args[0], Exception):  # ConfigDict wraps its KeyError
      e = e.args[0]
    _fail('config override rejected: ' + ' '.join(str(e.args[0] if e.args else e).split()))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except UserError as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
