"""RSTPReid with the paper's settings.

The paper names no augmentation: training flips only (base config.data.augment = ('flip',)).
"""
from dssl_jax.configs import base


def get_config():
  config = base.get_config()
  config.data.name = 'rstp_reid'
  return config
