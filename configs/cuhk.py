"""CUHK-PEDES with the paper's settings."""
from configs import base


def get_config():
  config = base.get_config()
  config.data.name = 'cuhk_pedes'
  return config
