"""pyproject.toml: the wheel installs into a fresh venv without the data extra (no TensorFlow, TFDS
or nltk, as on a GPU image) and works from a folder outside the repository."""
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tested set of this Python pins what the wheel's ranges resolve to (and keeps pip's cache
# warm); pyproject.toml's own ranges are the ones checked.
TESTED_SET = 'requirements.txt' if sys.version_info < (3, 12) else 'requirements-py312.txt'

ENCODE_ARRAYS = """
import sys
import numpy as np
from dssl_jax import Retriever
for name in ('tensorflow', 'tensorflow_datasets', 'nltk'):
  try:
    __import__(name)
    sys.exit(f'{name} is installed')
  except ImportError:
    pass
features = Retriever.from_workdir(sys.argv[1]).encode_images(list(np.load(sys.argv[2]).values()))
np.save(sys.argv[3], features['V_P'])
"""


def _run(command: list, cwd, timeout: float = 900) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
  out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
  assert out.returncode == 0, f'{command}:\n{out.stdout[-2000:]}{out.stderr[-3000:]}'
  return out


@pytest.mark.slow
def test_the_wheel_installs_without_the_data_extra_and_runs_outside_the_repository(
    trained, tmp_path):
  source = tmp_path / 'source'  # setuptools writes build/ beside what it builds: not into ROOT
  shutil.copytree(os.path.join(ROOT, 'dssl_jax'), source / 'dssl_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), source)
  _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', source, '-w', tmp_path / 'wheel'],
       tmp_path)
  [wheel] = os.listdir(tmp_path / 'wheel')
  _run([sys.executable, '-m', 'venv', tmp_path / 'venv'], tmp_path)
  bin_dir = tmp_path / 'venv' / 'bin'
  _run([bin_dir / 'pip', 'install', '-q', tmp_path / 'wheel' / wheel, '-c',
        os.path.join(ROOT, TESTED_SET)], tmp_path)
  outside = tmp_path / 'elsewhere'
  outside.mkdir()

  config = _run([bin_dir / 'dssl-jax', '--config', 'synthetic_tiny', '--mode=config'], outside)
  assert 'embed_dim: 32' in config.stdout  # the shipped config, by name
  assert 'index|query|recall' in subprocess.run(
      [bin_dir / 'dssl-jax-search'], cwd=outside, capture_output=True, text=True).stderr

  workdir, _, entries, raw = trained
  arrays = [np.asarray(Image.open(os.path.join(raw, 'imgs', e['file_path'])).convert('RGB'))
            for e in entries[:2]]
  np.savez(outside / 'arrays.npz', *arrays)
  _run([bin_dir / 'python', '-c', ENCODE_ARRAYS, workdir, 'arrays.npz', 'v_p.npy'], outside)
  from dssl_jax import Retriever  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(np.load(outside / 'v_p.npy'),
                             Retriever.from_workdir(workdir).encode_images(arrays)['V_P'],
                             rtol=1e-5, atol=1e-5)
