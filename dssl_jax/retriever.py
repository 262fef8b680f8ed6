"""A trained model from Python: encode person images and sentences, score them, search an index.

    from dssl_jax import Retriever
    retriever = Retriever.from_workdir('runs/cuhk')
    images = retriever.encode_images(['a.jpg', 'b.jpg'])         # paths or uint8 [H, W, 3] arrays
    texts = retriever.encode_texts(['a woman in a red coat and black boots'])
    scores = retriever.similarity(images, texts)                  # [texts, images], Sim_TI
    retriever.build_index('my_photos/', 'my_index/')              # encodes new or changed files
    hits = retriever.search(['a man with a blue backpack'], 'my_index/', top=5)  # [(path, score)]

Images go through the test pipeline's decoding and resizing; sentences through the training
vocabulary and the tagger the training phrases were made with. Defines no flag.

Image arrays need neither TensorFlow nor nltk (`pip install dssl_jax`); image files need
TensorFlow, and sentences nltk's chunker (`pip install 'dssl_jax[data]'`).
"""
import functools
import os

import numpy as np

from dssl_jax import checkpoints, evaluate, index as index_lib
from dssl_jax import similarity as similarity_lib
from dssl_jax import state as state_lib
from dssl_jax.data import captions, clip_tokenizer, formats
from dssl_jax.data import images as images_lib
from dssl_jax.errors import UserError


