"""ICFG-PEDES (no val split: the last checkpoint is the one evaluated)."""
from configs import base


def get_config():
  config = base.get_config()
  config.data.name = 'icfg_pedes'
  return config
