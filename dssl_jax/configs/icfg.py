"""ICFG-PEDES (no val split: the last checkpoint is the one evaluated).

The paper names no augmentation: training flips only (base config.data.augment = ('flip',)).
"""
from dssl_jax.configs import base


def get_config():
  config = base.get_config()
  config.data.name = 'icfg_pedes'
  return config
