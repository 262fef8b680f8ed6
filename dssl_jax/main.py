"""dssl_jax entry point: python -m dssl_jax.main --config configs/cuhk.py --workdir DIR [--mode].

Installed, `dssl-jax --config cuhk --workdir DIR` is the same, from any folder: --config takes a
shipped config's name (dssl_jax/configs) or a file.

Modes: prepare (build the dataset named by the config; for synthetic, generate its raw data
first); train (prepare, both training stages, then the test evaluation into WORKDIR/results.json);
eval (the test evaluation of the best, else latest, checkpoint in WORKDIR); config (print the
resolved config, overrides applied, and exit).
Bad input ends with one line on stderr and exit code 1.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from dssl_jax import cli
from dssl_jax.errors import UserError

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/synthetic.py, or a '
                                'shipped config\'s name, e.g. synthetic; override fields with '
                                '--config.a.b=value.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for this run (checkpoints, logs, results).')
flags.DEFINE_enum('mode', 'train', ['prepare', 'train', 'eval', 'config'], 'What to do.')
FLAGS = flags.FLAGS


def main(argv):
  """The entry point: --mode over --config and --workdir (flags above).

  Args:
    argv: the program name alone (everything else is a flag).

  Returns:
    None; exits with 1 and one line on stderr on bad input.
  """
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.mode == 'config':
    print(FLAGS.config)
    return
  cli.quiet_logging()
  from dssl_jax import modes  # pylint: disable=g-import-not-at-top
  try:
    modes.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except UserError as e:
    cli.fail(str(e))


def run():
  """The console script `dssl-jax`."""
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
