"""Sweeps: every row is a valid, effective override set; a small sweep writes its table."""
import csv
import json
import os
import subprocess

import jax
import pytest

from dssl_jax import losses
from dssl_jax import similarity as similarity_lib
from dssl_jax.data.formats import random_batch
from dssl_jax.errors import UserError
from dssl_jax.models import dssl
from launch import sweep as sweep_lib
from launch.sweeps import SWEEPS, slug
from tests.helpers import init_model, tiny_model_config, tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_loss(config, batch, variables):
  model = dssl.DSSL(__import__('ml_collections').FrozenConfigDict(config.model), 50, 7)
  f, _ = model.apply(variables, batch, train=True, rngs={'sdm': jax.random.key(3)},
                     mutable=['batch_stats'])
  return float(losses.stage2_loss(f, batch, config)[0])


@pytest.mark.parametrize('table', sorted(SWEEPS))
def test_every_row_applies_and_rows_differ_on_the_same_batch(table):
  config = tiny_model_config()
  batch = random_batch(config, 50, 7, batch_size=6)
  shared = init_model(config)[1]
  totals = {}
  for name, overrides in SWEEPS[table]:
    variant = sweep_lib.variant_config(config, overrides)
    for field, value in overrides.items():
      section, key = field.split('.')
      assert variant[section][key] == value
    own = variant.model.spfm_fusion != config.model.spfm_fusion  # other parameter shapes
    totals[name] = _train_loss(variant, batch, init_model(variant)[1] if own else shared)
  values = sorted(totals.values())
  assert all(b - a > 1e-6 * abs(b) for a, b in zip(values, values[1:])), totals


def test_table1_rows_have_only_the_modules_and_sim_ti_terms_their_aligns_train():
  config = tiny_model_config()
  weights = {}
  for name, overrides in SWEEPS['table1']:
    variant = sweep_lib.variant_config(config, overrides)
    if name != 'baseline':
      assert variant.model.spfm == variant.loss.align2 and variant.model.pdm == variant.loss.align3
    weights[name] = similarity_lib.sim_ti_weights(variant)
  assert weights['baseline'] == weights['I'] == weights['I+II+III'] == (0.0, 0.0)
  assert weights['IV'] == (0.5, 0.0) and weights['V'] == (0.0, 0.5)
  assert weights['I+IV+V'] == weights['I+II+III+IV+V'] == (0.5, 0.5)


def test_a_misspelled_override_is_rejected(monkeypatch):
  config = tiny_model_config()
  with pytest.raises(UserError, match='loss.algin1'):
    sweep_lib.variant_config(config, {'loss.algin1': False})
  with pytest.raises(UserError, match='modle.sam'):
    sweep_lib.variant_config(config, {'modle.sam': False})


@pytest.mark.slow
def test_two_row_sweep_end_to_end(tiny_dataset, tmp_path, monkeypatch):
  config = tiny_train_config(tiny_dataset[0])
  config.train.stage2_epochs = 1
  config.eval.lambda1 = config.eval.lambda2 = 0.5  # as set, whichever stage val chooses
  monkeypatch.setitem(SWEEPS, 'tiny', [('DSSL', {}), ('no SDM', {'model.sdm': False})])
  rows = sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path))
  assert list(rows) == ['DSSL', 'no SDM']
  with open(tmp_path / 'tiny.csv') as f:
    table = list(csv.reader(f))
  assert table[0][:7] == ['variant', 'seeds', 'R1', 'R5', 'R10', 'mAP', 'mINP']
  assert [r[0] for r in table[1:]] == ['DSSL', 'no SDM']
  for row in table[1:]:
    with open(tmp_path / slug(row[0]) / 'results.json') as f:
      assert float(row[2]) == pytest.approx(json.load(f)['R1'], abs=0.01)
  assert '| no SDM [λ1 = 0.5, λ2 = 0.5] |' in (tmp_path / 'tiny.md').read_text()
  assert [r[table[0].index('sim_ti')] for r in table[1:]] == ['λ1 = 0.5, λ2 = 0.5'] * 2
  assert os.path.getsize(tmp_path / 'tiny.png') > 1000
  with open(tmp_path / 'no_SDM' / 'config.json') as f:
    assert json.load(f)['model']['sdm'] is False
  again = sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path))
  assert again == rows  # finished rows are skipped, not retrained


