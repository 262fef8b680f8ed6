"""Test helpers: small configs and models (no torch here: see conftest.py)."""
import jax
import ml_collections

from configs import synthetic as synthetic_config
from configs import synthetic_tiny
from dssl_jax.models import dssl


# Run first in a child process (or as its sitecustomize.py): importing what a GPU machine's JAX
# stack lacks (TensorFlow, TFDS, nltk, clu, tqdm, torch) then raises.
BLOCK_DATA_STACK = """
import sys
class Blocked:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'nltk', 'clu', 'tqdm', 'torch'):
      raise ImportError(f'{name}: blocked by the test')
sys.meta_path.insert(0, Blocked())
"""


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
  """The synthetic config with configs/synthetic_tiny.py's input shapes and model: small enough
  for many quick forward passes."""
  config, tiny = synthetic_config.get_config(), synthetic_tiny.get_config()
  for field in ('image_size', 'max_words', 'max_phrases', 'max_phrase_words'):
    config.data[field] = tiny.data[field]
  config.model = tiny.model
  return config


def tiny_train_config(config):
  """`config` (a tiny dataset's) with configs/synthetic_tiny.py's model and schedule of a few
  dozen steps."""
  tiny = synthetic_tiny.get_config()
  config = config.copy_and_resolve_references()
  config.data.image_size = tiny.data.image_size
  config.data.max_words = tiny.data.max_words
  config.model = tiny.model
  for field in ('stage1_epochs', 'stage2_epochs', 'lr_decay_epochs', 'log_every_steps',
                'checkpoint_every_steps'):
    config.train[field] = tiny.train[field]
  config.eval.image_to_text = True
  return config


def init_model(config, vocab_size: int = 50, num_classes: int = 7, seed: int = 0):
  """(model, variables) of config.model for the config's input shapes."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), vocab_size, num_classes)
  return model, dssl.init_variables(model, jax.random.key(seed), config)


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
