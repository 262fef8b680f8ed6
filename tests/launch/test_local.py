"""launch/local.sh: a 2-process run through main (gloo on CPU), then resumed in 1 process."""
import json
import os
import subprocess
import sys

import pytest

from tests.processes import WITHOUT_COMPILATION_CACHE, why_it_failed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_two_processes_train_once_and_one_process_resumes(tmp_path):
  workdir, data_dir = tmp_path / 'run', f'--config.data.data_dir={tmp_path / "tfds"}'
  two = subprocess.run(['launch/local.sh', '2', 'configs/synthetic_tiny.py', str(workdir), data_dir],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env=os.environ | WITHOUT_COMPILATION_CACHE)
  assert two.returncode == 0, why_it_failed(two.stderr)
  # Only process 0 speaks: each line once, though two processes ran them.
  assert two.stdout.count('val after epoch 3:') == 1 and two.stdout.count('| DSSL |') == 1
  assert two.stdout.count('dataset built:') == 1
  with open(workdir / 'results.json') as f:
    assert json.load(f)['queries'] == 78  # 13 test identities x 3 images x 2 captions
  assert os.path.isfile(workdir / 'retrieval_test.png')  # paths and captions from both hosts
  one = subprocess.run([sys.executable, '-m', 'dssl_jax.main', '--config=configs/synthetic_tiny.py',
                        f'--workdir={workdir}', data_dir, '--config.train.stage2_epochs=3'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert one.returncode == 0, why_it_failed(one.stderr)
  assert 'resuming from step 33 (stage 2)' in one.stdout
  assert 'stage 2 epoch 4/4 step 44/44' in one.stdout


def test_local_sh_usage():
  out = subprocess.run(['launch/local.sh', '2'], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2 and out.stderr.startswith('usage: launch/local.sh N CONFIG WORKDIR')
