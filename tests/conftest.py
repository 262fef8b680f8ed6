"""Shared fixtures: a tiny synthetic dataset built once per session, and its config."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# torchvision (a test-only reference) pulls in triton, which segfaults when imported after
# TensorFlow (TF 2.21 + triton 3.8, whatever the test order): import it first.
import torchvision  # pylint: disable=g-import-not-at-top,unused-import

import pytest  # pylint: disable=g-import-not-at-top

from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
  """(config, meta) of a 30-identity synthetic set, generated and built through `prepare`."""
  from dssl_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config(str(tmp_path_factory.mktemp('tfds')))
  builders.prepare(config.data)
  return config, pipeline.dataset_meta(config.data)
