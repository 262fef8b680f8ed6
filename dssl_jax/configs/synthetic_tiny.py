"""A smoke test: 30 generated identities, a tiny model, 3 epochs; trains and tests in a minute or
two on a CPU. For trying a set-up (launch/local.sh, a new machine), not for figures."""
from dssl_jax.configs import synthetic


def get_config():
  config = synthetic.get_config()
  d = config.data
  d.synthetic.identities, d.synthetic.images_per_identity = 30, 3
  d.image_size, d.max_words, d.max_phrases, d.max_phrase_words = (64, 32), 10, 4, 3
  d.shuffle_buffer = 64
  m = config.model
  m.depth, m.width, m.embed_dim, m.word_dim, m.gn_groups, m.num_strips = 18, 8, 32, 16, 4, 2
  t = config.train
  t.batch_size, t.stage1_epochs, t.stage2_epochs, t.lr_decay_epochs = 8, 1, 2, 1
  t.log_every_steps, t.checkpoint_every_steps = 5, 10
  config.eval.batch_size = 16
  return config
