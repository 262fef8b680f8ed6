"""OpenAI CLIP weights, as open_clip publishes them, -> our encoders' parameters, without torch.

  python -m dssl_jax.clip_weights open_clip_model.safetensors clip_vit_b16.npz --image_size=384,128

Reads a .safetensors file (open_clip_model.safetensors) or a torch.save'd state dict
(open_clip_pytorch_model.bin). Conversion is a rename plus layout changes (linear weights
[out, in] -> kernels [in, out], the patch conv OIHW -> HWIO) and, as IRRA does, the image position
table resized from the 14x14 grid CLIP was trained on to the configured image's grid, bilinearly
(PyTorch's interpolate, align_corners=False); the class token's row is kept. The .npz holds
{'image': ..., 'text': ...} for config.model.clip.weights.
"""
import json
import re
from typing import Mapping

from absl import app
from absl import flags
import flax
import jax
import ml_dtypes
import numpy as np

from dssl_jax import cli
from dssl_jax import weights
from dssl_jax.errors import UserError

_SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                       'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
                       'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a .safetensors file: a little-endian u64 header size, a JSON header
  {name: {dtype, shape, data_offsets}}, then the tensors' bytes."""
  try:
    with open(path, 'rb') as f:
      size = int(np.frombuffer(f.read(8), '<u8')[0])
      header = json.loads(f.read(size))
      data = f.read()
    out = {}
    for name, entry in header.items():
      if name == '__metadata__':
        continue
      begin, end = entry['data_offsets']
      dtype = np.dtype(_SAFETENSORS_DTYPES[entry['dtype']])
      out[name] = np.frombuffer(data[begin:end], dtype).reshape(entry['shape']).copy()
    return out
  except (OSError, IndexError, ValueError, KeyError, TypeError) as e:
    raise UserError(f'{path}: not a readable .safetensors file ({e!r})') from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  return weights.read_torch_state_dict(path)


def resize_positions(table: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[1 + s*s, d] position table (a square grid) -> [1 + rows*cols, d] for `grid` = (rows, cols);
  a table already made for `grid` is returned as it is."""
  if table.shape[0] == 1 + grid[0] * grid[1]:
    return table
  side = int(round((table.shape[0] - 1)**0.5))
  if side * side != table.shape[0] - 1:
    raise UserError(f'image position table has {table.shape[0]} rows: neither 1 + {grid[0]}x'
                    f'{grid[1]} (the configured grid) nor 1 + a square grid to resize from')
  patches = table[1:].reshape(side, side, -1).astype(np.float32)
  resized = jax.image.resize(patches, (*grid, patches.shape[-1]), 'linear', antialias=False)
  return np.concatenate([table[:1], np.asarray(resized).reshape(-1, table.shape[-1])])


def _rename(name: str) -> tuple[str, ...]:
  """'transformer.resblocks.3.attn.in_proj_weight' -> ('transformer', 'resblocks_3', 'in_proj',
  'kernel'); LayerNorm weights become 'scale', linear weights 'kernel'."""
  name = re.sub(r'resblocks\.(\d+)', r'resblocks_\1', name)
  name = name.replace('attn.in_proj_weight', 'in_proj.weight').replace(
      'attn.in_proj_bias', 'in_proj.bias').replace('attn.out_proj', 'out_proj').replace('mlp.', '')
  *path, leaf = name.split('.')
  if path and re.fullmatch(r'ln_\w+', path[-1]):
    leaf = {'weight': 'scale'}.get(leaf, leaf)
  elif path and leaf == 'weight':
    leaf = 'embedding' if path[-1] == 'token_embedding' else 'kernel'
  return (*path, leaf)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], grid: tuple[int, int]) -> dict:
  """{'image': VisionTransformer params, 'text': TextTransformer params} of an open_clip CLIP
  state dict; `grid` is the configured image's patch grid (rows, cols)."""
  flat = {}
  for name, value in state_dict.items():
    if name in ('logit_scale', 'attn_mask'):  # the contrastive temperature; a buffer
      continue
    value = np.asarray(value, np.float32)
    tower, name = ('image', name[len('visual.'):]) if name.startswith('visual.') else ('text', name)
    path = _rename(name)
    if path == ('conv1', 'kernel'):
      value = value.transpose(2, 3, 1, 0)
    elif path[-1] == 'kernel':
      value = value.T
    elif tower == 'image' and path == ('positional_embedding',):
      value = resize_positions(value, grid)
    flat[(tower, *path)] = value
  if not any(key[0] == 'image' for key in flat) or ('text', 'text_projection') not in flat:
    raise UserError('the state dict is not an open_clip CLIP model (no visual.* entries or no '
                    'text_projection)')
  return flax.traverse_util.unflatten_dict(flat)


def main(argv):
  if len(argv) != 3:
    raise app.UsageError('usage: python -m dssl_jax.clip_weights SRC.safetensors|SRC.bin DST.npz '
                         '--image_size=H,W')
  height, width = map(int, flags.FLAGS.image_size)
  patch = flags.FLAGS.patch
  try:
    variables = convert_state_dict(read_state_dict(argv[1]), (height // patch, width // patch))
  except UserError as e:
    cli.fail(str(e))
  weights.save_npz(variables, argv[2])
  count = sum(v.size for v in flax.traverse_util.flatten_dict(variables).values())
  print(f'wrote {argv[2]}: {count:,} values, image positions for a {height}x{width} input')


if __name__ == '__main__':
  flags.DEFINE_list('image_size', ['384', '128'], 'Height,width the model will see (the position '
                    'table is resized to its patch grid).')
  flags.DEFINE_integer('patch', 16, 'Patch size of the ViT.')
  app.run(main, flags_parser=cli.parse_flags)
