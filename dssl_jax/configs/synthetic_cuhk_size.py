"""The synthetic generator at CUHK-PEDES's size: a rehearsal of a real dataset's scale.

13,003 identities x 3 images x 2 captions at 384x128 (CUHK-PEDES: 13,003 identities, 40,206
images, 80,412 captions), split 11,003 / 1,000 / 1,000 identities as CUHK-PEDES is. The model is
the embedded default's small one; the train images are decoded once, as for the real datasets
(config.data.cache_decoded='auto': memory, 1.9 GB). Used by
docs/benchmarks.md's rehearsal commands (benchmarks.benchmark --what prepare,input,test_eval).
"""
from dssl_jax.configs import synthetic


def get_config():
  config = synthetic.get_config()
  s = config.data.synthetic
  s.identities = 13_003
  s.images_per_identity = 3
  s.split_fractions = (11_003 / 13_003, 1_000 / 13_003, 1_000 / 13_003)
  s.image_size = (384, 128)
  config.data.image_size = (384, 128)
  return config
