"""Images outside tf.data, without TensorFlow: whether a file decodes (checked the same way where
a dataset is built and where a folder is indexed for search), and the test pipeline's resizing
of arrays in memory (the Retriever's)."""
import os

import jax
import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image(path: str) -> str | None:
  """None if the file decodes as an image, else why not."""
  if not os.path.isfile(path):
    return 'missing image'
  try:
    with Image.open(path) as image:
      image.load()
  except Exception as e:  # PIL raises many types for corrupt data
    return f'corrupt image: {type(e).__name__}'
  return None


def resize(image: np.ndarray, size) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 at `size`: pipeline.resize's antialiased bilinear filter (jax's
  scale-and-translate is TensorFlow's), then rounded."""
  resized = jax.image.resize(np.asarray(image, np.float32), (*size, 3), 'bilinear', antialias=True)
  return np.clip(np.round(np.asarray(resized)), 0, 255).astype(np.uint8)
