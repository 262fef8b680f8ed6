"""Evaluation: encode gallery and queries, the test similarity Sim_TI, the field's metrics, and a
run's final evaluation into its results file.

Sim_TI (the paper gives lambda1 = lambda2 = 0.5, not the formula; docs/design.md's reading):
  cos(V_P, T_P) + l1 * cos(CA(T_P, V_L), T_P) + l2 * cos(CA(V_P, T_L), V_P),
with a CA term left out (weight 0) where the run trained none of its heads (`sim_ti_weights`).
The pair-dependent CA terms are computed in chunks of queries, from Gram matrices (no [Q, G, p]
tensor), so a CUHK-PEDES-sized test set fits in a few GB.
"""
import functools
import json
import os
import time
from typing import Iterable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from dssl_jax import ranking, rerank
from dssl_jax.models.heads import cross_attention_similarity, l2_normalize, part_gram

PAPER_LAMBDA = 0.5  # lambda1 = lambda2 (section 4.1.2)
GALLERY_FEATURES = ('V_P', 'V_L')
QUERY_FEATURES = ('T_P', 'T_L', 'phrase_valid')


def retrieval_metrics(similarity: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray,
                      head: np.ndarray | None = None) -> dict:
  """R@1/5/10, mAP and mINP (percent) of ranking the gallery for each query (row).

  As the field's reference evaluation: every gallery entry of the query's person is relevant;
  R@k succeeds if one is in the top k; AP is non-interpolated; INP = relevant count / 1-based rank
  of the last relevant. Ties keep gallery order. Queries whose person is not in the gallery have no
  defined rank: they are left out of every average and counted in `queries_without_match`.
  `head` [Q, K]: a new order of each row's top K (re-ranking's output); the rest keep their ranks.
  Only the relevant entries' ranks are computed, `ranking.CHUNK` rows at a time.
  R1_stderr: R1's standard error over the queries' people (`stderr_over_people`), what another
  test split of as many people would move it by.
  """
  by_id = np.argsort(gallery_ids, kind='stable')
  ids, starts = np.unique(gallery_ids[by_id], return_index=True)
  bounds = np.append(starts, len(by_id))
  first_hit, average_precision, inverse_negative, ranked_ids = [], [], [], []
  for rows in ranking.chunks(len(similarity)):
    block = np.ascontiguousarray(similarity[rows])  # also a transposed matrix's rows
    sorted_block = np.sort(block, axis=1)
    for i, q in enumerate(range(rows.start, rows.stop)):
      at = np.searchsorted(ids, query_ids[q])
      if at == len(ids) or ids[at] != query_ids[q]:
        continue
      relevant = by_id[bounds[at]:bounds[at + 1]]
      ranks = ranking.ranks_in_row(block[i], sorted_block[i], relevant)
      if head is not None:
        moved, position = np.nonzero(relevant[:, None] == head[q][None, :])
        ranks[moved] = position
      ranks = np.sort(ranks) + 1
      first_hit.append(ranks[0])
      ranked_ids.append(query_ids[q])
      average_precision.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
      inverse_negative.append(len(ranks) / ranks[-1])
  first_hit = np.array(first_hit)
  percent = lambda x: float(100 * np.mean(x)) if len(x) else 0.0
  return {'R1': percent(first_hit <= 1), 'R5': percent(first_hit <= 5),
          'R10': percent(first_hit <= 10), 'mAP': percent(average_precision),
          'mINP': percent(inverse_negative),
          'R1_stderr': 100 * stderr_over_people(first_hit <= 1, np.array(ranked_ids)),
          'queries': len(first_hit), 'queries_without_match': len(similarity) - len(first_hit)}


