"""Run one of the paper's ablation tables and write it in the paper's layout.

  python -m launch.sweep --config configs/cuhk.py --sweep table2 --workdir runs/table2 \
      [--config.data.manual_dir=...]      # every --config.x=y applies to every variant

Each variant trains in WORKDIR/<variant>/ (with resume); a variant whose results.json exists is
skipped. --seeds=N trains each row N times (config.seed + 0..N-1, in WORKDIR/<variant>/seed<k>/)
and reports mean ± std over seeds: one synthetic run moves by several R1 points from float order
alone. --variant=K runs only row K (one cluster job per row, see launch/slurm_sweep.sh);
--table_only collects the finished rows; --dry_run prints each run's command instead of running it.
Writes WORKDIR/<table>.md, .csv (with every seed's R1 and a run's R1 standard error over the test
split's people) and .png (R1/R5/R10/mAP/mINP per row).
"""
import csv
import json
import os
import shlex
import statistics
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from dssl_jax import cli
from dssl_jax.errors import UserError
from launch.sweeps import SWEEPS, slug

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


def seed_runs(workdir: str, name: str, seed: int, seeds: int) -> list[tuple[str, dict]]:
  """(sub-workdir, seed override) of each run of a row; one seed keeps the row's own folder."""
  if seeds == 1:
    return [(os.path.join(workdir, slug(name)), {})]
  return [(os.path.join(workdir, slug(name), f'seed{seed + k}'), {'seed': seed + k})
          for k in range(seeds)]


def train_row(config: ml_collections.ConfigDict, workdir: str):
  """One row's run, as python -m dssl_jax.main --mode=train would do it."""
  from dssl_jax import modes  # pylint: disable=g-import-not-at-top
  modes.run(config, workdir, 'train')


def sim_ti_label(runs: list[dict]) -> str:
  """The Sim_TI weights a row's runs were evaluated with ('' for runs from before they were
  recorded): an ablation without Align IV or V is scored without the CA term it did not train."""
  used = sorted({(run['lambda1'], run['lambda2']) for run in runs if 'lambda1' in run})
  return '; '.join(f'λ1 = {l1:g}, λ2 = {l2:g}' for l1, l2 in used)


def write_table(workdir: str, sweep: str, rows: dict) -> str:
  """<sweep>.md and .csv (rows = variants, columns = metrics, mean ± std over seeds; the csv also
  lists every seed's R1) and a bar chart with the spread as error bars; returns the table."""
  from dssl_jax import plots, reports  # pylint: disable=g-import-not-at-top
  summary = {name: reports.mean_and_std(runs) for name, runs in rows.items()}
  seeds = max(len(runs) for runs in rows.values())
  weights = {name: sim_ti_label(runs) for name, runs in rows.items()}
  labelled = {name + (f' [{weights[name]}]' if weights[name] else '')
              + (f' ({len(rows[name])} of {seeds} seeds)' if len(rows[name]) < seeds else ''):
              cells for name, cells in summary.items()}  # rows still missing seeds say so
  table = reports.metrics_table(labelled)
  stderr = {name: [run['R1_stderr'] for run in runs if 'R1_stderr' in run]  # absent: older runs
            for name, runs in rows.items()}
  every = [e for errors in stderr.values() for e in errors]
  about = ([f'Mean ± std over {seeds} seeds.'] if seeds > 1 else []) + (
      [f'One run\'s R1 has a standard error of {statistics.fmean(every):.2f} over the test split\'s '
       'people: the split alone spreads runs by about that.'] if every else [])
  with open(os.path.join(workdir, f'{sweep}.md'), 'w') as f:
    f.write(f'# {sweep}\n\n' + (' '.join(about) + '\n\n' if about else '') + table + '\n')
  with open(os.path.join(workdir, f'{sweep}.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['variant', 'seeds', *reports.METRICS, *(f'{k}_std' for k in reports.METRICS),
                     'R1_stderr', 'sim_ti', *(f'R1_run{k}' for k in range(seeds))])
    for name, runs in rows.items():
      writer.writerow([name, len(runs), *(f'{summary[name][k][0]:.2f}' for k in reports.METRICS),
                       *(f'{summary[name][k][1]:.2f}' for k in reports.METRICS),
                       f'{statistics.fmean(stderr[name]):.2f}' if stderr[name] else '',
                       weights[name],
                       *(f'{run["R1"]:.2f}' for run in runs)])
  plots.bar_chart(labelled, os.path.join(workdir, f'{sweep}.png'), title=sweep)
  return table


def run_sweep(config, config_path: str, sweep: str, workdir: str, variant: int = -1,
              dry_run: bool = False, table_only: bool = False, extra_args=(),
              seeds: int = 1) -> dict:
  """Trains (or collects) the rows; returns {row name: [results of each finished seed]}."""
  variants = SWEEPS[sweep]
  if variant >= len(variants):
    raise UserError(f'--variant={variant}: {sweep} has rows 0..{len(variants) - 1}')
  if seeds < 1:
    raise UserError(f'--seeds={seeds}: must be at least 1')
  chosen = range(len(variants)) if variant < 0 else [variant]
  configs = {i: variant_config(config, variants[i][1]) for i in chosen}  # typos fail before work
  rows = {}
  for i in chosen:
    name, overrides = variants[i]
    for k, (sub, seed_override) in enumerate(seed_runs(workdir, name, config.seed, seeds)):
      where = f'[{sweep} {i + 1}/{len(variants)}] {name}' + (f', seed {k + 1}/{seeds}'
                                                             if seeds > 1 else '')
      results = os.path.join(sub, 'results.json')
      if dry_run:
        print(shlex.join(variant_command(config_path, sub, overrides | seed_override,
                                         list(extra_args))))
        continue
      if os.path.exists(results):
        print(f'{where}: finished, skipped', flush=True)
      elif table_only:
        print(f'{where}: not finished', flush=True)
        continue
      else:
        print(f'{where}: training in {sub}', flush=True)
        train_row(variant_config(configs[i], seed_override), sub)
      with open(results) as f:
        rows.setdefault(name, []).append(json.load(f))
  if rows and variant < 0:
    print(write_table(workdir, sweep, rows), flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.sweep or not FLAGS.workdir:
    raise app.UsageError('--sweep and --workdir are required')
  cli.quiet_logging()
  extra = [a for a in sys.argv[1:] if a.startswith('--config.')]
  try:
    os.makedirs(FLAGS.workdir, exist_ok=True)
    run_sweep(FLAGS.config, config_flags.get_config_filename(FLAGS['config']), FLAGS.sweep,
              FLAGS.workdir,
              FLAGS.variant, FLAGS.dry_run, FLAGS.table_only, extra, FLAGS.seeds)
  except UserError as e:
    cli.fail(str(e))


if __name__ == '__main__':  # flags only here: the module's functions are imported elsewhere
  config_flags.DEFINE_config_file('config', None, 'The base config of every row, e.g. '
                                  'configs/cuhk.py; --config.a.b=value applies to every row.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder of the sweep: each row trains in WORKDIR/<row>/.')
  flags.DEFINE_enum('sweep', None, sorted(SWEEPS), 'Which table to run.')
  flags.DEFINE_integer('variant', -1, 'Run only this row (0-based); -1: all rows.')
  flags.DEFINE_integer('seeds', 1, 'Train each row this many times (config.seed, +1, ...).')
  flags.DEFINE_bool('dry_run', False, 'Print the command of each row instead of running it.')
  flags.DEFINE_bool('table_only', False, 'Only collect finished rows into the table.')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
