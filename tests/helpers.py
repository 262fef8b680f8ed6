"""Test helpers: small configs and models (no torch here: see conftest.py)."""
import jax
import ml_collections

from configs import synthetic as synthetic_config
from dssl_jax.models import dssl


def tiny_config(data_dir: str, identities: int = 30):
  """The synthetic config, shrunk to test size."""
  config = synthetic_config.get_config()
  config.data.data_dir = data_dir
  config.data.synthetic.identities = identities
  config.data.synthetic.images_per_identity = 3
  config.data.synthetic.split_fractions = (0.7, 0.1, 0.2)
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
  config.eval.image_to_text = True
  return config


def init_model(config, vocab_size: int = 50, num_classes: int = 7, seed: int = 0):
  """(model, variables) of config.model for the config's input shapes."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), vocab_size, num_classes)
  d = config.data
  return model, dssl.init_variables(model, jax.random.key(seed), d.image_size, d.max_words,
                                    d.max_phrases, d.max_phrase_words)


def reference_metrics(similarity, query_ids, gallery_ids):
  """Query by query, as the field's evaluation reads: rank, then walk the list."""
  r1 = r5 = r10 = ap = inp = 0.0
  counted = 0
  for q in range(len(query_ids)):
    order = sorted(range(len(gallery_ids)), key=lambda g: (-similarity[q, g], g))  # ties: index
    hits = [gallery_ids[g] == query_ids[q] for g in order]
    if not any(hits):
      continue
    counted += 1
    first = hits.index(True) + 1
    r1, r5, r10 = r1 + (first <= 1), r5 + (first <= 5), r10 + (first <= 10)
    found, precisions = 0, []
    for rank, hit in enumerate(hits, 1):
      if hit:
        found += 1
        precisions.append(found / rank)
    ap += sum(precisions) / found
    last = len(hits) - hits[::-1].index(True)
    inp += found / last
  return {k: 100 * v / counted for k, v in
          {'R1': r1, 'R5': r5, 'R10': r10, 'mAP': ap, 'mINP': inp}.items()}, counted
