"""What the input pipeline gives the model, without TensorFlow: a built dataset's meta, the phrase
layout, and random batches of the train format (benchmarks and tests build a model and its step
from these alone, where TensorFlow is not installed)."""
import dataclasses
from typing import Iterator

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What the model and the loop need to know of a built dataset."""
  vocabulary: list
  num_train_identities: int
  kept: dict  # split -> {images, captions, identities}
  splits: tuple
  tagger: str = ''  # the POS tagger the phrases were made with ('' = not recorded: built before)

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)


def phrase_spans(config: ml_collections.ConfigDict) -> bool:
  """Whether phrases are spans of the sentence's tokens (CLIP, config.model.clip.phrases =
  'span'), read in context, rather than token rows encoded on their own."""
  return config.model.backbone == 'clip' and config.model.clip.phrases == 'span'


def phrase_length(config: ml_collections.ConfigDict) -> int:
  """The phrases input's last axis: words (or tokens) per phrase, except that phrase spans
  index the sentence's tokens."""
  if phrase_spans(config):
    return config.data.max_words
  return config.data.max_phrase_words


def random_batch(config, vocab_size: int, num_classes: int, batch_size: int, seed: int = 0):
  """A train batch of random pairs in the pipeline's format; ids repeat so some pairs share a
  person; every caption has 1..n phrases, the rest padding."""
  rng = np.random.default_rng(seed)
  data_config = config.data
  labels = rng.integers(0, num_classes, batch_size)
  labels[1] = labels[0]
  lengths = rng.integers(3, data_config.max_words + 1, batch_size)
  token_mask = np.arange(data_config.max_words) < lengths[:, None]
  n_phrases = rng.integers(1, data_config.max_phrases + 1, batch_size)
  length = phrase_length(config)
  phrase_lengths = rng.integers(1, length + 1, (batch_size, data_config.max_phrases))
  phrase_mask = ((np.arange(length) < phrase_lengths[..., None])
                 & (np.arange(data_config.max_phrases) < n_phrases[:, None])[..., None])
  return {
      'image': rng.normal(size=(batch_size, *data_config.image_size, 3)).astype(np.float32),
      'label': labels.astype(np.int32), 'person_id': (labels + 100).astype(np.int32),
      'tokens': np.where(token_mask, rng.integers(1, vocab_size, token_mask.shape), 0
                         ).astype(np.int32), 'token_mask': token_mask,
      'phrases': np.where(phrase_mask, rng.integers(1, vocab_size, phrase_mask.shape), 0
                          ).astype(np.int32), 'phrase_mask': phrase_mask,
  }


def random_train_batch(config, vocab_size: int, num_classes: int, batch_size: int,
                       seed: int = 0) -> dict:
  """random_batch as the train step receives it: uint8 images where the step augments and
  normalizes them (config.data.augment_on='device', the default)."""
  batch = random_batch(config, vocab_size, num_classes, batch_size, seed)
  if config.data.get('augment_on', 'device') == 'device':
    batch['image'] = np.random.default_rng(seed).integers(0, 256, batch['image'].shape, np.uint8)
  return batch


def random_eval_batch(config, vocab_size: int, num_classes: int, batch_size: int,
                      seed: int = 0) -> dict:
  """random_batch with what the evaluation Encoder also reads: every row valid, ids, and a path
  and a text per row."""
  return random_batch(config, vocab_size, num_classes, batch_size, seed) | {
      'valid': np.ones(batch_size, bool), 'person_id': np.arange(batch_size),
      'file_path': np.full(batch_size, b'x.jpg', object), 'text': np.full(batch_size, b'x', object)}


def pad_batch(batch: dict, batch_size: int) -> dict:
  """A fixed-shape batch (for jit): short batches repeat their last entry; `valid` marks the
  real entries."""
  n = len(next(iter(batch.values())))
  padded = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)])
            for k, v in batch.items()}
  padded['valid'] = np.arange(batch_size) < n
  return padded


def padded_batches_of(arrays: dict, batch_size: int) -> Iterator[dict]:
  """`pad_batch`es of numpy arrays already in memory."""
  count = len(next(iter(arrays.values())))
  for start in range(0, count, batch_size):
    yield pad_batch({k: v[start:start + batch_size] for k, v in arrays.items()}, batch_size)
