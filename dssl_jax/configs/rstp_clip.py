"""RSTPReid on CLIP ViT-B/16, with IRRA's schedule (see configs/cuhk_clip.py)."""
from dssl_jax.configs import cuhk_clip


def get_config():
  config = cuhk_clip.get_config()
  config.data.name = 'rstp_reid'
  return config
