"""Search your own person crops with a trained model, in plain English.

  python -m dssl_jax.search index --workdir W --images DIR [--index IDX]
  python -m dssl_jax.search query --workdir W [--index IDX] "a man in a black jacket" [--top K]
  python -m dssl_jax.search recall --workdir W [--index IDX] --queries_file F [--top K]

`index` encodes every jpg/png under DIR (resized like the test pipeline) and stores what Sim_TI
needs of each image (unit V_P, V_L and the strips' Gram matrices, float16) in shards of .npy files;
rerunning encodes only new or changed files. `query` tokenizes with the training vocabulary and
encodes the sentence and its noun phrases, then searches in two stages: cos(V_P, T_P) over every
image (usearch's exact SIMD scan of the memory-mapped float16 V_P, no copy), keeping the best
`--candidates`; then the full Sim_TI on those only, reading their V_L rows by index. `--exact`
scores every image with Sim_TI instead. Memory stays bounded at any index size.
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
from dssl_jax.models.heads import l2_normalize

flags.DEFINE_string('images', None, 'index: the folder of images (searched recursively).')
flags.DEFINE_string('index', None, 'The index folder (default: WORKDIR/index).')
flags.DEFINE_integer('top', 10, 'query: how many results per query.')
flags.DEFINE_string('queries_file', None, 'query: more queries, one per line.')
flags.DEFINE_bool('json', False, 'query: print one JSON object per query instead of text.')
flags.DEFINE_integer('shard_size', 50_000, 'index: images per shard.')
flags.DEFINE_integer('candidates', 1000, 'query: images per query that the first stage (global '
                     'features) passes to the full Sim_TI.')
flags.DEFINE_bool('exact', False, 'query: score every image with the full Sim_TI (slow).')
FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
MANIFEST, FILES = 'manifest.json', 'files.json'
VERSION = 2  # 1: one .npz per shard (not memory-mappable)


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
      if self.manifest.get('version') != VERSION:
        raise UserError(f'the index in {folder} has an older format (one .npz per shard): delete '
                        'it and rebuild it with python -m dssl_jax.search index --workdir W '
                        '--images DIR')

  def check(self, fingerprint: dict):
    if self.manifest is None:
      raise UserError(f'no index in {self.folder}: make one with '
                      'python -m dssl_jax.search index --workdir W --images DIR')
    if self.manifest['fingerprint'] != fingerprint:
      raise UserError(f'the index in {self.folder} was made with another model or vocabulary '
                      f'({self.manifest["fingerprint"]["checkpoint"]}, '
                      f'{self.manifest["fingerprint"]["vocabulary"]} words): use another --index '
                      'or delete it')

  def array(self, shard: int, name: str) -> np.ndarray:
    """A shard's paths, V_P, V_L or V_L_gram, memory-mapped: rows are read when used."""
    stem = self.manifest['shards'][shard]['name']
    return np.load(os.path.join(self.folder, f'{stem}.{name}.npy'), mmap_mode='r')

  def valid(self, shard: int) -> np.ndarray:
    valid = np.ones(self.manifest['shards'][shard]['count'], bool)
    valid[self.manifest['shards'][shard]['stale']] = False
    return valid

  def features(self, shard: int, rows=slice(None)) -> dict:
    """What evaluate.similarity takes of the gallery, for `rows` of a shard."""
    return {k: np.asarray(self.array(shard, k)[rows]) for k in ('V_P', 'V_L', 'V_L_gram')}


def write_shard(folder: str, name: str, paths: list, v_p: np.ndarray, v_l: np.ndarray) -> dict:
  """A shard's .npy files (each written, then renamed), and its manifest entry."""
  v_l = v_l.astype(np.float16)
  arrays = {'paths': np.array(paths, str),
            'V_P': np.asarray(l2_normalize(v_p), np.float16),  # unit rows: cosines are dot products
            'V_L': v_l,
            'V_L_gram': np.asarray(evaluate.gallery_gram(v_l.astype(np.float32)))}
  for key, value in arrays.items():
    path = os.path.join(folder, f'{name}.{key}.npy')
    with open(path + '.tmp', 'wb') as f:
      np.save(f, value)
    os.replace(path + '.tmp', path)
  return {'name': name, 'count': len(paths), 'stale': []}


def build_index(searcher: Searcher, images: str, folder: str, shard_size: int) -> dict:
  """Encodes what is new or changed under `images`; returns counts."""
  if not os.path.isdir(images):
    raise UserError(f'--images {images!r} is not a folder')
  index = Index(folder)
  os.makedirs(folder, exist_ok=True)
  if index.manifest is None:
    index.manifest = {'version': VERSION, 'fingerprint': searcher.fingerprint,
                      'images': os.path.abspath(images), 'shards': []}
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
    shard = write_shard(folder, f'shard_{number:05d}', [p for ps, _, _ in parts for p in ps],
                        np.concatenate([v for _, v, _ in parts]),
                        np.concatenate([v for _, _, v in parts]))
    for row, path in enumerate(chunk):
      if path in files:  # the old features of a changed file
        index.manifest['shards'][files[path]['shard']]['stale'].append(files[path]['row'])
      files[path] = {'stamp': stamp(path), 'shard': number, 'row': row}
    index.manifest['shards'].append(shard)
    _write_json(os.path.join(folder, FILES), files)
    _write_json(os.path.join(folder, MANIFEST), index.manifest)
  return {'found': len(found), 'encoded': len(todo), 'unreadable': len(unreadable),
          'indexed': len(files)}


