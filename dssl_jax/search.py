"""Search your own person crops with a trained model, in plain English.

  python -m dssl_jax.search index --workdir W --images DIR [--index IDX]
  python -m dssl_jax.search query --workdir W [--index IDX] "a man in a black jacket" [--top K]

`index` encodes every jpg/png under DIR (resized like the test pipeline) and stores what Sim_TI
needs of each image (V_P, V_L, float16) in shards; rerunning encodes only new or changed files.
`query` tokenizes with the training vocabulary, encodes the sentence and its noun phrases, and
streams over the shards keeping an exact top-K, so memory stays bounded at any index size.
Every write is atomic: a shard, then the file list, then the manifest that makes them visible.
"""
import json
import os
import sys
import time

from dssl_jax import main as dssl_main  # sets XLA_FLAGS before jax is imported

from absl import app  # pylint: disable=g-bad-import-order,g-import-not-at-top
from absl import flags
import jax
import numpy as np

from dssl_jax import evaluate, reports, train
from dssl_jax.data import captions, pipeline
from dssl_jax.data.builders.annotations import check_image
from dssl_jax.errors import UserError

flags.DEFINE_string('images', None, 'index: the folder of images (searched recursively).')
flags.DEFINE_string('index', None, 'The index folder (default: WORKDIR/index).')
flags.DEFINE_integer('top', 10, 'query: how many results per query.')
flags.DEFINE_string('queries_file', None, 'query: more queries, one per line.')
flags.DEFINE_bool('json', False, 'query: print one JSON object per query instead of text.')
flags.DEFINE_integer('shard_size', 50_000, 'index: images per shard file.')
FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
MANIFEST, FILES = 'manifest.json', 'files.json'


def _write_json(path: str, value):
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f)
  os.replace(path + '.tmp', path)


