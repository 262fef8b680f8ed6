"""tf.data input: built dataset -> numpy batches, the same for every dataset.

Train: (image, caption) pairs, shuffled, augmented (config.data.augment), normalized, a fixed
number of batches per epoch on every process. Eval: a gallery (one entry per image) and queries
(one per caption), in order, the last batch padded and marked by `valid`. Words become ids with
the train vocabulary; sentences and phrases are padded, with masks (id 0 = padding, never a word).
"""
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dssl_jax.data import builders
from dssl_jax.data import clip_tokenizer
from dssl_jax.data.builders.person_text import PHRASE_SEPARATOR
from dssl_jax.data import formats
from dssl_jax.data.formats import DatasetMeta
from dssl_jax.data.images import IMAGENET_MEAN, IMAGENET_STD
from dssl_jax.errors import UserError

try:  # tf.data only: leave every accelerator to JAX
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow was initialised before this import; its placement stands
  pass

AUGMENTATIONS = ('flip', 'crop', 'erase')  # applied in this order, whatever config.data.augment's
CROP_PADDING = 10  # pixels of black border before the random crop back to the input size
# Random erasing as the field's code bases use it (IRRA: torchvision's RandomErasing with
# scale=(0.02, 0.4)): with probability 0.5, one rectangle of 2-40% of the image, aspect ratio
# log-uniform in (0.3, 3.3), set to the mean pixel (0 after normalization); 10 tries to fit.
ERASE_PROBABILITY, ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = 0.5, (0.02, 0.4), (0.3, 3.3), 10


def _builder(data: ml_collections.ConfigDict):
  builder = builders.get_builder(data)
  if not builder.is_prepared():
    raise UserError(f'dataset {data.name} is not built in {builders.data_dir(data)}: run '
                    'python -m dssl_jax.main --mode=prepare with the same config first')
  return builder


def dataset_meta(data: ml_collections.ConfigDict) -> DatasetMeta:
  builder = _builder(data)
  metadata = builder.info.metadata
  return DatasetMeta(list(metadata['vocabulary']), int(metadata['num_train_identities']),
                     dict(metadata['build_summary']['kept']), tuple(builder.info.splits),
                     metadata.get('tagger', ''))


class TextEncoder:
  """Token strings -> padded id tensors and masks, with the train vocabulary (TF ops)."""

  def __init__(self, vocabulary, max_words: int, max_phrases: int, max_phrase_words: int):
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(vocabulary)),
                                            tf.range(len(vocabulary), dtype=tf.int32)),
        default_value=1)  # UNK
    self.max_words, self.max_phrases, self.max_phrase_words = (max_words, max_phrases,
                                                               max_phrase_words)

  def sentence(self, tokens: tf.Tensor):
    ids = self.table.lookup(tf.strings.split(tokens))[:self.max_words]
    ids = tf.pad(ids, [[0, self.max_words - tf.shape(ids)[0]]])
    return tf.ensure_shape(ids, [self.max_words]), tf.ensure_shape(ids != 0, [self.max_words])

  def phrases(self, phrases: tf.Tensor):
    words = tf.strings.split(tf.strings.split(phrases, PHRASE_SEPARATOR))  # ragged [n, words]
    ids = self.table.lookup(words).to_tensor(
        0, shape=[self.max_phrases, self.max_phrase_words])
    return ids, ids != 0

  def __call__(self, caption: dict) -> dict:
    tokens, token_mask = self.sentence(caption['tokens'])
    phrases, phrase_mask = self.phrases(caption['phrases'])
    return {'tokens': tokens, 'token_mask': token_mask, 'phrases': phrases,
            'phrase_mask': phrase_mask}


class ClipTextEncoder(clip_tokenizer.ClipTextEncoder):
  """The same from the raw text and the phrases, with CLIP's tokenizer (a numpy function in the
  graph: BPE has no TF ops)."""

  def __call__(self, caption: dict) -> dict:
    def encode(text, phrases):
      phrases = phrases.decode()
      out = self.encode(text.decode(), phrases.split(PHRASE_SEPARATOR) if phrases else [])
      return out['tokens'], out['phrases'], out['phrase_mask']

    tokens, phrases, phrase_mask = tf.numpy_function(
        encode, [caption['text'], caption['phrases']], [tf.int32, tf.int32, tf.bool],
        stateful=False)
    tokens = tf.ensure_shape(tokens, self.shapes[0])
    return {'tokens': tokens, 'token_mask': tokens != 0,
            'phrases': tf.ensure_shape(phrases, self.shapes[1]),
            'phrase_mask': tf.ensure_shape(phrase_mask, self.shapes[1])}


