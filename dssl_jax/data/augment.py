"""The training augmentations on the accelerator: uint8 batches in, normalized float out.

config.data.augment's flip, pad-and-crop and random erasing run inside the jitted train step on
the whole batch, each example with its own key split from the step's: a resumed run draws the same
augmentation at the same step, whatever the device count. The host's tf.data versions
(pipeline.augment, config.data.augment_on='host') draw from the same distributions. No TensorFlow.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dssl_jax.data.images import IMAGENET_MEAN, IMAGENET_STD
from dssl_jax.errors import UserError

AUGMENTATIONS = ('flip', 'crop', 'erase')  # applied in this order, whatever config.data.augment's
CROP_PADDING = 10  # pixels of black border before the random crop back to the input size
# Random erasing as the field's code bases use it (IRRA: torchvision's RandomErasing with
# scale=(0.02, 0.4)): with probability 0.5, one rectangle of 2-40% of the image, aspect ratio
# log-uniform in (0.3, 3.3), set to the mean pixel (0 after normalization); 10 tries to fit.
ERASE_PROBABILITY, ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = 0.5, (0.02, 0.4), (0.3, 3.3), 10


def augmentations(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.data.augment, checked: a tuple of AUGMENTATIONS' names."""
  augment = tuple(data.augment)
  unknown = [name for name in augment if name not in AUGMENTATIONS]
  if unknown:
    raise UserError(f'config.data.augment: {", ".join(map(repr, unknown))} unknown; choose from '
                    f'{", ".join(AUGMENTATIONS)}')
  return augment


def normalize(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in torchvision's normalization (the evaluation's input too)."""
  mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
  return (images.astype(jnp.float32) / np.float32(255) - mean) / std


def draws(key: jax.Array, height: int, width: int) -> dict:
  """One example's random choices: the flip, the crop's offsets into the padded image, and the
  erased rectangle (the first of ERASE_TRIES (area, aspect) draws that fits, as torchvision
  takes it; `erase` False when the coin says no or none fits)."""
  flip, crop_y, crop_x, coin, scale, ratio, top, left = jax.random.split(key, 8)
  scale = jax.random.uniform(scale, [ERASE_TRIES], minval=ERASE_SCALE[0], maxval=ERASE_SCALE[1])
  log_ratio = jax.random.uniform(ratio, [ERASE_TRIES], minval=np.log(ERASE_RATIO[0]),
                                 maxval=np.log(ERASE_RATIO[1]))
  area = height * width
  heights = jnp.round(jnp.sqrt(scale * area * jnp.exp(log_ratio))).astype(jnp.int32)
  widths = jnp.round(jnp.sqrt(scale * area / jnp.exp(log_ratio))).astype(jnp.int32)
  fits = (heights < height) & (widths < width)
  first = jnp.argmax(fits)
  h, w = heights[first], widths[first]
  return {
      'flip': jax.random.bernoulli(flip),
      'crop_y': jax.random.randint(crop_y, [], 0, 2 * CROP_PADDING + 1),
      'crop_x': jax.random.randint(crop_x, [], 0, 2 * CROP_PADDING + 1),
      'erase': fits[first] & (jax.random.uniform(coin) < ERASE_PROBABILITY),
      'erase_y': jax.random.randint(top, [], 0, jnp.maximum(height - h + 1, 1)),
      'erase_x': jax.random.randint(left, [], 0, jnp.maximum(width - w + 1, 1)),
      'erase_h': h, 'erase_w': w,
  }


def apply(image: jax.Array, chosen: dict, names: tuple[str, ...]) -> jax.Array:
  """uint8 [H, W, 3] -> normalized float32, with the augmentations `names` as `chosen` (draws)
  says: flip, pad-and-crop, then erasing on the normalized image, as IRRA does."""
  height, width, _ = image.shape
  if 'flip' in names:
    image = jnp.where(chosen['flip'], image[:, ::-1], image)
  if 'crop' in names:
    padded = jnp.pad(image, ((CROP_PADDING, CROP_PADDING), (CROP_PADDING, CROP_PADDING), (0, 0)))
    image = jax.lax.dynamic_slice(padded, (chosen['crop_y'], chosen['crop_x'], 0),
                                  (height, width, 3))
  image = normalize(image)
  if 'erase' in names:
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    y, x, h, w = (chosen[k] for k in ('erase_y', 'erase_x', 'erase_h', 'erase_w'))
    inside = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w) & chosen['erase']
    image = jnp.where(inside[..., None], 0.0, image)
  return image


def train_images(images: jax.Array, key: jax.Array, names: tuple[str, ...]) -> jax.Array:
  """A uint8 batch [B, H, W, 3] -> normalized float32, example i augmented with split(key)[i]."""
  height, width = images.shape[1:3]
  keys = jax.random.split(key, len(images))
  return jax.vmap(lambda image, k: apply(image, draws(k, height, width), names))(images, keys)
