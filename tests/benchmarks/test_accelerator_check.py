"""launch/accelerator_check.sh --quick: every row of the check, its JSON and its table, where
TensorFlow, TFDS, nltk, clu, tqdm and torch cannot be imported (a GPU machine's JAX stack); and its
FLOP count at the paper's size against ResNet-50's, counted by hand."""
import json
import os
import subprocess

import pytest

from benchmarks import accelerator_check
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
  backbone = {r['dtype']: r for r in result['rows'] if r['what'] == 'train_backbone'}
  encode = [r for r in result['rows'] if r['what'] == 'eval_encode']
  assert {(r['model'], r['dtype']) for r in train} == {
      (m, d) for m in ('resnet18_tiny', 'clip_tiny') for d in ('bfloat16', 'float32')}
  assert set(backbone) == {'bfloat16', 'float32'}
  for r in train + list(backbone.values()):
    assert r['batch'] == 4 and r['images_per_s'] == pytest.approx(4 / r['step_s'], rel=0.05)
    assert r['step_s'] > 0 and r['step_s_blocking'] > 0
    assert r['gflop_per_step'] > 0 and r['xla_memory_gb'] > 0
    assert r['mfu'] == pytest.approx(r['gflop_per_step'] / r['step_s'] / 500, rel=0.05)
  for r in train:
    if r['model'] == 'resnet18_tiny':  # DSSL adds the GRU, the heads and the losses
      assert r['gflop_per_step'] > backbone[r['dtype']]['gflop_per_step']
      assert r['vs_backbone'] == pytest.approx(
          r['step_s'] / backbone[r['dtype']]['step_s'], rel=0.05, abs=0.01)
  assert len(encode) == 4 and all(r['images_per_s'] > 0 and r['captions_per_s'] > 0
                                  for r in encode)
  assert table.count('| resnet18_tiny |') == 4 and table.count('| clip_tiny |') == 4
  assert table.count('| resnet18_tiny backbone |') == 2
  assert 'MFU against --peak_tflops 0.5' in table


def test_rows_past_the_budget_are_listed_as_skipped(tmp_path):
  result, table = _check(tmp_path, '--budget_s=0', '--dtypes=float32')
  assert result['rows'] == []
  assert result['skipped'] == [
      'backbone resnet18_tiny float32 batch 4', 'train resnet18_tiny float32 batch 4',
      'train clip_tiny float32 batch 4', 'encode resnet18_tiny float32 batch 4',
      'encode clip_tiny float32 batch 4']
  assert 'Skipped (past --budget_s): backbone resnet18_tiny float32 batch 4' in table


def resnet50_forward_flops(height: int, width: int) -> float:
  """torchvision's ResNet-50 forward, its convolutions and classifier-free, 2 FLOPs a
  multiply-add, counted from the architecture."""
  def conv(h, w, k, c_in, c_out):
    return 2 * h * w * k * k * c_in * c_out
  h, w = height // 2, width // 2
  flops = conv(h, w, 7, 3, 64)
  h, w, c_in = h // 2, w // 2, 64  # max-pool
  for i, blocks in enumerate((3, 4, 6, 3)):
    planes = 64 * 2**i
    for j in range(blocks):
      stride = 2 if (j == 0 and i > 0) else 1
      flops += conv(h, w, 1, c_in, planes)
      h, w = h // stride, w // stride
      flops += conv(h, w, 3, planes, planes) + conv(h, w, 1, planes, 4 * planes)
      if j == 0:
        flops += conv(h, w, 1, c_in, 4 * planes)
      c_in = 4 * planes
  return flops


def test_backbone_row_counts_three_resnet50_forwards_per_image():
  """A train step costs about 3 forwards (forward, input gradient, kernel gradient): the count of
  the program before backend optimization includes every convolution."""
  assert resnet50_forward_flops(224, 224) == pytest.approx(8.18e9, rel=0.01)  # the known figure
  config = accelerator_check.backbone_configs(quick=False)['resnet50']
  batch = 2
  make_step, state, host_batch = accelerator_check.backbone_step_and_state(config, batch)
  per_image = accelerator_check.step_flops(make_step, state, host_batch) / batch
  assert per_image == pytest.approx(3 * resnet50_forward_flops(384, 128), rel=0.15)