class Retriever:
  """The best (else latest) checkpoint of a trained workdir, ready to encode and rank."""

  def __init__(self, workdir: str):
    """Prefer `Retriever.from_workdir(path)`."""
    self.config, self.meta = checkpoints.load_workdir(workdir)
    model, mesh = state_lib.make_model(self.config, self.meta), state_lib.make_mesh()
    loaded = state_lib.load_variables(self.config, workdir, model, mesh)
    self.variables, self.checkpoint = loaded.variables, loaded.which
    # Sim_TI's (lambda1, lambda2): this run's, at its checkpoint's stage
    self.sim_ti_weights = similarity_lib.sim_ti_weights(self.config, loaded.stage)
    self.encoder = evaluate.Encoder(model, mesh)
    self.word_ids = {w: i for i, w in enumerate(self.meta.vocabulary)}
    self.fingerprint = {'model': self.config.model.to_dict(),
                        'image_size': list(self.config.data.image_size),
                        'vocabulary': len(self.meta.vocabulary), 'checkpoint': self.checkpoint}

  @classmethod
  def from_workdir(cls, workdir: str) -> 'Retriever':
    """The trained model of a workdir.

    Args:
      workdir: a folder that `python -m dssl_jax.main --mode=train` wrote.

    Returns:
      A Retriever with config.eval.checkpoint's variables (the best on val by default).
    """
    return cls(workdir)

  # ------------------------------------------------------------------ images

  def encode_images(self, images: list) -> dict:
    """The gallery features of images, resized to the model's input size.

    Args:
      images: image file paths (jpg, png), or uint8 [H, W, 3] arrays of any size; not both.

    Returns:
      {'V_P': [N, p] person features, 'V_L': [N, k, p] strip features}, what `similarity` and
      `search` rank.
    """
    if not len(images):
      raise UserError('encode_images needs at least one image')
    if all(isinstance(x, (str, os.PathLike)) for x in images):
      features = self._encode_image_files([os.fspath(x) for x in images])
    else:
      for i, x in enumerate(images):
        if isinstance(x, (str, os.PathLike)) or np.ndim(x) != 3 or np.shape(x)[-1] != 3:
          raise UserError(f'image {i}: give all paths or all uint8 [H, W, 3] arrays, got '
                          f'{type(x).__name__} {np.shape(x) if np.ndim(x) else ""}'.strip())
      size = self.config.data.image_size
      resized = np.stack([images_lib.resize(x, size) for x in images])
      batch = {'image': resized, 'person_id': np.zeros(len(images), np.int32),
               'file_path': np.full(len(images), b'', object)}
      features = self.encoder.gallery(
          self.variables, formats.padded_batches_of(batch, self.config.eval.batch_size),
          len(images))
    return {k: features[k] for k in evaluate.GALLERY_FEATURES}

  def _encode_image_files(self, paths: list[str]) -> dict:
    """The test pipeline's decoding and resizing, in tf.data."""
    for path in paths:
      if not os.path.isfile(path):
        raise UserError(f'{path}: no such image file')
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("image files are decoded by TensorFlow: pip install 'dssl_jax[data]', or "
                      'pass uint8 arrays') from None
    from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    size = self.config.data.image_size
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: {'image': pipeline.decode_and_resize(tf.io.read_file(path), size),
                      'person_id': 0, 'file_path': ''},
        num_parallel_calls=tf.data.AUTOTUNE)
    try:
      return self.encoder.gallery(
          self.variables, pipeline.padded_batches(ds, self.config.eval.batch_size), len(paths))
    except tf.errors.OpError:  # TensorFlow names no file: find the one that does not decode
      for path in paths:
        if problem := images_lib.check_image(path):
          raise UserError(f'{path}: {problem}') from None
      raise

  # ------------------------------------------------------------------ text

  @functools.cached_property
  def _phrases(self) -> captions.PhraseExtractor:
    """With the tagger the training phrases were made with (workdirs from before it was recorded:
    the configured one)."""
    return captions.PhraseExtractor(
        captions.make_tagger(self.meta.tagger or self.config.data.tagger),
        self.config.data.max_phrases)

  @functools.cached_property
  def _clip_text(self) -> clip_tokenizer.ClipTextEncoder:
    return clip_tokenizer.ClipTextEncoder(self.config)

  def unknown_words(self, text: str) -> list[str]:
    """The words of `text` outside the training vocabulary (encoded as unknown); CLIP's
    byte-level tokenizer has none."""
    if self.config.model.backbone == 'clip':
      return []
    return sorted({w for w in captions.tokenize(text) if w not in self.word_ids})

  def encode_texts(self, texts: list[str]) -> dict:
    """The query features of sentences and their noun phrases.

    Args:
      texts: a list of sentences, each with at least one word.

    Returns:
      {'T_P': [N, p], 'T_L': [N, n, p] phrase features, 'phrase_valid': [N, n]}.
    """
    if isinstance(texts, str) or not len(texts):
      raise UserError('encode_texts needs a list of at least one sentence')
    words = [captions.tokenize(text) for text in texts]
    for i, (text, its_words) in enumerate(zip(texts, words)):
      if not its_words:
        raise UserError(f'query {i + 1} {text!r} is empty: it has no word')
    if self.config.model.backbone == 'clip':
      rows = [self._clip_text.encode(text, [' '.join(p) for p in self._phrases(text)])
              for text in texts]
      batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    else:
      batch = self._vocabulary_ids(texts, words)
    batch |= {'person_id': np.zeros(len(texts), np.int32), 'text': np.array(texts, object)}
    features = self.encoder.queries(self.variables, formats.padded_batches_of(
        batch, self.config.eval.batch_size))
    return {k: features[k] for k in evaluate.QUERY_FEATURES}

  def _vocabulary_ids(self, texts: list[str], words: list[list[str]]) -> dict:
    """Sentence and phrase ids with the training vocabulary (ResNet + bi-GRU models)."""
    d = self.config.data
    tokens = np.zeros((len(texts), d.max_words), np.int32)
    phrases = np.zeros((len(texts), d.max_phrases, d.max_phrase_words), np.int32)
    for i, (text, its_words) in enumerate(zip(texts, words)):
      ids = [self.word_ids.get(w, 1) for w in its_words]
      if all(j == 1 for j in ids):
        raise UserError(f'query {i + 1} {text!r} has no word of the training vocabulary')
      tokens[i, :min(len(ids), d.max_words)] = ids[:d.max_words]
      for k, phrase in enumerate(self._phrases(text)):
        phrase_ids = [self.word_ids.get(w, 1) for w in phrase][:d.max_phrase_words]
        phrases[i, k, :len(phrase_ids)] = phrase_ids
    return {'tokens': tokens, 'token_mask': tokens != 0, 'phrases': phrases,
            'phrase_mask': phrases != 0}

  # ------------------------------------------------------------------ ranking

  def similarity(self, images: dict, texts: dict) -> np.ndarray:
    """Sim_TI of every text against every image.

    Args:
      images: `encode_images`'s output.
      texts: `encode_texts`'s output.

    Returns:
      [texts, images] scores, higher for a better match.
    """
    return similarity_lib.similarity(images, texts, *self.sim_ti_weights)

  def build_index(self, images: str, folder: str, shard_size: int = 50_000) -> dict:
    """Encodes every new or changed jpg/png under a folder into an on-disk index.

    Args:
      images: the folder of images (searched recursively).
      folder: the index's folder, created or updated.
      shard_size: images per shard file.

    Returns:
      Counts: {found, encoded, unreadable, indexed}.
    """
    return index_lib.build_index(self, images, folder, shard_size)

  def open_index(self, folder: str) -> index_lib.Index:
    """The index in `folder`, checked to be this model's."""
    index = index_lib.Index(folder)
    index.check(self.fingerprint)
    return index

  def search(self, texts: list[str], index, top: int = 10,
             candidates: int | None = 1000) -> list[list[tuple[str, float]]]:
    """The best images of an index for each sentence.

    Args:
      texts: a list of sentences.
      index: an index folder (`build_index`'s) or `open_index`'s result.
      top: hits per sentence.
      candidates: images per sentence that the first stage (cos(V_P, T_P)) passes to the full
        Sim_TI; None scores every image with Sim_TI.

    Returns:
      For each sentence, `top` (image path relative to the indexed folder, Sim_TI score), best
      first.
    """
    if not isinstance(index, index_lib.Index):
      index = self.open_index(index)
    return index_lib.search(index, self.encode_texts(texts), top,
                            *self.sim_ti_weights, candidates)