def _text_encoder(config, meta: DatasetMeta) -> TextEncoder | ClipTextEncoder:
  if config.model.backbone == 'clip':
    return ClipTextEncoder(config)
  d = config.data
  return TextEncoder(meta.vocabulary, d.max_words, d.max_phrases, d.max_phrase_words)


def decode_and_resize(encoded: tf.Tensor, size) -> tf.Tensor:
  """Any JPEG/PNG (grey too) -> uint8 [H, W, 3] at `size`, antialiased like PIL's resize."""
  return resize(tf.io.decode_image(encoded, channels=3, expand_animations=False), size)


def resize(image: tf.Tensor, size) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 at `size`, antialiased like PIL's resize."""
  image = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def normalize(image: tf.Tensor) -> tf.Tensor:
  image = tf.cast(image, tf.float32) / 255.0
  return (image - IMAGENET_MEAN) / IMAGENET_STD


def augmentations(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.data.augment, checked: a tuple of AUGMENTATIONS' names."""
  augment = tuple(data.augment)
  unknown = [name for name in augment if name not in AUGMENTATIONS]
  if unknown:
    raise UserError(f'config.data.augment: {", ".join(map(repr, unknown))} unknown; choose from '
                    f'{", ".join(AUGMENTATIONS)}')
  return augment


def random_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Pads CROP_PADDING black pixels on each side, then crops a random window of the input size."""
  padded = tf.pad(image, [[CROP_PADDING, CROP_PADDING], [CROP_PADDING, CROP_PADDING], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


def random_erase(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """A normalized image [H, W, 3] with, at probability ERASE_PROBABILITY, one rectangle set to 0
  (the mean pixel); its area and aspect ratio as torchvision's RandomErasing draws them."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  area = tf.cast(height * width, tf.float32)
  coin, shape, top, left = (tf.random.experimental.stateless_fold_in(seed, k) for k in range(4))
  scale = tf.random.stateless_uniform([ERASE_TRIES], shape, *ERASE_SCALE)
  log_ratio = tf.random.stateless_uniform(
      [ERASE_TRIES], tf.random.experimental.stateless_fold_in(shape, 1),
      *np.log(ERASE_RATIO).astype(np.float32))
  heights = tf.cast(tf.round(tf.sqrt(scale * area * tf.exp(log_ratio))), tf.int32)
  widths = tf.cast(tf.round(tf.sqrt(scale * area / tf.exp(log_ratio))), tf.int32)
  fits = (heights < height) & (widths < width)
  first = tf.argmax(tf.cast(fits, tf.int32))  # the first try that fits, as torchvision takes it
  h, w = heights[first], widths[first]
  erase = fits[first] & (tf.random.stateless_uniform([], coin) < ERASE_PROBABILITY)
  y = tf.random.stateless_uniform([], top, 0, tf.maximum(height - h + 1, 1), tf.int32)
  x = tf.random.stateless_uniform([], left, 0, tf.maximum(width - w + 1, 1), tf.int32)
  rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
  inside = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w) & erase
  return tf.where(inside[..., None], tf.zeros_like(image), image)


