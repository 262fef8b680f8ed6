"""What every entry point shares: one-line errors, flag parsing, quiet logs. Defines no flag.

Entry points define their own flags (so that `--help` shows them, and only them) and import jax and
TensorFlow after parsing (so that `--help` is quick).
"""
import sys

from absl import flags
from absl import logging


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's parsing, with a bad --config.x=y (typo, wrong type) as one line instead of a trace."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    while e.args and isinstance(e.args[0], Exception):  # ConfigDict wraps its KeyError
      e = e.args[0]
    fail('config override rejected: ' + ' '.join(str(e.args[0] if e.args else e).split()))


def quiet_logging():
  """Our progress lines and warnings only (TFDS and orbax log a lot); --verbosity=0 for all."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
