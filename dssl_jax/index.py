"""A gallery index on disk, and the two-stage search over it (what `dssl_jax.search` and
`Retriever.search` use).

An index stores what Sim_TI needs of each image (unit V_P, V_L and the strips' Gram matrices,
float16) in shards of .npy files; rebuilding encodes only new or changed files. A search scores
cos(V_P, T_P) over every image (usearch's exact SIMD scan of the memory-mapped float16 V_P, no copy)
and keeps the best `candidates`, then computes the full Sim_TI on those only, reading their V_L rows
by index; `candidates=None` scores every image with Sim_TI. Memory stays bounded at any index size.
Every write is atomic: a shard, then the file list, then the manifest that makes them visible.
"""
import json
import os

import numpy as np

from dssl_jax import similarity as similarity_lib
from dssl_jax.data.images import check_image
from dssl_jax.errors import UserError
from dssl_jax.similarity import l2_normalize

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
MANIFEST, FILES = 'manifest.json', 'files.json'
VERSION = 2  # 1: one .npz per shard (not memory-mappable)


def _write_json(path: str, value):
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f)
  os.replace(path + '.tmp', path)


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
                      f'{self.manifest["fingerprint"]["vocabulary"]} words): use another index '
                      'folder or delete it')

  def array(self, shard: int, name: str) -> np.ndarray:
    """A shard's paths, V_P, V_L or V_L_gram, memory-mapped: rows are read when used."""
    stem = self.manifest['shards'][shard]['name']
    return np.load(os.path.join(self.folder, f'{stem}.{name}.npy'), mmap_mode='r')

  def valid(self, shard: int) -> np.ndarray:
    valid = np.ones(self.manifest['shards'][shard]['count'], bool)
    valid[self.manifest['shards'][shard]['stale']] = False
    return valid

  def features(self, shard: int, rows=slice(None)) -> dict:
    """What similarity_lib.similarity takes of the gallery, for `rows` of a shard."""
    return {k: np.asarray(self.array(shard, k)[rows]) for k in ('V_P', 'V_L', 'V_L_gram')}


def write_shard(folder: str, name: str, paths: list, v_p: np.ndarray, v_l: np.ndarray) -> dict:
  """A shard's .npy files (each written, then renamed), and its manifest entry."""
  v_l = v_l.astype(np.float16)
  arrays = {'paths': np.array(paths, str),
            'V_P': np.asarray(l2_normalize(v_p), np.float16),  # unit rows: cosines are dot products
            'V_L': v_l,
            'V_L_gram': np.asarray(similarity_lib.gallery_gram(v_l.astype(np.float32)))}
  for key, value in arrays.items():
    path = os.path.join(folder, f'{name}.{key}.npy')
    with open(path + '.tmp', 'wb') as f:
      np.save(f, value)
    os.replace(path + '.tmp', path)
  return {'name': name, 'count': len(paths), 'stale': []}


def build_index(retriever, images: str, folder: str, shard_size: int = 50_000) -> dict:
  """Encodes what is new or changed under a folder of images into the index `folder`.

  Args:
    retriever: the `Retriever` whose model encodes the images.
    images: the folder of jpg/png images, searched recursively.
    folder: the index's folder.
    shard_size: images per shard.

  Returns:
    Counts: {found, encoded, unreadable, indexed}.
  """
  if not os.path.isdir(images):
    raise UserError(f'--images {images!r} is not a folder')
  found = sorted(os.path.relpath(os.path.join(root, name), images)
                 for root, _, names in os.walk(images) for name in names
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  if not found:
    raise UserError(f'--images {images!r} holds no {"/".join(IMAGE_EXTENSIONS)} image')
  index = Index(folder)
  os.makedirs(folder, exist_ok=True)
  if index.manifest is None:
    index.manifest = {'version': VERSION, 'fingerprint': retriever.fingerprint,
                      'images': os.path.abspath(images), 'shards': []}
    files = {}
  else:
    index.check(retriever.fingerprint)
    with open(os.path.join(folder, FILES)) as f:
      files = json.load(f)
  stamp = lambda p: [os.path.getmtime(os.path.join(images, p)),
                     os.path.getsize(os.path.join(images, p))]
  todo = [p for p in found if p not in files or files[p]['stamp'] != stamp(p)]
  problems = {p: check_image(os.path.join(images, p)) for p in todo}
  unreadable = [p for p in todo if problems[p]]
  for path in unreadable:
    print(f'unreadable, skipped: {path} ({problems[path]})', flush=True)
  todo = [p for p in todo if not problems[p]]
  for first in range(0, len(todo), shard_size):
    chunk = todo[first:first + shard_size]
    features = retriever.encode_images([os.path.join(images, p) for p in chunk])
    number = len(index.manifest['shards'])
    shard = write_shard(folder, f'shard_{number:05d}', chunk, features['V_P'], features['V_L'])
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
  """The best images of the index for each query.

  Args:
    index: an `Index` (its fingerprint already checked).
    queries: `Retriever.encode_texts`'s output.
    top: hits per query.
    lambda1, lambda2: Sim_TI's weights of the CA terms.
    candidates: None: Sim_TI of every image (exact); else Sim_TI of the `candidates` images of
      highest cos(V_P, T_P) (two stages).

  Returns:
    For each query, `top` (image path relative to the indexed folder, score), best first.
  """
  count = len(queries['T_P'])
  if not index.manifest['shards']:
    return [[] for _ in range(count)]
  if candidates is None:
    picked = [(s, np.flatnonzero(index.valid(s))) for s in range(len(index.manifest['shards']))]
    sims = [similarity_lib.similarity(index.features(s), queries, lambda1, lambda2,
                                      chunk=count)[:, rows]
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
    scores = similarity_lib.similarity(gallery, {k: v[q:q + 1] for k, v in queries.items()},
                                       lambda1, lambda2, chunk=1)[0, :found]
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
  """How much of the exact search the two-stage one keeps.

  Args:
    index, queries, top, lambda1, lambda2: as `search` takes them.
    candidates: the first stage's candidate counts to try.

  Returns:
    {M: the share of the exact top-`top` that two stages with M candidates return}.
  """
  exact = [{p for p, _ in hits} for hits in search(index, queries, top, lambda1, lambda2, None)]
  return {m: float(np.mean([len(want & {p for p, _ in hits}) / max(len(want), 1) for want, hits in
                            zip(exact, search(index, queries, top, lambda1, lambda2, m))]))
          for m in candidates}


def _best(index: Index, top: int, picked: list, scores: np.ndarray) -> list:
  """The `top` (path, score) of one query; scores: of `picked`'s rows, shard after shard."""
  order = np.argsort(-scores, kind='stable')[:top]
  paths = np.concatenate([index.array(s, 'paths')[rows] for s, rows in picked])
  return [(str(paths[i]), float(scores[i])) for i in order]
