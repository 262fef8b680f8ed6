"""What every entry point shares: one-line errors, flag parsing, quiet logs. Defines no flag.

Entry points define their own flags (so that `--help` shows them, and only them) and import jax and
TensorFlow after parsing (so that `--help` is quick).
"""
import logging as std_logging
import os
import sys

from absl import flags
from absl import logging


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


SHIPPED_CONFIGS = os.path.join(os.path.dirname(__file__), 'configs')


def config_file(value: str) -> str:
  """A --config value as a file: a shipped config's name (`cuhk`, or `cuhk:argument`) is its file
  in dssl_jax/configs, so that an installed package runs from any folder; a path stays as it is."""
  name, colon, argument = value.partition(':')
  shipped = os.path.join(SHIPPED_CONFIGS, f'{name}.py')
  if name.isidentifier() and os.path.isfile(shipped):
    return shipped + colon + argument
  return value


def parse_flags(argv):
  """absl's parsing, with --config NAME for a shipped config, and a bad --config.x=y (typo, wrong
  type) or a --config file that does not load as one line instead of a trace."""
  argv = [argv[0]] + [f'--config={config_file(a[9:])}' if a.startswith('--config=') else a
                      for a in argv[1:]]
  for i in range(1, len(argv) - 1):
    if argv[i] == '--config':
      argv[i + 1] = config_file(argv[i + 1])
  try:
    argv = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    while e.args and isinstance(e.args[0], Exception):  # ConfigDict wraps its KeyError
      e = e.args[0]
    fail('config override rejected: ' + ' '.join(str(e.args[0] if e.args else e).split()))
  if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
    try:  # ml_collections defers a config file's load error to the first use of the config
      flags.FLAGS['config'].value.get('seed')
    except OSError as e:
      fail(f'--config: {str(e).strip().splitlines()[-1].strip()}')
  return argv


def _not_a_tfds_notice(record) -> bool:
  """TFDS warns of its own choices on every builder it makes ("Using custom data configuration",
  "Variant folder ... has no dataset_info.json"): notices, not problems of the run."""
  return record.levelno >= std_logging.ERROR or 'tensorflow_datasets' not in record.pathname


def quiet_logging():
  """Our progress lines and warnings only (TFDS and orbax log a lot); --verbosity=0 for all."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(_not_a_tfds_notice)
