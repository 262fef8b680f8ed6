"""ICFG-PEDES on CLIP ViT-B/16, with IRRA's schedule (see configs/cuhk_clip.py); no val split:
the last checkpoint is the one evaluated."""
from dssl_jax.configs import cuhk_clip


def get_config():
  config = cuhk_clip.get_config()
  config.data.name = 'icfg_pedes'
  return config
