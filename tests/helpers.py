"""Test helpers: small configs and random batches (no torch here: see conftest.py)."""
import numpy as np

from configs import synthetic as synthetic_config


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


def tiny_model_config():
  """The synthetic config with a model small enough for many quick forward passes."""
  config = synthetic_config.get_config()
  config.data.image_size = (64, 32)
  config.data.max_words, config.data.max_phrases, config.data.max_phrase_words = 10, 4, 3
  m = config.model
  m.depth, m.width, m.embed_dim, m.word_dim, m.gn_groups, m.num_strips = 18, 8, 32, 16, 4, 2
  return config


def random_batch(config, vocab_size: int, num_classes: int, batch_size: int, seed: int = 0):
  """A train batch of random pairs in the pipeline's format; ids repeat so some pairs share a
  person; every caption has 1..n phrases, the rest padding."""
  rng = np.random.default_rng(seed)
  d = config.data
  labels = rng.integers(0, num_classes, batch_size)
  labels[1] = labels[0]
  lengths = rng.integers(3, d.max_words + 1, batch_size)
  token_mask = np.arange(d.max_words) < lengths[:, None]
  n_phrases = rng.integers(1, d.max_phrases + 1, batch_size)
  phrase_lengths = rng.integers(1, d.max_phrase_words + 1, (batch_size, d.max_phrases))
  phrase_mask = ((np.arange(d.max_phrase_words) < phrase_lengths[..., None])
                 & (np.arange(d.max_phrases) < n_phrases[:, None])[..., None])
  return {
      'image': rng.normal(size=(batch_size, *d.image_size, 3)).astype(np.float32),
      'label': labels.astype(np.int32), 'person_id': (labels + 100).astype(np.int32),
      'tokens': np.where(token_mask, rng.integers(1, vocab_size, token_mask.shape), 0
                         ).astype(np.int32), 'token_mask': token_mask,
      'phrases': np.where(phrase_mask, rng.integers(1, vocab_size, phrase_mask.shape), 0
                          ).astype(np.int32), 'phrase_mask': phrase_mask,
  }


def tiny_train_config(config):
  """`config` (a tiny dataset's) with a small model and a schedule of a few dozen steps."""
  small = tiny_model_config()
  config = config.copy_and_resolve_references()
  config.data.image_size = small.data.image_size
  config.data.max_words = small.data.max_words
  config.model = small.model
  t = config.train
  t.stage1_epochs, t.stage2_epochs, t.lr_decay_epochs = 1, 2, 1
  t.log_every_steps, t.checkpoint_every_steps = 5, 10
  return config
