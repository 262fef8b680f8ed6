"""torchvision ResNet weights -> our backbone variables, without torch.

  python -m dssl_jax.weights resnet50-0676ba61.pth resnet50.npz
  python -m dssl_jax.weights --url=https://download.pytorch.org/models/resnet50-0676ba61.pth resnet50.npz

Conversion is a rename (our module names mirror torchvision's) plus layout changes: conv kernels
OIHW -> HWIO; BN weight/bias -> scale/bias, running_mean/var -> batch_stats. Training reads the
.npz (config.model.backbone_weights).

A .pth is read here, not by torch: it is a pickle whose tensors point at raw storages (in a zip
since torch 1.6, appended to the pickle before). The unpickler accepts only the few names a state
dict needs, so reading an untrusted file cannot run code.
"""
import collections
import hashlib
import os
import pickle
import re
import tempfile
from typing import Mapping
import urllib.request
import zipfile

from absl import app
from absl import flags
import flax
import ml_dtypes
import numpy as np

from dssl_jax import cli
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


SCRATCH = 'scratch'  # config.model.backbone_weights for a random initialisation, on purpose
TORCHVISION_URLS = {depth: f'https://download.pytorch.org/models/resnet{depth}-{sha}.pth'
                    for depth, sha in ((18, 'f37072fd'), (34, 'b627a593'), (50, '0676ba61'))}


def check_backbone_weights(model_config):
  """Refuses a run whose backbone would start random by accident: the paper starts from ImageNet
  weights, and stage 1 freezes the backbone, so a forgotten flag costs the whole run."""
  path = model_config.backbone_weights
  if path == SCRATCH:
    return
  if not path and model_config.backbone == 'clip':
    raise UserError(
        'config.model.backbone_weights is not set: convert open_clip\'s ViT-B-16 (OpenAI) weights '
        'with "python -m dssl_jax.clip_weights open_clip_model.safetensors clip_vit_b16.npz" and '
        'pass --config.model.backbone_weights=clip_vit_b16.npz, or pass '
        f'--config.model.backbone_weights={SCRATCH} to train from random encoders on purpose')
  if not path:
    url = TORCHVISION_URLS.get(model_config.depth, TORCHVISION_URLS[50])
    raise UserError(
        f'config.model.backbone_weights is not set: get ImageNet weights with "python -m '
        f'dssl_jax.weights --url={url} resnet{model_config.depth}.npz" and pass '
        f'--config.model.backbone_weights=resnet{model_config.depth}.npz, or pass '
        f'--config.model.backbone_weights={SCRATCH} to train from a random backbone on purpose')
  _refuse_torch_file(path)
  if not os.path.isfile(path):
    raise UserError(f'config.model.backbone_weights {path!r}: no such file')


def _refuse_torch_file(path: str):
  if path.endswith(('.pth', '.pt', '.bin', '.safetensors')):
    raise UserError(f'config.model.backbone_weights {path!r} is a PyTorch file: convert it first '
                    f'with python -m dssl_jax.weights {path} OUT.npz (ResNet) or python -m '
                    f'dssl_jax.clip_weights {path} OUT.npz (CLIP)')


def save_npz(variables: dict, path: str):
  flat = flax.traverse_util.flatten_dict(variables, sep='/')
  with open(path, 'wb') as f:
    np.savez(f, **flat)


def load_backbone(path: str, expected: dict, fields: str = 'config.model.depth and width') -> dict:
  """Reads a converted .npz and checks every name and shape against `expected` (our init);
  `fields` are the config fields that set them."""
  _refuse_torch_file(path)
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
                    f'{extra[:3]}{"..." if len(extra) > 3 else ""}): check {fields}')
  for key, value in wanted.items():
    if loaded[key].shape != value.shape:
      raise UserError(f'{path}: {key} has shape {loaded[key].shape}, the configured backbone '
                      f'needs {value.shape} (check {fields})')
  return flax.traverse_util.unflatten_dict({k: loaded[k] for k in wanted}, sep='/')


_STORAGE_DTYPES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64,
                   'HalfStorage': np.float16, 'LongStorage': np.int64, 'IntStorage': np.int32,
                   'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
                   'BoolStorage': np.bool_, 'BFloat16Storage': ml_dtypes.bfloat16}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _Storage:
  """A storage named by the pickle, read once its bytes are known."""

  def __init__(self, dtype, key):
    self.dtype, self.key = dtype, key


def _rebuild_tensor(storage, offset, size, stride, *_):
  return storage, offset, tuple(size), tuple(stride)


