"""tf.data input: built dataset -> numpy batches, the same for every dataset.

Train (`train_input`): (image, caption) pairs, shuffled, a fixed number of batches per epoch on
every process. By default (config.data.augment_on='device') the images leave as uint8 at the train
size, decoded once (config.data.cache_decoded), and the step augments and normalizes them
(data/augment.py); each caption's ids are computed once per dataset and kept beside it. With
'host', tf.data decodes, augments and normalizes each pair, as the project first did. Eval: a
gallery (one uint8 image per entry) and queries (one per caption), in order, the last batch padded
and marked by `valid`. Words become ids with the train vocabulary; sentences and phrases are
padded, with masks (id 0 = padding, never a word).
"""
import concurrent.futures
import hashlib
import json
import os
import time
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dssl_jax.data import augment as augment_lib
from dssl_jax.data import builders
from dssl_jax.data import clip_tokenizer
from dssl_jax.data.builders.person_text import PHRASE_SEPARATOR
from dssl_jax.data import formats
from dssl_jax.data.formats import DatasetMeta
from dssl_jax.data.augment import CROP_PADDING, ERASE_PROBABILITY, ERASE_RATIO, ERASE_SCALE
from dssl_jax.data.augment import ERASE_TRIES
from dssl_jax.data.images import IMAGENET_MEAN, IMAGENET_STD
from dssl_jax.errors import UserError

try:  # tf.data only: leave every accelerator to JAX
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow was initialised before this import; its placement stands
  pass

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


def train_input(config: ml_collections.ConfigDict, meta: DatasetMeta, process_index: int = 0,
                process_count: int = 1):
  """The train pairs as config.data.augment_on wants them: TrainInput (uint8, for the step's
  augmentation) or HostAugmentedInput (normalized float, augmented here)."""
  where = config.data.get('augment_on', 'device')
  if where not in ('device', 'host'):
    raise UserError(f"config.data.augment_on must be 'device' or 'host', got {where!r}")
  kind = TrainInput if where == 'device' else HostAugmentedInput
  return kind(config, meta, process_index, process_count)


def _batches_per_epoch(config, meta: DatasetMeta, process_count: int) -> tuple[int, int]:
  """(pairs per process and batch, batches per epoch), the same on every process."""
  if config.train.batch_size % process_count:
    raise UserError(f'config.train.batch_size {config.train.batch_size} must divide evenly '
                    f'over {process_count} processes')
  steps = meta.kept['train']['captions'] // config.train.batch_size
  if steps == 0:
    raise UserError(f'the train split has {meta.kept["train"]["captions"]} captions, fewer than '
                    f'config.train.batch_size {config.train.batch_size}')
  return config.train.batch_size // process_count, steps