def stderr_over_people(values: np.ndarray, people: np.ndarray) -> float:
  """Standard error of values.mean() when the people, not the queries, are the sample.

  A person's queries share their gallery images, so they succeed or fail together: the binomial
  error over Q queries understates how much a metric would move on another test split of as many
  people. This is the cluster-robust (sandwich) estimate, with people as clusters:
  sqrt(C / (C - 1) * sum_c (sum_{q in c} (v_q - mean))^2) / Q for C people; with one query per
  person it is the plain std / sqrt(Q). 0 when fewer than 2 people.
  """
  values = np.asarray(values, float)
  unique, cluster = np.unique(people, return_inverse=True)
  count = len(unique)
  if count < 2:
    return 0.0
  residual_sums = np.bincount(cluster, values - values.mean(), minlength=count)
  return float(np.sqrt(count / (count - 1) * np.sum(residual_sums ** 2)) / len(values))


def sim_ti_weights(config: ml_collections.ConfigDict) -> tuple[float, float]:
  """(lambda1, lambda2) of Sim_TI for the run `config` describes.

  An unset weight (config.eval.lambda1/2 = None) is the paper's 0.5 where its CA term was trained,
  else 0: only Align IV (eq. 13) trains the visual parts V_L (image_local, SAM) to match a text,
  and only Align V (eq. 14) trains the phrases T_L to match an image (SDM's eq. 2 trains them to
  reconstruct M_T, not to match); the baseline trains neither. A random head would add noise to
  exactly the ablation rows of Table 1 that turn those aligns off. A weight set explicitly is used
  as given.
  """
  e, loss, baseline = config.eval, config.loss, config.model.baseline
  if e.zero_shot:  # CLIP's features alone (Encoder's zero_shot): no CA term exists
    return 0.0, 0.0
  def weight(value, trained: bool) -> float:
    if value is None:
      return PAPER_LAMBDA if trained and not baseline else 0.0
    return float(value)
  return weight(e.lambda1, loss.align4), weight(e.lambda2, loss.align5)


@functools.partial(jax.jit, static_argnames=('lambda1', 'lambda2'))
def _similarity_chunk(gallery: dict, queries: dict, lambda1: float, lambda2: float):
  """Sim_TI [q, G] for a chunk of queries against the whole gallery (float16 features welcome)."""
  gallery = {k: v.astype(jnp.float32) for k, v in gallery.items()}
  v_p = gallery['V_P']
  sim = l2_normalize(queries['T_P']) @ l2_normalize(v_p).T
  if lambda1:
    strips = jnp.ones(gallery['V_L'].shape[:2], bool)
    sim += lambda1 * cross_attention_similarity(gallery['V_L'], strips, queries['T_P'],
                                                gallery['V_L_gram']).T
  if lambda2:
    sim += lambda2 * cross_attention_similarity(queries['T_L'], queries['phrase_valid'], v_p)
  return sim


gallery_gram = jax.jit(part_gram)


def similarity(gallery: dict, queries: dict, lambda1: float = 0.5, lambda2: float = 0.5,
               chunk: int = 256) -> np.ndarray:
  """Sim_TI [Q, G] of every query (text) against every gallery image, `chunk` queries at a time.

  gallery: V_P, V_L (and V_L_gram = part_gram(V_L), else computed here, once).
  """
  gallery = dict(gallery)
  if lambda1 and 'V_L_gram' not in gallery:
    gallery['V_L_gram'] = gallery_gram(jnp.asarray(gallery['V_L'], jnp.float32))
  elif not lambda1:
    gallery.pop('V_L_gram', None)
  count = len(queries['T_P'])
  rows = []
  for start in range(0, count, chunk):
    part = {k: v[start:start + chunk] for k, v in queries.items()}
    short = chunk - len(part['T_P'])
    if short:  # one compiled shape: pad the last chunk
      part = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in part.items()}
    rows.append(np.asarray(_similarity_chunk(gallery, part, float(lambda1), float(lambda2))))
  return np.concatenate(rows)[:count]


def _allgather_strings(strings: np.ndarray) -> np.ndarray:
  """Every process's byte strings (paths, captions: for pictures), in process order: sent as
  uint8 rows padded to the longest, which a collective can carry."""
  if jax.process_count() == 1:
    return strings
  encoded = list(strings)
  width = int(np.max(multihost_utils.process_allgather(np.int32(max(map(len, encoded), default=0)))))
  padded = np.zeros((len(encoded), max(width, 1)), np.uint8)
  for row, b in zip(padded, encoded):
    row[:len(b)] = np.frombuffer(b, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=True))
  return np.array([row.tobytes().rstrip(b'\0') for row in gathered], object)


