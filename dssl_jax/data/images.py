"""Image files: whether one decodes, checked the same way where a dataset is built and where a
folder is indexed for search (PIL only: no TensorFlow)."""
import os

from PIL import Image


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