def test_seeds_table_reports_mean_std_and_every_seed(tmp_path, monkeypatch, capsys):
  """--seeds=3: one sub-workdir and config.seed per run, mean ± std (n - 1) over them."""
  monkeypatch.setitem(SWEEPS, 'tiny', [('DSSL', {}), ('no SAM', {'model.sam': False})])
  trained = []

  def fake_run(config, workdir):  # a "training" whose R1 is a function of the row and seed
    trained.append((workdir, config.seed, config.model.sam))
    r1 = 50 + 10 * config.model.sam + config.seed
    os.makedirs(workdir)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump({'R1': r1, 'R5': 80.0, 'R10': 90.0, 'mAP': r1 / 2, 'mINP': 20.0,
                 'R1_stderr': 2.0 + config.seed % 2, 'lambda1': 0.5 * config.model.sam,
                 'lambda2': 0.5}, f)

  monkeypatch.setattr(sweep_lib, 'train_row', fake_run)
  config = tiny_model_config()
  config.seed = 4
  rows = sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path), seeds=3)
  assert [(os.path.relpath(w, tmp_path), s, sam) for w, s, sam in trained] == [
      ('DSSL/seed4', 4, True), ('DSSL/seed5', 5, True), ('DSSL/seed6', 6, True),
      ('no_SAM/seed4', 4, False), ('no_SAM/seed5', 5, False), ('no_SAM/seed6', 6, False)]
  assert [r['R1'] for r in rows['no SAM']] == [54, 55, 56]
  with open(tmp_path / 'tiny.csv') as f:
    table = list(csv.DictReader(f))
  assert table[0]['variant'] == 'DSSL' and table[0]['seeds'] == '3'
  assert (table[0]['R1'], table[0]['R1_std'], table[0]['mAP_std']) == ('65.00', '1.00', '0.50')
  assert [table[1][f'R1_run{k}'] for k in range(3)] == ['54.00', '55.00', '56.00']
  assert table[1]['R1_stderr'] == '2.33'  # seeds 4, 5, 6: 2, 3, 2
  assert (table[0]['sim_ti'], table[1]['sim_ti']) == ('λ1 = 0.5, λ2 = 0.5', 'λ1 = 0, λ2 = 0.5')
  markdown = (tmp_path / 'tiny.md').read_text()
  assert 'Mean ± std over 3 seeds' in markdown
  assert '| no SAM [λ1 = 0, λ2 = 0.5] | 55.00 ± 1.00 |' in markdown
  assert 'standard error of 2.33 over the test split' in markdown
  assert os.path.getsize(tmp_path / 'tiny.png') > 1000
  trained.clear()
  sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path), seeds=3)
  assert not trained  # finished seeds are skipped
  os.remove(tmp_path / 'no_SAM' / 'seed6' / 'results.json')
  rows = sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path), seeds=3,
                             table_only=True)
  assert len(rows['no SAM']) == 2 and not trained
  assert '| no SAM [λ1 = 0, λ2 = 0.5] (2 of 3 seeds) | 54.50 ± 0.71 |' in (
      tmp_path / 'tiny.md').read_text()
  sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path / 'dry'), seeds=2,
                      dry_run=True)
  assert capsys.readouterr().out.count('--config.seed=5') == 2
  with pytest.raises(UserError, match='--seeds=0'):
    sweep_lib.run_sweep(config, 'configs/synthetic.py', 'tiny', str(tmp_path), seeds=0)


def test_dry_run_prints_one_command_per_row(capsys):
  config = tiny_model_config()
  sweep_lib.run_sweep(config, 'configs/cuhk.py', 'table4', '/runs/t4', dry_run=True,
                      extra_args=['--config.data.manual_dir=/data/CUHK-PEDES'])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 5
  assert lines[0].endswith('-m dssl_jax.main --config=configs/cuhk.py --workdir=/runs/t4/r=0.0 '
                           '--config.data.manual_dir=/data/CUHK-PEDES '
                           '--config.model.sdm_zero_ratio=0.0')


def _script(name, *args, **env):
  return subprocess.run(['bash', f'launch/{name}', *args], capture_output=True, text=True,
                        cwd=ROOT, env=os.environ | {'DRY_RUN': '1'} | env, timeout=120)


def test_launch_scripts_build_their_commands():
  out = _script('slurm_train.sh', 'configs/cuhk.py', '/shared/run', '--config.seed=3')
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == ('srun python -m dssl_jax.main --config=configs/cuhk.py '
                                '--workdir=/shared/run --config.train.distributed=True '
                                '--config.seed=3')
  out = _script('tpu_pod.sh', 'configs/rstp.py', '/mnt/b/run', TPU_NAME='pod', ZONE='z1')
  assert out.returncode == 0, out.stderr
  assert '--worker=all' in out.stdout and 'pod' in out.stdout and 'distributed=True' in out.stdout
  out = _script('slurm_sweep.sh', 'configs/cuhk.py', 'table1', '/shared/t1')
  assert out.returncode == 0, out.stderr
  first, second = out.stdout.strip().splitlines()
  assert '--array=0-11' in first and 'variant=\\$SLURM_ARRAY_TASK_ID' in first
  assert second.startswith('sbatch --dependency=afterany:') and '--table_only' in second
  assert _script('tpu_pod.sh', 'configs/cuhk.py', 'w').returncode == 2  # no TPU_NAME: usage