def augment(image: tf.Tensor, names: tuple[str, ...], seed: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> normalized float, with the training augmentations `names` (in
  AUGMENTATIONS' order: flip, pad-and-crop, then erasing on the normalized image, as IRRA does).
  `seed` [2] is the pair's: the flip draws from it as before crop and erase existed."""
  if 'flip' in names:
    image = tf.image.stateless_random_flip_left_right(image, seed)
  if 'crop' in names:
    image = random_crop(image, tf.random.experimental.stateless_fold_in(seed, 1))
  image = normalize(image)
  if 'erase' in names:
    image = random_erase(image, tf.random.experimental.stateless_fold_in(seed, 2))
  return image


def _load(config, split: str, process_index: int, process_count: int, shuffle: bool):
  builder = _builder(config.data)
  if split not in builder.info.splits:
    raise UserError(f'config.eval.split {split!r}: {config.data.name} has splits '
                    f'{sorted(builder.info.splits)}')
  per_process = tfds.split_for_jax_process(split, process_index=process_index,
                                           process_count=process_count)
  return builder.as_dataset(
      split=per_process, shuffle_files=shuffle,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=config.seed, try_autocache=False))


class TrainInput:
  """Per-epoch iterators over (image, caption) batches; epoch e always gives the same order.

  Every process yields `steps_per_epoch` batches of `batch_size / process_count` pairs, so hosts
  stay in step (their shards are repeated if a little short).
  """

  def __init__(self, config: ml_collections.ConfigDict, meta: DatasetMeta,
               process_index: int = 0, process_count: int = 1):
    if config.train.batch_size % process_count:
      raise UserError(f'config.train.batch_size {config.train.batch_size} must divide evenly '
                      f'over {process_count} processes')
    self.config = config
    self.local_batch = config.train.batch_size // process_count
    self.steps_per_epoch = meta.kept['train']['captions'] // config.train.batch_size
    if self.steps_per_epoch == 0:
      raise UserError(f'the train split has {meta.kept["train"]["captions"]} captions, fewer than '
                      f'config.train.batch_size {config.train.batch_size}')
    self.encoder = _text_encoder(config, meta)
    self.augment = augmentations(config.data)
    data_config = config.data
    ds = _load(config, 'train', process_index, process_count, shuffle=True)
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label'],
                            'person_id': ex['person_id'], 'captions': ex['captions']})
    if data_config.cache_decoded:
      self._images = ds.map(lambda ex: ex | {'image': decode_and_resize(ex['image'],
                                                                        data_config.image_size)},
                            num_parallel_calls=tf.data.AUTOTUNE).cache()
    else:
      self._images = ds

  def epoch(self, epoch: int) -> Iterator[dict]:
    data_config = self.config.data
    seed = self.config.seed * 100_003 + epoch
    ds = self._images.shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    if not data_config.cache_decoded:
      ds = ds.map(lambda ex: ex | {'image': decode_and_resize(ex['image'], data_config.image_size)},
                  num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(ex['captions']).map(
        lambda caption: {'image': ex['image'], 'label': ex['label'],
                         'person_id': ex['person_id'], 'caption': caption}))
    ds = ds.shuffle(4 * self.local_batch, seed=seed).repeat()

    def finish(pair, rng_seed):
      return {'image': augment(pair['image'], self.augment, rng_seed),
              'label': tf.cast(pair['label'], tf.int32),
              'person_id': tf.cast(pair['person_id'], tf.int32), **self.encoder(pair['caption'])}

    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(self.local_batch, drop_remainder=True).take(self.steps_per_epoch)
    if data_config.input_threads:  # a pool of its own, each op on one thread: the pipeline's cores
      options = tf.data.Options()
      options.threading.private_threadpool_size = data_config.input_threads
      options.threading.max_intra_op_parallelism = 1
      ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def padded_batches(ds: tf.data.Dataset, batch_size: int) -> Iterator[dict]:
  for batch in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    yield formats.pad_batch(batch, batch_size)


def gallery(config, split: str, process_index: int = 0, process_count: int = 1):
  """One entry per image of `split`: normalized image, person id, file path."""
  d = config.data
  ds = _load(config, split, process_index, process_count, shuffle=False).map(
      lambda ex: {'image': normalize(decode_and_resize(ex['image'], d.image_size)),
                  'person_id': tf.cast(ex['person_id'], tf.int32), 'file_path': ex['file_path']},
      num_parallel_calls=tf.data.AUTOTUNE)
  return padded_batches(ds, config.eval.batch_size)


def queries(config, meta: DatasetMeta, split: str, process_index: int = 0,
            process_count: int = 1):
  """One entry per caption of `split`: encoded sentence and phrases, person id, raw text."""
  encoder = _text_encoder(config, meta)
  ds = _load(config, split, process_index, process_count, shuffle=False)
  ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(ex['captions']).map(
      lambda caption: {'person_id': tf.cast(ex['person_id'], tf.int32), 'text': caption['text'],
                       **encoder(caption)}))
  return padded_batches(ds, config.eval.batch_size)
