"""torch.save'd state dicts read without torch, the converter command, and the weights guard."""
import collections
import hashlib
import os
import pickle
import shutil
import subprocess
import sys

import flax
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from dssl_jax import weights
from dssl_jax.errors import UserError
from tests.helpers import reference

torch = reference('torch')
torchvision = reference('torchvision')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The converter as a user without torch runs it: any `import torch` fails.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['weights'] + "
                 "sys.argv[1:]; runpy.run_module('dssl_jax.weights', run_name='__main__')")


def _without_torch(*args):
  return subprocess.run([sys.executable, '-c', WITHOUT_TORCH, *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_state_dicts_read_as_torch_wrote_them(zip_format, tmp_path):
  """Every dtype a checkpoint holds, scalars, and views with an offset and transposed strides."""
  torch.manual_seed(0)
  state = collections.OrderedDict(
      view=torch.arange(12.).reshape(3, 4)[:, 1:].t(), long=torch.arange(5), scalar=torch.tensor(2.5),
      half=torch.randn(2, 3, 4, 5).half(), double=torch.randn(3).double(), flag=torch.tensor(True),
      byte=torch.arange(7, dtype=torch.uint8), bf16=torch.randn(4).bfloat16())
  path = tmp_path / 'state.pth'
  torch.save({'state_dict': state, 'epoch': 3}, path, _use_new_zipfile_serialization=zip_format)
  got = weights.read_torch_state_dict(str(path))
  assert list(got) == list(state)
  for name, tensor in state.items():
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: ml_dtypes' (as jax's)
      assert got[name].dtype == ml_dtypes.bfloat16
      got[name], tensor = got[name].astype(np.float32), tensor.float()
    assert got[name].dtype == tensor.numpy().dtype and np.array_equal(got[name], tensor.numpy()), name


def test_converter_runs_without_torch_and_equals_the_torch_read(tmp_path):
  model = torchvision.models.resnet18(weights=None)
  torch.save(model.state_dict(), tmp_path / 'r18.pth')
  result = _without_torch(tmp_path / 'r18.pth', tmp_path / 'r18.npz')
  assert result.returncode == 0, result.stderr
  assert f'wrote {tmp_path / "r18.npz"}: 11,' in result.stdout  # 11.7M values, fc dropped
  want = weights.convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
  with np.load(tmp_path / 'r18.npz') as got:
    flat = flax.traverse_util.flatten_dict(want, sep='/')
    assert set(got.files) == set(flat)
    for key, value in flat.items():
      np.testing.assert_array_equal(got[key], value)


def test_url_download_checks_the_hash_in_the_name(tmp_path):
  torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / 'r18.pth')
  sha = hashlib.sha256((tmp_path / 'r18.pth').read_bytes()).hexdigest()
  good, bad = tmp_path / f'resnet18-{sha[:8]}.pth', tmp_path / 'resnet18-00000000.pth'
  shutil.copy(tmp_path / 'r18.pth', good)
  shutil.copy(tmp_path / 'r18.pth', bad)
  result = _without_torch(f'--url={good.as_uri()}', tmp_path / 'a.npz')
  assert result.returncode == 0, result.stderr
  assert np.load(tmp_path / 'a.npz')['params/conv1/kernel'].shape == (7, 7, 3, 64)
  result = _without_torch(f'--url={bad.as_uri()}', tmp_path / 'b.npz')
  assert result.returncode == 1 and not (tmp_path / 'b.npz').exists()
  assert result.stderr.strip().splitlines() == [
      f'error: --url {bad.as_uri()}: sha256 {sha[:16]}... does not start with 00000000, the hash '
      'in its name (a truncated or altered file)']


def test_files_that_are_not_state_dicts_are_one_line_and_run_nothing(tmp_path):
  class Payload:  # what a malicious .pth carries: a global that runs on unpickling
    def __reduce__(self):
      return (os.system, (f'touch {tmp_path / "ran"}',))
  with open(tmp_path / 'evil.pth', 'wb') as f:
    pickle.dump({'conv1.weight': Payload()}, f)
  torch.save({'conv1.weight': torch.zeros(1)}, tmp_path / 'state.pth')
  np.savez(tmp_path / 'converted.npz', a=np.zeros(2))
  for name in ('evil.pth', 'converted.npz'):
    result = _without_torch(tmp_path / name, tmp_path / 'out.npz')
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'error: {tmp_path / name}: not a readable PyTorch file'), result.stderr
  assert not (tmp_path / 'ran').exists() and not (tmp_path / 'out.npz').exists()


def test_a_run_without_backbone_weights_is_refused_unless_scratch_is_asked(tmp_path):
  model = ml_collections.ConfigDict({'backbone': 'resnet', 'depth': 50, 'backbone_weights': ''})
  with pytest.raises(UserError, match=r'backbone_weights is not set: get ImageNet weights with '
                     r'"python -m dssl_jax.weights --url=https://download.pytorch.org/models/'
                     r'resnet50-0676ba61.pth resnet50.npz".*backbone_weights=scratch'):
    weights.check_backbone_weights(model)
  model.backbone_weights = 'scratch'
  weights.check_backbone_weights(model)
  model.backbone_weights = str(tmp_path / 'missing.npz')
  with pytest.raises(UserError, match='missing.npz.*no such file'):
    weights.check_backbone_weights(model)
  model.backbone_weights = 'resnet50-0676ba61.pth'
  with pytest.raises(UserError, match='is a PyTorch file: convert it first'):
    weights.check_backbone_weights(model)