class _StateDictUnpickler(pickle.Unpickler):
  """Knows torch's tensor and storage records and OrderedDict; refuses every other global.
  `storages`: {key: _Storage} of the storages the pickle named."""

  def __init__(self, file):
    super().__init__(file)
    self.storages = {}

  def find_class(self, module, name):
    if (module, name) in (('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_tensor')):
      return _rebuild_tensor
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    raise pickle.UnpicklingError(f'{module}.{name} is not part of a state dict of tensors')

  def persistent_load(self, pid):
    if pid[0] != 'storage' or len(pid) < 5:
      raise pickle.UnpicklingError(f'unknown persistent record {pid[0]!r}')
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError('storage views (legacy format) are not supported')
    return self.storages.setdefault(str(pid[2]), _Storage(np.dtype(pid[1]), str(pid[2])))


def _tensors(obj, storage_bytes) -> dict:
  """The state dict's (storage, offset, size, stride) records as numpy arrays (copies)."""
  out = {}
  for name, (storage, offset, size, stride) in obj.items():
    flat = np.frombuffer(storage_bytes(storage), storage.dtype)
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * item for s in stride])
    out[name] = np.array(view)
  return out


def _read_zip(path: str) -> dict:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    prefix = names[0].split('/')[0]
    byteorder = f'{prefix}/byteorder'
    if byteorder in names and archive.read(byteorder) != b'little':
      raise UserError(f'{path}: saved on a big-endian machine, which is not supported')
    with archive.open(f'{prefix}/data.pkl') as f:
      obj = _StateDictUnpickler(f).load()
    return _tensors(_state_dict(obj, path), lambda s: archive.read(f'{prefix}/data/{s.key}'))


def _read_legacy(path: str) -> dict:
  """torch < 1.6's format: magic, protocol, system info, the object, storage keys, then each
  storage as an int64 element count and its bytes, in key order."""
  with open(path, 'rb') as f:
    load = lambda: _StateDictUnpickler(f).load()  # never pickle.load: it would run any global
    if load() != _LEGACY_MAGIC:
      raise pickle.UnpicklingError('no PyTorch magic number')
    load(), load()  # protocol version, system info
    unpickler = _StateDictUnpickler(f)
    obj = unpickler.load()
    data = {}
    for key in load():
      count = int(np.frombuffer(f.read(8), '<i8')[0])
      data[key] = f.read(count * unpickler.storages[key].dtype.itemsize)
  return _tensors(_state_dict(obj, path), lambda s: data[s.key])


def _state_dict(obj, path: str) -> dict:
  obj = obj.get('state_dict', obj) if isinstance(obj, dict) else obj
  if not isinstance(obj, dict) or not all(
      isinstance(v, tuple) and isinstance(v[0], _Storage) for v in obj.values()):
    raise UserError(f'{path}: not a state dict of tensors')
  return obj


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a torch.save'd state dict (zip or legacy format), without torch."""
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path)
    return _read_legacy(path)
  except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
    raise UserError(f'{path}: not a readable PyTorch file ({e})') from None


def download(url: str, folder: str) -> str:
  """Fetches `url` into `folder`; torchvision's names carry the sha256's first hex digits
  (resnet50-0676ba61.pth), which must match."""
  path = os.path.join(folder, os.path.basename(url))
  digest = hashlib.sha256()
  try:
    with urllib.request.urlopen(url) as response, open(path, 'wb') as f:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
  except OSError as e:
    raise UserError(f'--url {url}: cannot fetch ({e})') from None
  expected = re.search(r'-([0-9a-f]{8,})\.pth$', url)
  if expected and not digest.hexdigest().startswith(expected.group(1)):
    raise UserError(f'--url {url}: sha256 {digest.hexdigest()[:16]}... does not start with '
                    f'{expected.group(1)}, the hash in its name (a truncated or altered file)')
  return path


def main(argv):
  url = flags.FLAGS.url
  if len(argv) != (2 if url else 3):
    raise app.UsageError('usage: python -m dssl_jax.weights SRC.pth DST.npz | --url=URL DST.npz')
  try:
    with tempfile.TemporaryDirectory() as folder:
      source = download(url, folder) if url else argv[1]
      variables = convert_state_dict(read_torch_state_dict(source))
  except UserError as e:
    cli.fail(str(e))
  save_npz(variables, argv[-1])
  count = sum(v.size for v in flax.traverse_util.flatten_dict(variables).values())
  print(f'wrote {argv[-1]}: {count:,} values')


if __name__ == '__main__':
  flags.DEFINE_string('url', None, 'Fetch the .pth from this URL (its hash is checked when its '
                      'name carries one, as torchvision\'s do) instead of reading SRC.pth.')
  app.run(main, flags_parser=cli.parse_flags)

