"""torchvision ResNet weights -> our backbone variables.

  python -m dssl_jax.weights resnet50-0676ba61.pth resnet50.npz

Conversion is a rename (our module names mirror torchvision's) plus layout changes: conv kernels
OIHW -> HWIO; BN weight/bias -> scale/bias, running_mean/var -> batch_stats. torch is needed for
this command only; training reads the .npz (config.model.backbone_weights).
"""
from typing import Mapping

from absl import app
from absl import logging
import flax
import numpy as np

from dssl_jax.errors import UserError

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """{'params': ..., 'batch_stats': ...} of our ResNet from a torchvision ResNet state dict.

  The classifier (fc.*) and BN's num_batches_tracked have no counterpart and are dropped.
  """
  flat = {}
  for name, value in state_dict.items():
    *module, leaf = name.split('.')
    if module[:1] == ['fc'] or leaf == 'num_batches_tracked':
      continue
    value = np.asarray(value, np.float32)
    path = tuple(_flax_module_name(module))
    if value.ndim == 4:  # a conv kernel
      flat[('params', *path, 'kernel')] = value.transpose(2, 3, 1, 0)
    elif leaf in _BN:
      collection, ours = _BN[leaf]
      flat[(collection, *path, ours)] = value
    else:
      raise UserError(f'unexpected entry {name!r} {value.shape} in the state dict: '
                      'not a torchvision ResNet')
  return flax.traverse_util.unflatten_dict(flat)


def _flax_module_name(module: list[str]) -> list[str]:
  """['layer1', '0', 'downsample', '1'] -> ['layer1_0', 'downsample_1']."""
  out = []
  for part in module:
    if part.isdigit() and out:
      out[-1] = f'{out[-1]}_{part}'
    else:
      out.append(part)
  return out


def save_npz(variables: dict, path: str):
  flat = flax.traverse_util.flatten_dict(variables, sep='/')
  with open(path, 'wb') as f:
    np.savez(f, **flat)


def load_backbone(path: str, expected: dict) -> dict:
  """Reads a converted .npz and checks every name and shape against `expected` (our init)."""
  if path.endswith(('.pth', '.pt')):
    raise UserError(f'config.model.backbone_weights {path!r} is a PyTorch file: convert it first '
                    f'with python -m dssl_jax.weights {path} OUT.npz')
  try:
    with np.load(path) as npz:
      loaded = {k: npz[k] for k in npz.files}
  except (OSError, ValueError) as e:
    raise UserError(f'config.model.backbone_weights {path!r}: cannot read ({e})') from None
  wanted = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected), sep='/')
  missing = sorted(set(wanted) - set(loaded))
  extra = sorted(set(loaded) - set(wanted))
  if missing or extra:
    raise UserError(f'{path}: parameter names do not match the configured backbone '
                    f'(missing {missing[:3]}{"..." if len(missing) > 3 else ""}, unexpected '
                    f'{extra[:3]}{"..." if len(extra) > 3 else ""}): check config.model.depth '
                    'and width')
  for key, value in wanted.items():
    if loaded[key].shape != value.shape:
      raise UserError(f'{path}: {key} has shape {loaded[key].shape}, the configured backbone '
                      f'needs {value.shape}')
  return flax.traverse_util.unflatten_dict({k: loaded[k] for k in wanted}, sep='/')


def read_torch_state_dict(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError('converting a .pth needs torch: pip install torch') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except (OSError, RuntimeError) as e:
    raise UserError(f'{path}: not a readable PyTorch file ({e})') from None
  state = state.get('state_dict', state)
  return {k: v.numpy() for k, v in state.items()}


def main(argv):
  if len(argv) != 3:
    raise app.UsageError('usage: python -m dssl_jax.weights SRC.pth DST.npz')
  try:
    variables = convert_state_dict(read_torch_state_dict(argv[1]))
  except UserError as e:
    raise SystemExit(f'error: {e}') from None
  save_npz(variables, argv[2])
  count = sum(v.size for v in flax.traverse_util.flatten_dict(variables).values())
  logging.info('wrote %s', argv[2])
  print(f'wrote {argv[2]}: {count:,} values')


if __name__ == '__main__':
  app.run(main)

