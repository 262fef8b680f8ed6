"""The step's augmentation (data/augment.py): exact against a numpy reference for a fixed key, and
drawn as the host's tf.data version draws (pipeline.augment), over many examples."""
import jax
import numpy as np
import pytest

from dssl_jax.data import augment as augment_lib
from dssl_jax.data.images import IMAGENET_MEAN, IMAGENET_STD

EVERY = augment_lib.AUGMENTATIONS
PAD = augment_lib.CROP_PADDING


def _reference(image: np.ndarray, chosen: dict, names) -> np.ndarray:
  """augment.apply in numpy: slicing where the step uses masks and dynamic slices."""
  height, width, _ = image.shape
  if 'flip' in names and chosen['flip']:
    image = image[:, ::-1]
  if 'crop' in names:
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
    y, x = chosen['crop_y'], chosen['crop_x']
    image = padded[y:y + height, x:x + width]
  out = (image.astype(np.float32) / np.float32(255) - np.float32(IMAGENET_MEAN)) / np.float32(
      IMAGENET_STD)
  if 'erase' in names and chosen['erase']:
    y, x, h, w = (chosen[k] for k in ('erase_y', 'erase_x', 'erase_h', 'erase_w'))
    out[y:y + h, x:x + w] = 0
  return out


@pytest.mark.parametrize('names', [EVERY, ('flip',), ('crop', 'erase'), ()])
def test_a_fixed_key_augments_as_the_numpy_reference(names):
  images = np.random.default_rng(0).integers(0, 256, (16, 40, 24, 3), dtype=np.uint8)
  key = jax.random.key(3)
  got = np.asarray(augment_lib.train_images(images, key, names))
  chosen = jax.device_get(jax.vmap(lambda k: augment_lib.draws(k, 40, 24))(
      jax.random.split(key, 16)))
  for i, image in enumerate(images):
    want = _reference(image, {k: v[i] for k, v in chosen.items()}, names)
    np.testing.assert_array_equal(got[i] == 0, want == 0)  # the erased rectangle, exactly
    # Normalized pixels of two uint8 values lie >= 0.017 apart: this is the same uint8 image.
    np.testing.assert_allclose(got[i], want, atol=1e-5)
  assert 0 < chosen['flip'].sum() < 16 and 0 < chosen['erase'].sum() < 16  # both choices met
  assert len(set(zip(chosen['crop_y'], chosen['crop_x']))) > 8


def _coordinates(height: int, width: int) -> np.ndarray:
  """An image whose pixels say where they are: red = row, green = 5 x column, blue = 200."""
  rows, cols = np.mgrid[:height, :width]
  return np.stack([rows, 5 * cols, np.full_like(rows, 200)], -1).astype(np.uint8)


def _what_was_drawn(out: np.ndarray) -> dict:
  """Flip, crop offsets and erased rectangle, read back from an augmented _coordinates image."""
  height, width, _ = out.shape
  erased = np.all(out == 0, axis=-1)
  pixels = np.round((out * IMAGENET_STD + IMAGENET_MEAN) * 255).astype(int)
  real = (pixels[..., 2] == 200) & ~erased  # neither the crop's black border nor erased
  y, x = next((y, x) for y, x in zip(*np.nonzero(real)) if x + 1 < width and real[y, x + 1])
  flip = pixels[y, x + 1, 1] < pixels[y, x, 1]
  source_x = pixels[y, x, 1] // 5
  drawn = {'flip': flip, 'crop_y': pixels[y, x, 0] - y + PAD,
           'crop_x': (width - 1 - source_x if flip else source_x) - x + PAD, 'erase': erased.any()}
  if erased.any():
    rows, cols = np.nonzero(erased)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    drawn |= {'area': h * w / (height * width), 'aspect': h / w}
  return drawn


def test_the_step_draws_as_the_host_pipeline_draws():
  """Over 1,500 examples each: the flip's and the erasing's rates, the crop offsets' range and
  mean, the erased area's and aspect's ranges and means, the same for both versions."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  n, image = 1500, _coordinates(96, 48)
  host = tf.data.Dataset.range(n).map(lambda i: pipeline.augment(
      tf.constant(image), EVERY, tf.stack([i, tf.constant(7, tf.int64)]))).batch(500)
  versions = {
      'host': np.concatenate(list(host.as_numpy_iterator())),
      'step': np.asarray(augment_lib.train_images(np.repeat(image[None], n, 0),
                                                  jax.random.key(7), EVERY))}
  stats = {}
  for name, outs in versions.items():
    drawn = [_what_was_drawn(out) for out in outs]
    erased = [d for d in drawn if d['erase']]
    areas, aspects = np.array([d['area'] for d in erased]), np.array([d['aspect'] for d in erased])
    assert 0.015 < areas.min() and areas.max() < 0.42, name  # 2-40%, give or take rounding
    assert 0.25 < aspects.min() and aspects.max() < 3.7, name  # 0.3-3.3, the same
    for axis in ('crop_y', 'crop_x'):
      offsets = np.array([d[axis] for d in drawn])
      assert (offsets.min(), offsets.max()) == (0, 2 * PAD), (name, axis)
      assert abs(offsets.mean() - PAD) < 0.7, (name, axis)  # uniform: 4 standard errors
    stats[name] = np.array([np.mean([d['flip'] for d in drawn]), len(erased) / n, areas.mean(),
                            np.log(aspects).mean()])
  assert abs(stats['host'][0] - 0.5) < 0.06 and abs(stats['step'][0] - 0.5) < 0.06
  np.testing.assert_allclose(stats['step'], stats['host'], atol=0.06)
