"""launch/accelerator_check.sh --quick: every row of the check, its JSON and its table, where
TensorFlow, TFDS, nltk, clu, tqdm and torch cannot be imported (a GPU machine's JAX stack)."""
import json
import os
import subprocess

import pytest

from tests.helpers import BLOCK_DATA_STACK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(tmp_path, *args):
  (tmp_path / 'site').mkdir(exist_ok=True)
  (tmp_path / 'site' / 'sitecustomize.py').write_text(BLOCK_DATA_STACK)  # python imports it first
  env = os.environ | {'PYTHONPATH': f'{tmp_path / "site"}:{ROOT}'}
  out = subprocess.run(['launch/accelerator_check.sh', '--quick', f'--out={tmp_path}', *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / 'accelerator_check.json') as f:
    return json.load(f), (tmp_path / 'accelerator_check.md').read_text()


@pytest.mark.slow
def test_quick_check_writes_every_row_as_json_and_a_table(tmp_path):
  result, table = _check(tmp_path, '--peak_tflops=0.5')
  assert result['machine']['platform'] == 'cpu' and result['skipped'] == []
  train = [r for r in result['rows'] if r['what'] == 'train_stage2']
  encode = [r for r in result['rows'] if r['what'] == 'eval_encode']
  assert {(r['model'], r['dtype']) for r in train} == {
      (m, d) for m in ('resnet18_tiny', 'clip_tiny') for d in ('bfloat16', 'float32')}
  for r in train:
    assert r['batch'] == 4 and r['images_per_s'] == pytest.approx(4 / r['step_s'], rel=0.05)
    assert r['gflop_per_step'] > 0 and r['xla_memory_gb'] > 0
    assert r['mfu'] == pytest.approx(r['gflop_per_step'] / r['step_s'] / 500, rel=0.05)
  assert len(encode) == 4 and all(r['images_per_s'] > 0 and r['captions_per_s'] > 0
                                  for r in encode)
  assert table.count('| resnet18_tiny |') == 4 and table.count('| clip_tiny |') == 4
  assert 'MFU against --peak_tflops 0.5' in table


def test_rows_past_the_budget_are_listed_as_skipped(tmp_path):
  result, table = _check(tmp_path, '--budget_s=0', '--dtypes=float32')
  assert result['rows'] == []
  assert result['skipped'] == [f'{kind} {model} float32 batch 4' for model in
                               ('resnet18_tiny', 'clip_tiny') for kind in ('train', 'encode')]
  assert 'Skipped (past --budget_s): train resnet18_tiny float32 batch 4' in table