def search(index: Index, queries: dict, top: int, lambda1: float, lambda2: float,
           candidates: int | None = 1000) -> list:
  """The top-`top` (path, score) of each query, best first. candidates=None: Sim_TI of every
  image (exact); else Sim_TI of the `candidates` images of highest cos(V_P, T_P) (two stages)."""
  count = len(queries['T_P'])
  if not index.manifest['shards']:
    return [[] for _ in range(count)]
  if candidates is None:
    picked = [(s, np.flatnonzero(index.valid(s))) for s in range(len(index.manifest['shards']))]
    sims = [evaluate.similarity(index.features(s), queries, lambda1, lambda2, chunk=count)[:, rows]
            for s, rows in picked]
    return [_best(index, top, picked, np.concatenate([sim[q] for sim in sims]))
            for q in range(count)]
  size = min(candidates, sum(shard['count'] for shard in index.manifest['shards']))
  results = []
  for q, picked in enumerate(first_stage(index, queries['T_P'], candidates)):
    if not picked:  # every candidate stale
      results.append([])
      continue
    parts = [index.features(s, rows) for s, rows in picked]
    gallery = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    found = len(gallery['V_P'])  # padded to one shape for every query: one compilation
    gallery = {k: np.concatenate([v, np.repeat(v[-1:], size - found, axis=0)])
               for k, v in gallery.items()}
    scores = evaluate.similarity(gallery, {k: v[q:q + 1] for k, v in queries.items()}, lambda1,
                                 lambda2, chunk=1)[0, :found]
    results.append(_best(index, top, picked, scores))
  return results


def first_stage(index: Index, t_p: np.ndarray, candidates: int) -> list:
  """For each query, [(shard, sorted rows)] of the `candidates` (valid) images of highest
  cos(V_P, T_P): usearch's exact scan of each memory-mapped shard, then the best over shards."""
  from usearch.index import MetricKind, search as exact_scan  # pylint: disable=g-import-not-at-top
  t_p = np.asarray(l2_normalize(t_p), np.float16)
  shard_of, rows, cosines = [], [], []  # [Q, M] per shard
  for s in range(len(index.manifest['shards'])):
    v_p = index.array(s, 'V_P')
    matches = exact_scan(v_p, t_p, min(candidates, len(v_p)), MetricKind.IP, exact=True)
    found = matches.keys.reshape(len(t_p), -1)
    shard_of.append(np.full(found.shape, s))
    rows.append(found)
    cosines.append(np.where(index.valid(s)[found], 1 - matches.distances.reshape(found.shape),
                            -np.inf))
  shard_of, rows, cosines = (np.concatenate(x, axis=1) for x in (shard_of, rows, cosines))
  picked = []
  for q, best in enumerate(np.argsort(-cosines, axis=1, kind='stable')[:, :candidates]):
    best = best[np.isfinite(cosines[q, best])]
    picked.append([(s, np.sort(rows[q, best][shard_of[q, best] == s]))
                   for s in np.unique(shard_of[q, best])])
  return picked


def recall(index: Index, queries: dict, top: int, lambda1: float, lambda2: float,
           candidates: tuple = (10, 30, 100, 300, 1000)) -> dict:
  """{M: the share of the exact top-`top` that two stages with M candidates return}."""
  exact = [{p for p, _ in hits} for hits in search(index, queries, top, lambda1, lambda2, None)]
  return {m: float(np.mean([len(want & {p for p, _ in hits}) / max(len(want), 1) for want, hits in
                            zip(exact, search(index, queries, top, lambda1, lambda2, m))]))
          for m in candidates}


def _best(index: Index, top: int, picked: list, scores: np.ndarray) -> list:
  """The `top` (path, score) of one query; scores: of `picked`'s rows, shard after shard."""
  order = np.argsort(-scores, kind='stable')[:top]
  paths = np.concatenate([index.array(s, 'paths')[rows] for s, rows in picked])
  return [(str(paths[i]), float(scores[i])) for i in order]


def main(argv):
  dssl_main.quiet_logging()
  if len(argv) < 2 or argv[1] not in ('index', 'query', 'recall'):
    raise app.UsageError('usage: python -m dssl_jax.search index|query|recall --workdir W ...')
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
      raise UserError(f'{argv[1]} needs at least one sentence (or --queries_file)')
    index = Index(folder)
    searcher = Searcher(FLAGS.workdir)
    index.check(searcher.fingerprint)
    queries, unknown = searcher.encode_queries(texts)
    e = searcher.config.eval
    if argv[1] == 'recall':
      for m, share in recall(index, queries, FLAGS.top, e.lambda1, e.lambda2).items():
        print(f'{m} candidates: {100 * share:.2f}% of the exact top-{FLAGS.top} of '
              f'{len(texts)} queries')
      return
    start = time.time()
    results = search(index, queries, FLAGS.top, e.lambda1, e.lambda2,
                     None if FLAGS.exact else FLAGS.candidates)
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