class TrainInput:
  """Per-epoch iterators over uint8 (image, caption) batches; epoch e always gives the same order.

  The process's share of the train split is decoded once, at the train size (cache_decoded:
  'memory', 'disk': a uint8 copy beside the TFDS data, written once; 'auto': memory when it fits
  config.data.decoded_memory_gb, else disk; 'none': JPEGs kept in memory, decoded each epoch).
  Every caption's ids are arrays computed once per dataset and stored beside it. An epoch is a
  permutation of the process's pairs, cut into `steps_per_epoch` batches of `batch_size /
  process_count` (repeated if a little short, so hosts stay in step); a batch is one gather.
  """

  def __init__(self, config: ml_collections.ConfigDict, meta: DatasetMeta,
               process_index: int = 0, process_count: int = 1):
    self.config = config
    self.local_batch, self.steps_per_epoch = _batches_per_epoch(config, meta, process_count)
    augment_lib.augmentations(config.data)  # checked here, used by the step
    builder = _builder(config.data)
    split = tfds.split_for_jax_process('train', process_index=process_index,
                                       process_count=process_count)
    examples = builder.as_dataset(split=split, shuffle_files=False,
                                  decoders={'image': tfds.decode.SkipDecoding()})
    folder, shard = os.path.join(builder.data_dir, 'train_inputs'), (process_index, process_count)
    self.captions = _caption_arrays(config, meta, examples, folder, shard)
    count = int(examples.cardinality())
    self.where = decoded_where(config, count)
    self.images = self.jpegs = None
    if self.where == 'none':
      self.jpegs = np.array([ex['image'] for ex in examples.as_numpy_iterator()], object)
    else:
      self.images = _decoded_images(config, examples, count, self.where, folder, shard)

  def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
    """Epoch `epoch`'s batches, from its `skip`th on (a resumed epoch)."""
    rng = np.random.default_rng([self.config.seed, epoch])
    order = np.resize(rng.permutation(len(self.captions['image'])),
                      self.steps_per_epoch * self.local_batch)
    chunks = order.reshape(self.steps_per_epoch, self.local_batch)[skip:]
    texts = ({k: v[rows] for k, v in self.captions.items() if k != 'image'} for rows in chunks)
    if self.jpegs is not None:
      yield from self._decoding(chunks, texts)
      return
    threads = max(1, self.config.data.input_threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # gathers ahead of the step
      pending = []
      for rows, text in zip(chunks, texts):
        pending.append(pool.submit(lambda r, t: t | {'image': self.images[
            self.captions['image'][r]]}, rows, text))
        if len(pending) > threads:
          yield pending.pop(0).result()
      for future in pending:
        yield future.result()

  def _decoding(self, chunks: np.ndarray, texts: Iterator[dict]) -> Iterator[dict]:
    """cache_decoded='none': each batch's JPEGs decoded and resized in tf.data."""
    size = self.config.data.image_size
    ds = tf.data.Dataset.from_tensor_slices(self.jpegs[self.captions['image'][chunks.reshape(-1)]])
    ds = ds.map(lambda jpeg: decode_and_resize(jpeg, size),
                num_parallel_calls=tf.data.AUTOTUNE).batch(self.local_batch)
    ds = _with_threads(ds, self.config.data.input_threads)
    for images, text in zip(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator(), texts):
      yield text | {'image': images}


def decoded_where(config: ml_collections.ConfigDict, images: int) -> str:
  """config.data.cache_decoded for `images` train images of this process: memory, disk or none."""
  choice = config.data.cache_decoded
  if choice == 'auto':
    height, width = config.data.image_size
    fits = images * height * width * 3 <= config.data.decoded_memory_gb * 2**30
    return 'memory' if fits else 'disk'
  if choice not in ('memory', 'disk', 'none'):
    raise UserError("config.data.cache_decoded must be 'auto', 'memory', 'disk' or 'none', got "
                    f'{choice!r}')
  return choice


def _key(*parts) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _caption_arrays(config, meta: DatasetMeta, examples: tf.data.Dataset, folder: str,
                    shard: tuple[int, int]) -> dict:
  """Per caption of the process's `shard` of the train split: its image's row, label, person id,
  token and phrase ids with masks, computed once (CLIP's tokenizer is Python) into
  FOLDER/captions_<key>.npz, so that the train pipeline runs no Python per example."""
  d = config.data
  text = {'backbone': config.model.backbone, 'lengths': [d.max_words, d.max_phrases,
                                                         d.max_phrase_words]}
  if config.model.backbone == 'clip':
    with open(os.path.expanduser(config.model.clip.bpe_path), 'rb') as f:
      text['clip'] = [hashlib.sha1(f.read()).hexdigest(), config.model.clip.to_dict()]
  else:
    text['vocabulary'] = hashlib.sha1('\n'.join(meta.vocabulary).encode()).hexdigest()
  path = os.path.join(folder, f'captions_{_key(text, shard)}.npz')
  if not os.path.exists(path):
    encoder = _text_encoder(config, meta)
    pairs = examples.enumerate().flat_map(
        lambda row, ex: tf.data.Dataset.from_tensor_slices(ex['captions']).map(
            lambda caption: {'image': tf.cast(row, tf.int32),
                             'label': tf.cast(ex['label'], tf.int32),
                             'person_id': tf.cast(ex['person_id'], tf.int32), **encoder(caption)}))
    parts = list(pairs.batch(1024).prefetch(tf.data.AUTOTUNE).as_numpy_iterator())
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    os.makedirs(folder, exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
      np.savez(f, **arrays)
    os.replace(path + '.tmp', path)
  with np.load(path) as saved:
    return dict(saved)


def _decoded_images(config, examples: tf.data.Dataset, count: int, where: str, folder: str,
                    shard: tuple[int, int]) -> np.ndarray:
  """uint8 [count, H, W, 3]: decoded into memory, or read from FOLDER's copy (written once)."""
  height, width = config.data.image_size
  path = os.path.join(folder, f'images_{height}x{width}_{shard[0]}of{shard[1]}.npy')
  if where == 'disk' and os.path.exists(path):
    return np.load(path, mmap_mode='r')
  print(f'decoding the {count} train images at {height}x{width} once, into '
        + ('memory' if where == 'memory' else path), flush=True)
  start = time.time()
  if where == 'memory':
    images = np.empty((count, height, width, 3), np.uint8)
  else:
    os.makedirs(folder, exist_ok=True)
    images = np.lib.format.open_memmap(path + '.tmp', 'w+', np.uint8, (count, height, width, 3))
  decoded = examples.map(lambda ex: decode_and_resize(ex['image'], (height, width)),
                         num_parallel_calls=tf.data.AUTOTUNE).batch(256)
  row = 0
  for batch in decoded.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    images[row:row + len(batch)] = batch
    row += len(batch)
  seconds = max(time.time() - start, 1e-9)
  print(f'decoded {count} images in {seconds:.0f}s ({count / seconds:.0f} images/s)', flush=True)
  if where == 'memory':
    return images
  images.flush()
  del images
  os.replace(path + '.tmp', path)
  return np.load(path, mmap_mode='r')


def _with_threads(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
  """A pool of its own, each op on one thread: the pipeline's cores (0: tf.data's own pool)."""
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  return ds


class HostAugmentedInput:
  """config.data.augment_on='host': tf.data decodes (or caches decoded), augments and normalizes
  each pair, as the project first did; the reference the step's augmentation was checked against.
  Epochs as TrainInput's, in another order. Decoded images are kept in memory where
  cache_decoded chooses memory, else decoded each epoch (the disk copy is TrainInput's)."""

  def __init__(self, config: ml_collections.ConfigDict, meta: DatasetMeta,
               process_index: int = 0, process_count: int = 1):
    self.config = config
    self.local_batch, self.steps_per_epoch = _batches_per_epoch(config, meta, process_count)
    self.encoder = _text_encoder(config, meta)
    self.augment = augment_lib.augmentations(config.data)
    self.cached = decoded_where(config, meta.kept['train']['images'] // process_count) == 'memory'
    data_config = config.data
    ds = _load(config, 'train', process_index, process_count, shuffle=True)
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label'],
                            'person_id': ex['person_id'], 'captions': ex['captions']})
    if self.cached:
      self._images = ds.map(lambda ex: ex | {'image': decode_and_resize(ex['image'],
                                                                        data_config.image_size)},
                            num_parallel_calls=tf.data.AUTOTUNE).cache()
    else:
      self._images = ds

  def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
    data_config = self.config.data
    seed = self.config.seed * 100_003 + epoch
    ds = self._images.shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    if not self.cached:
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
    ds = ds.batch(self.local_batch, drop_remainder=True).take(self.steps_per_epoch).skip(skip)
    ds = _with_threads(ds, data_config.input_threads)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def padded_batches(ds: tf.data.Dataset, batch_size: int) -> Iterator[dict]:
  for batch in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    yield formats.pad_batch(batch, batch_size)


def gallery(config, split: str, process_index: int = 0, process_count: int = 1):
  """One entry per image of `split`: uint8 image (the Encoder normalizes), person id, file path."""
  d = config.data
  ds = _load(config, split, process_index, process_count, shuffle=False).map(
      lambda ex: {'image': decode_and_resize(ex['image'], d.image_size),
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
