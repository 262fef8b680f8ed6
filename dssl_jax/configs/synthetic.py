"""The embedded default: generated data, small images and model, trains on 2 CPU cores in minutes."""
from dssl_jax.configs import base


def get_config():
  config = base.get_config()
  config.data.name = 'synthetic'
  config.data.image_size = (192, 64)
  config.data.max_words = 40
  config.data.cache_decoded = 'memory'
  config.data.tagger = 'lexicon'  # no download: the templated captions use only words it knows
  # 350 train, 50 val and 300 test identities: a large test split, so that one run's R1 says more.
  config.data.synthetic.identities = 700
  config.data.synthetic.split_fractions = (350 / 700, 50 / 700, 300 / 700)
  config.model.depth = 18
  config.model.width = 16
  config.model.embed_dim = 256
  config.model.word_dim = 128
  config.model.gn_groups = 16
  # No ImageNet weights here: the backbone learns from scratch, so stage 2 needs a higher rate.
  config.model.backbone_weights = 'scratch'
  config.train.stage1_epochs = 2
  config.train.stage2_epochs = 12
  config.train.stage2_lr = 1e-3
  # Val R1 still climbs steeply at epoch 8: decay after 10; 2 low-rate epochs give its gain
  # (docs/experiments/synthetic_schedule.md).
  config.train.lr_decay_epochs = 10
  config.train.log_every_steps = 29
  config.train.checkpoint_every_steps = 300
  return config
