"""Test helpers: small configs and models, the parity references where installed, a made-up BPE
merges file (no torch imported here: see conftest.py)."""
import collections
import gzip
import importlib
import importlib.util

import flax
import jax
import ml_collections
import pytest

from dssl_jax.configs import synthetic as synthetic_config
from dssl_jax.configs import synthetic_tiny
from dssl_jax.models import dssl


def lowered_for(platform: str, fn, *args):
  """fn lowered as XLA is given it for `platform` ('cpu', 'cuda'); its .compile() runs on this
  machine's CPU. Where code picks a form by platform (lax.platform_dependent), the accelerator's
  form then runs here."""
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))


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


_MISSING = ('not installed: a parity reference that the Python 3.12 test set '
            '(requirements-py312.txt) leaves out')


class _MissingReference:
  """Stands in for a reference library that is not installed: using it skips the test (or, at
  module level, the module) and says why."""

  def __init__(self, name: str):
    self._name = name

  def __getattr__(self, attribute):
    if attribute.startswith('_'):  # pytest's own look at a module's names
      raise AttributeError(attribute)
    pytest.skip(f'{self._name} {_MISSING}', allow_module_level=True)


def needs(*names: str):
  """Marks a test whose child process imports the references `names`: skipped where one is
  missing, saying which."""
  missing = [name for name in names if importlib.util.find_spec(name) is None]
  return pytest.mark.skipif(bool(missing), reason=f'{", ".join(missing)} {_MISSING}')


def reference(name: str):
  """The test reference `name` (torch, torchvision, open_clip, safetensors.torch), or a stand-in
  that skips what uses it where it is not installed."""
  try:
    return importlib.import_module(name)
  except ImportError:
    return _MissingReference(name)


# Words a made-up CLIP vocabulary holds whole, as CLIP's own holds common English words.
BPE_WORDS = ('a woman wearing red logo dark blue jeans and white shoes on her bag purple hat in the '
             'man grey coat he is carrying black boots with long hair short sleeves t shirt yellow '
             'green backpack brown pants she has glasses , . ; \'s')


def write_bpe_merges(path: str, words: str = BPE_WORDS) -> str:
  """A merges file in CLIP's format and of its size, made up: byte-pair merges learned from
  `words` until each is one token, then pairs of byte characters up to CLIP's count. A tokenizer for
  tests that need a CLIP vocabulary but not open_clip's."""
  from dssl_jax.data import clip_tokenizer as ct  # pylint: disable=g-import-not-at-top
  chars = ct._byte_characters()  # pylint: disable=protected-access
  words = {''.join(chars[b] for b in piece.encode('utf-8'))
           for piece in ct._PIECES.findall(ct.clean(words))}  # pylint: disable=protected-access
  symbols = [[*w[:-1], w[-1] + '</w>'] for w in words]
  merges = []
  while True:  # the most frequent pair first, ties by the pair: a deterministic BPE
    pairs = collections.Counter(p for s in symbols for p in zip(s, s[1:]))
    if not pairs:
      break
    first, second = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append((first, second))
    for k, s in enumerate(symbols):
      merged, i = [], 0
      while i < len(s):
        if s[i:i + 2] == [first, second]:
          merged.append(first + second)
          i += 2
        else:
          merged.append(s[i])
          i += 1
      symbols[k] = merged
  known = {a + b for a, b in merges}
  byte_chars = list(chars.values())
  merges += [(a, b) for a in byte_chars for b in byte_chars if a + b not in known]
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: made up for the tests\n')
    f.write('\n'.join(f'{a} {b}' for a, b in merges[:ct._MERGES]) + '\n')  # pylint: disable=protected-access
  return path


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


def leaves(tree) -> dict:
  """{'a/b/c': array} of a pytree of variables, on the host."""
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(tree)), sep='/')


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
