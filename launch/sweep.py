"""Run one of the paper's ablation tables and write it in the paper's layout.

  python -m launch.sweep --config configs/cuhk.py --sweep table2 --workdir runs/table2 \
      [--config.data.manual_dir=...]      # every --config.x=y applies to every variant

Each variant trains in WORKDIR/<variant>/ (with resume); a variant whose results.json exists is
skipped. --variant=K runs only row K (one cluster job per row, see launch/slurm_sweep.sh);
--table_only collects the finished rows; --dry_run prints each row's command instead of running it.
Writes WORKDIR/<table>.md, .csv and .png (R1/R5/R10/mAP/mINP per row).
"""
import csv
import json
import os
import shlex
import sys

from dssl_jax import main as dssl_main  # defines --config/--workdir, sets XLA_FLAGS first

from absl import app  # pylint: disable=g-bad-import-order,g-import-not-at-top
from absl import flags
import ml_collections
from ml_collections import config_flags

from dssl_jax import reports
from dssl_jax.errors import UserError
from launch.sweeps import SWEEPS, slug

flags.DEFINE_enum('sweep', None, sorted(SWEEPS), 'Which table to run.')
flags.DEFINE_integer('variant', -1, 'Run only this row (0-based); -1: all rows.')
flags.DEFINE_bool('dry_run', False, 'Print the command of each row instead of running it.')
flags.DEFINE_bool('table_only', False, 'Only collect finished rows into the table.')
FLAGS = flags.FLAGS


def variant_config(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with a row's overrides; an unknown field is a UserError naming it."""
  config = config.copy_and_resolve_references()
  for field, value in overrides.items():
    *path, name = field.split('.')
    node = config
    try:
      for part in path:
        node = node[part]
      if name not in node:
        raise KeyError(name)
      node[name] = value
    except (KeyError, AttributeError, TypeError):
      raise UserError(f'sweep override {field}={value!r}: config has no field {field}') from None
  return config


def variant_command(config_path: str, workdir: str, overrides: dict, extra: list) -> list:
  """The dssl_jax.main command line that trains one row (what a cluster job runs)."""
  return [sys.executable, '-m', 'dssl_jax.main', f'--config={config_path}', f'--workdir={workdir}',
          *extra, *(f'--config.{k}={v}' for k, v in overrides.items())]


def write_table(workdir: str, sweep: str, rows: dict):
  """<sweep>.md and .csv (rows = variants, columns = metrics) and a bar chart."""
  with open(os.path.join(workdir, f'{sweep}.md'), 'w') as f:
    f.write(f'# {sweep}\n\n' + reports.metrics_table(rows) + '\n')
  with open(os.path.join(workdir, f'{sweep}.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['variant', *reports.METRICS])
    for name, metrics in rows.items():
      writer.writerow([name, *(f'{metrics[k]:.2f}' for k in reports.METRICS)])
  reports.bar_chart(rows, os.path.join(workdir, f'{sweep}.png'), title=sweep)


def run_sweep(config, config_path: str, sweep: str, workdir: str, variant: int = -1,
              dry_run: bool = False, table_only: bool = False, extra_args=()) -> dict:
  variants = SWEEPS[sweep]
  if variant >= len(variants):
    raise UserError(f'--variant={variant}: {sweep} has rows 0..{len(variants) - 1}')
  chosen = range(len(variants)) if variant < 0 else [variant]
  configs = {i: variant_config(config, variants[i][1]) for i in chosen}  # typos fail before work
  rows = {}
  for i in chosen:
    name, overrides = variants[i]
    sub = os.path.join(workdir, slug(name))
    results = os.path.join(sub, 'results.json')
    if dry_run:
      print(shlex.join(variant_command(config_path, sub, overrides, list(extra_args))))
      continue
    if os.path.exists(results):
      print(f'[{sweep} {i + 1}/{len(variants)}] {name}: finished, skipped', flush=True)
    elif table_only:
      print(f'[{sweep} {i + 1}/{len(variants)}] {name}: not finished', flush=True)
      continue
    else:
      print(f'[{sweep} {i + 1}/{len(variants)}] {name}: training in {sub}', flush=True)
      dssl_main.run(configs[i], sub, 'train')
    with open(results) as f:
      rows[name] = json.load(f)
  if rows and variant < 0:
    write_table(workdir, sweep, rows)
    print(reports.metrics_table(rows), flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.sweep or not FLAGS.workdir:
    raise app.UsageError('--sweep and --workdir are required')
  dssl_main.quiet_logging()
  extra = [a for a in sys.argv[1:] if a.startswith('--config.')]
  try:
    os.makedirs(FLAGS.workdir, exist_ok=True)
    run_sweep(FLAGS.config, config_flags.get_config_filename(FLAGS['config']), FLAGS.sweep,
              FLAGS.workdir,
              FLAGS.variant, FLAGS.dry_run, FLAGS.table_only, extra)
  except UserError as e:
    dssl_main.fail(str(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=dssl_main.parse_flags)
