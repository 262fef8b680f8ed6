"""Shared fixtures, built once per session: a tiny synthetic dataset and its config; a tiny trained
workdir with a folder of images to search; a made-up CLIP merges file."""
import importlib.util
import json
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# XLA's compiled programs, kept across tests and the processes they start: most of the suite's time
# is compiling the same tiny models' programs again. Keyed by the program, jaxlib and XLA's flags,
# so a changed model compiles anew (set it to '' to compile everything every time).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(ROOT, '.pytest_cache', 'xla_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# torchvision (a test-only reference) pulls in triton, which segfaults when imported after
# TensorFlow (TF 2.21 + triton 3.8, whatever the test order): import it first, where installed.
if importlib.util.find_spec('torchvision'):
  import torchvision  # pylint: disable=g-import-not-at-top,unused-import

import pytest  # pylint: disable=g-import-not-at-top

from tests.helpers import (  # pylint: disable=g-import-not-at-top
    tiny_config, tiny_train_config, write_bpe_merges)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
  """Under pytest-xdist's --dist loadgroup, the tests of the trained model share one worker, and
  so one training."""
  for item in items:
    if 'trained' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.xdist_group('trained'))


@pytest.fixture(scope='session')
def bpe_path(tmp_path_factory) -> str:
  """A made-up CLIP merges file (tests.helpers.write_bpe_merges): no open_clip needed."""
  return write_bpe_merges(str(tmp_path_factory.mktemp('bpe') / 'merges.txt.gz'))


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
  """(config, meta) of a 30-identity synthetic set, generated and built through `prepare`."""
  from dssl_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config(str(tmp_path_factory.mktemp('tfds')))
  builders.prepare(config.data)
  return config, pipeline.dataset_meta(config.data)


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """A tiny model that has learned 6 train identities, and a folder of 15 of their 18 images (and
  a corrupt one): (workdir, image folder, train entries, raw dataset folder)."""
  from dssl_jax import train  # pylint: disable=g-import-not-at-top
  from dssl_jax.data import builders  # pylint: disable=g-import-not-at-top
  config = tiny_train_config(tiny_config(str(tmp_path_factory.mktemp('tfds')), identities=8))
  builders.prepare(config.data)
  t = config.train
  t.stage1_epochs, t.stage2_epochs, t.stage2_lr, t.lr_decay_epochs = 1, 40, 2e-3, 100
  t.eval_every_epochs = 1000  # a 1-person val split cannot pick a best epoch: use the last
  workdir = str(tmp_path_factory.mktemp('run'))
  train.run_training(config, workdir)
  raw = builders.manual_dir(config.data)
  with open(os.path.join(raw, 'reid_raw.json')) as f:
    entries = [e for e in json.load(f) if e['split'] == 'train']
  images = tmp_path_factory.mktemp('images')
  for e in entries[:-3]:  # the last three come later
    shutil.copy(os.path.join(raw, 'imgs', e['file_path']), images)
  (images / 'corrupt.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  return workdir, images, entries, raw