class Encoder:
  """jit-compiled gallery and query encoding, batches sharded over the 'data' mesh axis.

  zero_shot: CLIP's own features in the places of V_P and T_P (the projected class and
  end-of-text tokens, DSSL's heads unused), each its own single part, so that Sim_TI with
  lambda1 = lambda2 = 0 is CLIP's cosine (sim_ti_weights gives those under config.eval.zero_shot).
  """

  def __init__(self, model, mesh: jax.sharding.Mesh, zero_shot: bool = False):
    self.model = model
    self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

    def image_features(variables, images):
      if zero_shot:
        v = model.apply(variables, images, method=model.zero_shot_image)
        return {'V_P': v, 'V_L': v[:, None]}
      f = model.apply(variables, images, method=model.encode_image)
      return {k: f[k] for k in GALLERY_FEATURES}

    def text_features(variables, b):
      if zero_shot:
        t = model.apply(variables, b['tokens'], method=model.zero_shot_text)
        return {'T_P': t, 'T_L': t[:, None], 'phrase_valid': jnp.ones((len(t), 1), bool)}
      f = model.apply(variables, b['tokens'], b['token_mask'], b['phrases'], b['phrase_mask'],
                      method=model.encode_text)
      return {k: f[k] for k in QUERY_FEATURES}

    self._image, self._text = jax.jit(image_features), jax.jit(text_features)

  def _collect(self, fn, variables, batches: Iterable[dict], inputs, keep, what: str,
               total: int | None):
    """Features of every valid entry; one updating progress line on a terminal (process 0), where
    tqdm is installed (a machine with JAX's stack alone encodes without it)."""
    out = []
    try:
      import tqdm  # pylint: disable=g-import-not-at-top
      progress = tqdm.tqdm(desc=f'encoding {what}', total=total, unit=what[:-1], leave=False,
                           disable=None if jax.process_index() == 0 else True)
    except ImportError:
      progress = None
    for batch in batches:
      local = {k: batch[k] for k in inputs}
      global_batch = jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(self.sharding, x), local)
      features = fn(variables, global_batch if len(inputs) > 1 else global_batch[inputs[0]])
      features = multihost_utils.process_allgather(features, tiled=True)
      valid = multihost_utils.process_allgather(batch['valid'], tiled=True)
      extra = {k: _allgather_strings(batch[k]) if batch[k].dtype == object else
               multihost_utils.process_allgather(batch[k], tiled=True) for k in keep}
      out.append({k: np.asarray(v)[valid] for k, v in (features | extra).items()})
      if progress is not None:
        progress.update(int(np.sum(valid)))
    if progress is not None:
      progress.close()
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

  def gallery(self, variables, batches, total: int | None = None) -> dict:
    """`total`: the image count, for the progress line."""
    return self._collect(self._image, variables, batches, ('image',), ('person_id', 'file_path'),
                         'images', total)

  def queries(self, variables, batches, total: int | None = None) -> dict:
    """`total`: the sentence count, for the progress line."""
    return self._collect(self._text, variables, batches,
                         ('tokens', 'token_mask', 'phrases', 'phrase_mask'), ('person_id', 'text'),
                         'sentences', total)


def evaluate(encoder: Encoder, variables, config: ml_collections.ConfigDict, meta,
             split: str) -> dict:
  """Metrics of `split` (and the features and similarity, for pictures and re-ranking), with the
  seconds each stage took. Sim_TI's weights are `sim_ti_weights(config)`."""
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  index, count = jax.process_index(), jax.process_count()
  seconds = {}
  def timed(name, fn):
    start = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - start
    return out
  kept = meta.kept.get(split, {})
  gallery = timed('encode_images', lambda: encoder.gallery(
      variables, pipeline.gallery(config, split, index, count), kept.get('images')))
  queries = timed('encode_queries', lambda: encoder.queries(
      variables, pipeline.queries(config, meta, split, index, count), kept.get('captions')))
  sim = timed('similarity', lambda: similarity(
      {k: gallery[k] for k in GALLERY_FEATURES}, {k: queries[k] for k in QUERY_FEATURES},
      *sim_ti_weights(config)))
  metrics = timed('metrics', lambda: retrieval_metrics(sim, queries['person_id'],
                                                       gallery['person_id']))
  return {'metrics': metrics, 'similarity': sim, 'gallery': gallery, 'queries': queries,
          'seconds': seconds}