class Searcher:
  """A trained workdir's model, ready to encode images and sentences."""

  def __init__(self, workdir: str):
    self.config, self.meta = train.load_workdir(workdir)
    with train.Trainer(self.config, workdir, self.meta) as trainer:
      self.variables, self.checkpoint = trainer.evaluation_variables()
      self.encoder = trainer.encoder
    self.word_ids = {w: i for i, w in enumerate(self.meta.vocabulary)}
    self.fingerprint = {'model': self.config.model.to_dict(),
                        'image_size': list(self.config.data.image_size),
                        'vocabulary': len(self.meta.vocabulary), 'checkpoint': self.checkpoint}

  # ------------------------------------------------------------------ images

  def encode_images(self, paths: list, root: str):
    """Yields (paths, V_P, V_L) per batch; the test pipeline's decoding and resizing."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    size, batch_size = self.config.data.image_size, self.config.eval.batch_size
    ds = tf.data.Dataset.from_tensor_slices([os.path.join(root, p) for p in paths]).map(
        lambda path: {'image': pipeline.normalize(pipeline.decode_and_resize(
            tf.io.read_file(path), size)), 'file_path': path, 'person_id': 0},
        num_parallel_calls=tf.data.AUTOTUNE)
    for start, batch in zip(range(0, len(paths), batch_size),
                            pipeline.padded_batches(ds, batch_size)):
      features = self.encoder.gallery(self.variables, [batch])
      yield paths[start:start + batch_size], features['V_P'], features['V_L']

  # ------------------------------------------------------------------ text

  def encode_queries(self, texts: list) -> tuple[dict, list]:
    """Query features of each sentence, and the unknown words of each."""
    d = self.config.data
    # The tagger the training phrases were made with (workdirs from before it was recorded: the
    # configured one).
    extract = captions.PhraseExtractor(captions.make_tagger(self.meta.tagger or d.tagger),
                                       d.max_phrases)
    tokens = np.zeros((len(texts), d.max_words), np.int32)
    phrases = np.zeros((len(texts), d.max_phrases, d.max_phrase_words), np.int32)
    unknown = []
    for i, text in enumerate(texts):
      words = captions.tokenize(text)
      if not words:
        raise UserError(f'query {i + 1} {text!r} is empty: it has no word')
      ids = [self.word_ids.get(w, 1) for w in words]
      if all(j == 1 for j in ids):
        raise UserError(f'query {i + 1} {text!r} has no word of the training vocabulary')
      unknown.append(sorted({w for w, j in zip(words, ids) if j == 1}))
      tokens[i, :min(len(ids), d.max_words)] = ids[:d.max_words]
      for k, phrase in enumerate(extract(text)):
        phrase_ids = [self.word_ids.get(w, 1) for w in phrase][:d.max_phrase_words]
        phrases[i, k, :len(phrase_ids)] = phrase_ids
    batch = {'tokens': tokens, 'token_mask': tokens != 0, 'phrases': phrases,
             'phrase_mask': phrases != 0, 'person_id': np.zeros(len(texts), np.int32),
             'text': np.array(texts, object)}
    features = self.encoder.queries(self.variables, pipeline.padded_batches_of(
        batch, self.config.eval.batch_size))
    return {k: features[k] for k in evaluate.QUERY_FEATURES}, unknown


class Index:
  """Shards of image features with their paths; `stale` rows were re-encoded elsewhere."""

  def __init__(self, folder: str):
    self.folder = folder
    self.manifest = None
    if os.path.exists(os.path.join(folder, MANIFEST)):
      with open(os.path.join(folder, MANIFEST)) as f:
        self.manifest = json.load(f)

  def check(self, fingerprint: dict):
    if self.manifest is None:
      raise UserError(f'no index in {self.folder}: make one with '
                      'python -m dssl_jax.search index --workdir W --images DIR')
    if self.manifest['fingerprint'] != fingerprint:
      raise UserError(f'the index in {self.folder} was made with another model or vocabulary '
                      f'({self.manifest["fingerprint"]["checkpoint"]}, '
                      f'{self.manifest["fingerprint"]["vocabulary"]} words): use another --index '
                      'or delete it')

  def shards(self):
    """(paths, features, valid) of each shard, one at a time; features as evaluate.similarity
    takes them (V_P, V_L float16 and the strips' Gram matrices)."""
    for shard in self.manifest['shards']:
      with np.load(os.path.join(self.folder, shard['file'])) as data:
        valid = np.ones(len(data['paths']), bool)
        valid[shard['stale']] = False
        yield data['paths'], {k: data[k] for k in ('V_P', 'V_L', 'V_L_gram')}, valid


def build_index(searcher: Searcher, images: str, folder: str, shard_size: int) -> dict:
  """Encodes what is new or changed under `images`; returns counts."""
  if not os.path.isdir(images):
    raise UserError(f'--images {images!r} is not a folder')
  index = Index(folder)
  os.makedirs(folder, exist_ok=True)
  if index.manifest is None:
    index.manifest = {'fingerprint': searcher.fingerprint, 'images': os.path.abspath(images),
                      'shards': []}
    files = {}
  else:
    index.check(searcher.fingerprint)
    with open(os.path.join(folder, FILES)) as f:
      files = json.load(f)
  found = sorted(os.path.relpath(os.path.join(root, name), images)
                 for root, _, names in os.walk(images) for name in names
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  stamp = lambda p: [os.path.getmtime(os.path.join(images, p)),
                     os.path.getsize(os.path.join(images, p))]
  todo = [p for p in found if p not in files or files[p]['stamp'] != stamp(p)]
  problems = {p: check_image(os.path.join(images, p)) for p in todo}
  unreadable = [p for p in todo if problems[p]]
  for path in unreadable:
    print(f'unreadable, skipped: {path} ({problems[path]})', flush=True)
  todo = [p for p in todo if not problems[p]]
  start, done = time.time(), 0
  for first in range(0, len(todo), shard_size):
    chunk = todo[first:first + shard_size]
    parts = []
    for paths, v_p, v_l in searcher.encode_images(chunk, images):
      parts.append((paths, v_p, v_l))
      done += len(paths)
      rate = done / max(time.time() - start, 1e-9)
      print(f'indexed {done}/{len(todo)} images, {rate:.1f} img/s, '
            f'ETA {(len(todo) - done) / rate:.0f}s', flush=True)
    number = len(index.manifest['shards'])
    name = f'shard_{number:05d}.npz'
    v_l = np.concatenate([v for _, _, v in parts]).astype(np.float16)
    with open(os.path.join(folder, name + '.tmp'), 'wb') as f:
      np.savez(f, paths=np.array([p for ps, _, _ in parts for p in ps]),
               V_P=np.concatenate([v for _, v, _ in parts]).astype(np.float16), V_L=v_l,
               V_L_gram=np.asarray(evaluate.gallery_gram(v_l.astype(np.float32))))
    os.replace(os.path.join(folder, name + '.tmp'), os.path.join(folder, name))
    for row, path in enumerate(chunk):
      if path in files:  # the old features of a changed file
        index.manifest['shards'][files[path]['shard']]['stale'].append(files[path]['row'])
      files[path] = {'stamp': stamp(path), 'shard': number, 'row': row}
    index.manifest['shards'].append({'file': name, 'count': len(chunk), 'stale': []})
    _write_json(os.path.join(folder, FILES), files)
    _write_json(os.path.join(folder, MANIFEST), index.manifest)
  return {'found': len(found), 'encoded': len(todo), 'unreadable': len(unreadable),
          'indexed': len(files)}


def search(index: Index, queries: dict, top: int, lambda1: float, lambda2: float) -> list:
  """Exact top-`top` (path, score) of each query over every shard, one shard in memory at a time."""
  best = [(np.empty(0, object), np.empty(0)) for _ in range(len(queries['T_P']))]
  for paths, features, valid in index.shards():
    sim = evaluate.similarity(features, queries, lambda1, lambda2, chunk=len(queries['T_P']))
    sim[:, ~valid] = -np.inf
    for q, (kept_paths, kept_scores) in enumerate(best):
      scores = np.concatenate([kept_scores, sim[q]])
      order = np.argsort(-scores, kind='stable')[:top]
      best[q] = (np.concatenate([kept_paths, paths.astype(object)])[order], scores[order])
  return [[(str(p), float(s)) for p, s in zip(paths, scores) if np.isfinite(s)]
          for paths, scores in best]


def main(argv):
  dssl_main.quiet_logging()
  if len(argv) < 2 or argv[1] not in ('index', 'query'):
    raise app.UsageError('usage: python -m dssl_jax.search index|query --workdir W ...')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  folder = FLAGS.index or os.path.join(FLAGS.workdir, 'index')
  try:
    if argv[1] == 'index':
      if not FLAGS.images:
        raise UserError('index needs --images DIR')
      counts = build_index(Searcher(FLAGS.workdir), FLAGS.images, folder, FLAGS.shard_size)
      print(f'{counts["found"]} images found, {counts["encoded"]} encoded, '
            f'{counts["unreadable"]} unreadable, {counts["indexed"]} in {folder}')
      return
    texts = list(argv[2:])
    if FLAGS.queries_file:
      with open(FLAGS.queries_file) as f:
        texts += [line.strip() for line in f if line.strip()]
    if not texts:
      raise UserError('query needs at least one sentence (or --queries_file)')
    index = Index(folder)
    searcher = Searcher(FLAGS.workdir)
    index.check(searcher.fingerprint)
    queries, unknown = searcher.encode_queries(texts)
    start = time.time()
    e = searcher.config.eval
    results = search(index, queries, FLAGS.top, e.lambda1, e.lambda2)
    seconds = time.time() - start
    for text, words, hits in zip(texts, unknown, results):
      if FLAGS.json:
        print(json.dumps({'query': text, 'unknown_words': words, 'seconds': round(seconds, 3),
                          'results': [{'path': p, 'score': s} for p, s in hits]}))
        continue
      print(f'\n{text}' + (f'\n  unknown words (ignored): {", ".join(words)}' if words else ''))
      for rank, (path, score) in enumerate(hits, 1):
        print(f'  {rank:3d}. {score:7.4f}  {path}')
    sheet = os.path.join(folder, 'query_results.png')
    reports.contact_sheet(sheet, texts, [[p for p, _ in hits] for hits in results],
                          index.manifest['images'])
    print(f'\n{len(texts)} queries in {seconds:.2f}s; contact sheet: {sheet}', file=sys.stderr)
  except UserError as e:
    dssl_main.fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=dssl_main.parse_flags)
