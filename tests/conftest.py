"""Shared fixtures: a tiny synthetic dataset built once per session, and its config."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top


def tiny_config(data_dir: str, identities: int = 30):
  """The synthetic config, shrunk to test size."""
  config = synthetic_config.get_config()
  config.data.data_dir = data_dir
  config.data.synthetic.identities = identities
  config.data.synthetic.images_per_identity = 3
  config.data.shuffle_buffer = 64
  config.train.batch_size = 8
  config.eval.batch_size = 16
  return config


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
  """(config, meta) of a 30-identity synthetic set, generated and built through `prepare`."""
  from dssl_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config(str(tmp_path_factory.mktemp('tfds')))
  builders.prepare(config.data)
  return config, pipeline.dataset_meta(config.data)