def reranked_metrics(result: dict, k1: int, k_near: int) -> dict:
  """retrieval_metrics after cross-modal re-ranking (Table 6, DSSL + RR) of an `evaluate` result:
  each query's K_near nearest texts by cos(T_P, T_P) vote on its top-K1 images."""
  queries = result['queries']
  neighbours = rerank.nearest_texts(np.asarray(l2_normalize(queries['T_P'])), k_near)
  head = rerank.rerank(result['similarity'], neighbours, k1)
  return retrieval_metrics(result['similarity'], queries['person_id'],
                           result['gallery']['person_id'], head)


def final_evaluation(encoder: Encoder, variables, which: str, config: ml_collections.ConfigDict,
                     meta, workdir: str, image_root: str) -> dict:
  """config.eval.split, plain and re-ranked (and image to text), for the checkpoint `which` names:
  a table on stdout; on process 0, WORKDIR/results.json (results_<split>.json for another split,
  results_<split>_<checkpoint>.json for another checkpoint) and the retrieval picture of its
  first queries (images under `image_root`)."""
  from dssl_jax import plots, reports  # pylint: disable=g-import-not-at-top
  split = config.eval.split
  start = time.time()
  result = evaluate(encoder, variables, config, meta, split)
  metrics = dict(result['metrics'])
  rows = {'DSSL': metrics}
  if config.eval.rerank:
    metrics['rerank'] = reranked_metrics(result, config.eval.rerank_k1, config.eval.rerank_k_near)
    rows['DSSL + RR'] = metrics['rerank']
  if config.eval.image_to_text:
    metrics['image_to_text'] = retrieval_metrics(
        result['similarity'].T, result['gallery']['person_id'], result['queries']['person_id'])
    rows['image to text'] = metrics['image_to_text']
  seconds = time.time() - start
  unmatched = metrics['queries_without_match']
  lambda1, lambda2 = sim_ti_weights(config)
  reports.say(f'{split} split, {which}, {metrics["queries"]} queries, '
              f'{len(result["gallery"]["person_id"])} images, Sim_TI with lambda1 = {lambda1:g}, '
              f'lambda2 = {lambda2:g} ({seconds:.1f}s)'
              + (f'; {unmatched} queries whose person has no gallery image were left out'
                 if unmatched else '') + ':')
  reports.say(reports.metrics_table(rows))
  reports.say(f'R1 has a standard error of {metrics["R1_stderr"]:.2f} over this split\'s '
              'people: another split of as many would move it by about that.')
  if jax.process_index() == 0:
    other = '' if config.eval.checkpoint == 'best' else f'_{config.eval.checkpoint}'
    name = 'results.json' if (split, other) == ('test', '') else f'results_{split}{other}.json'
    save_results(os.path.join(workdir, name), metrics,
                 {'split': split, 'evaluated': which, 'eval_seconds': round(seconds, 1),
                  'lambda1': lambda1, 'lambda2': lambda2, 'zero_shot': config.eval.zero_shot})
    plots.retrieval_picture(
        os.path.join(workdir, f'retrieval_{split}{other}.png'), result['similarity'],
        result['queries']['text'], result['queries']['person_id'],
        result['gallery']['file_path'], result['gallery']['person_id'], image_root)
  return metrics


def save_results(path: str, metrics: dict, extra: dict | None = None):
  """R1, R5, R10, mAP, mINP (and the rest) into the json file `path`, atomically."""
  with open(path + '.tmp', 'w') as f:
    json.dump(metrics | (extra or {}), f, indent=2)
  os.replace(path + '.tmp', path)
