"""ResNet in torchvision's layout (v1.5: stride on the 3x3 conv), returning the last feature map.

Module names mirror torchvision's state dict (conv1, bn1, layer2_0.downsample_0, ...) so ImageNet
weights convert by renaming (dssl_jax/weights.py). Paddings are PyTorch's, written out: Flax's
'SAME' pads stride-2 layers asymmetrically and would shift every imported feature. The layers are
dssl_jax/models/layers.py's: PyTorch's semantics, fast backward passes on the CPU.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from dssl_jax.models import layers

STAGES = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
          50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3))}


def _pad(k: int):
  return ((k // 2, k // 2), (k // 2, k // 2))


class BasicBlock(nn.Module):
  filters: int
  strides: int
  conv: type
  norm: type
  last_norm: type  # the residual branch's last
  expansion = 1

  @nn.compact
  def __call__(self, x):
    out = self.conv(self.filters, (3, 3), (self.strides,) * 2, padding=_pad(3), name='conv1')(x)
    out = nn.relu(self.norm(name='bn1')(out))
    out = self.conv(self.filters, (3, 3), padding=_pad(3), name='conv2')(out)
    out = self.last_norm(name='bn2')(out)
    return nn.relu(out + _shortcut(self, x, self.filters))


class Bottleneck(nn.Module):
  filters: int
  strides: int
  conv: type
  norm: type
  last_norm: type
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = nn.relu(self.norm(name='bn1')(self.conv(self.filters, (1, 1), name='conv1')(x)))
    out = self.conv(self.filters, (3, 3), (self.strides,) * 2, padding=_pad(3), name='conv2')(out)
    out = nn.relu(self.norm(name='bn2')(out))
    out = self.last_norm(name='bn3')(self.conv(self.filters * 4, (1, 1), name='conv3')(out))
    return nn.relu(out + _shortcut(self, x, self.filters * 4))


def _shortcut(block, x, out_features):
  if x.shape[-1] == out_features and block.strides == 1:
    return x
  x = block.conv(out_features, (1, 1), (block.strides,) * 2, name='downsample_0')(x)
  return block.norm(name='downsample_1')(x)


class ResNet(nn.Module):
  """`depth` in STAGES; `width` 64 is torchvision's, smaller widths make small models.
  zero_init_residual: each residual branch's last BN scale starts at 0, so every block starts as
  the identity (torchvision's option of that name; Goyal et al. 2017), for training from scratch."""
  depth: int = 50
  width: int = 64
  dtype: jnp.dtype = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    kind, stages = STAGES[self.depth]
    block = Bottleneck if kind == 'bottleneck' else BasicBlock
    conv = functools.partial(layers.Conv, dtype=self.dtype)
    norm = functools.partial(layers.BatchNorm, use_running_average=not train, dtype=self.dtype)
    last_norm = (functools.partial(norm, scale_init=nn.initializers.zeros)
                 if self.zero_init_residual else norm)
    x = conv(self.width, (7, 7), (2, 2), padding=_pad(7), name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = layers.max_pool_3x3(x)
    for i, blocks in enumerate(stages):
      for j in range(blocks):
        x = block(self.width * 2**i, 2 if (j == 0 and i > 0) else 1, conv, norm, last_norm,
                  name=f'layer{i + 1}_{j}')(x)
    return x

  @property
  def out_features(self) -> int:
    kind, _ = STAGES[self.depth]
    return self.width * 8 * (4 if kind == 'bottleneck' else 1)

