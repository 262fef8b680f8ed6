"""Evaluation: encode a split's gallery and queries, rank them by Sim_TI (dssl_jax/similarity.py)
and score the ranking with the field's metrics (dssl_jax/metrics.py), after each epoch on val and
at the end of a run into its results file.
"""
import dataclasses
import json
import os
import time
from typing import Iterable

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from dssl_jax import checkpoints, rerank
from dssl_jax import metrics as metrics_lib
from dssl_jax import similarity as similarity_lib
from dssl_jax import state as state_lib
from dssl_jax.data import augment as augment_lib

GALLERY_FEATURES = ('V_P', 'V_L')
QUERY_FEATURES = ('T_P', 'T_L', 'phrase_valid')


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
      images = augment_lib.normalize(images) if images.dtype == jnp.uint8 else images
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


@dataclasses.dataclass
class SplitEvaluation:
  """A split's metrics, and what pictures and re-ranking read besides."""
  metrics: dict
  similarity: np.ndarray  # Sim_TI [queries, gallery]
  gallery: dict  # the images' features, person_id and file_path
  queries: dict  # the captions' features, person_id and text
  seconds: dict  # per stage: encode_images, encode_queries, similarity, metrics


def evaluate_split(encoder: Encoder, variables, config: ml_collections.ConfigDict, meta,
                   split: str, stage: int = 2) -> SplitEvaluation:
  """Encodes `split`, ranks it by Sim_TI (weights: similarity.sim_ti_weights of the config and of
  the training stage the variables come from) and scores the ranking, timing each stage."""
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
  sim = timed('similarity', lambda: similarity_lib.similarity(
      {k: gallery[k] for k in GALLERY_FEATURES}, {k: queries[k] for k in QUERY_FEATURES},
      *similarity_lib.sim_ti_weights(config, stage)))
  metrics = timed('metrics', lambda: metrics_lib.retrieval_metrics(
      sim, queries['person_id'], gallery['person_id']))
  return SplitEvaluation(metrics, sim, gallery, queries, seconds)


def reranked_metrics(result: SplitEvaluation, k1: int, k_near: int) -> dict:
  """retrieval_metrics after cross-modal re-ranking (Table 6, DSSL + RR) of a split's evaluation:
  each query's K_near nearest texts by cos(T_P, T_P) vote on its top-K1 images."""
  queries = result.queries
  neighbours = rerank.nearest_texts(np.asarray(similarity_lib.l2_normalize(queries['T_P'])),
                                    k_near)
  head = rerank.rerank(result.similarity, neighbours, k1)
  return metrics_lib.retrieval_metrics(result.similarity, queries['person_id'],
                                       result.gallery['person_id'], head)


def final_evaluation(encoder: Encoder, loaded: checkpoints.EvaluationVariables,
                     config: ml_collections.ConfigDict, meta, workdir: str,
                     image_root: str) -> dict:
  """config.eval.split, plain and re-ranked (and image to text), of the `loaded` checkpoint: a
  table on stdout; on process 0, WORKDIR/results.json (results_<split>.json for another split,
  results_<split>_<checkpoint>.json for another checkpoint, or for the last one standing in for
  an unreadable best) and the retrieval picture of its first queries (images under
  `image_root`). results.json only ever holds the checkpoint the run chose."""
  from dssl_jax import plots, reports  # pylint: disable=g-import-not-at-top
  split, which = config.eval.split, loaded.which
  if loaded.stand_in:
    other = f'_{loaded.step}'
    logging.warning(f'the best checkpoint on val does not read back: evaluating {which} into '
                    f'results_{split}{other}.json instead')
  else:
    other = '' if config.eval.checkpoint == 'best' else f'_{config.eval.checkpoint}'
  start = time.time()
  result = evaluate_split(encoder, loaded.variables, config, meta, split, loaded.stage)
  metrics = dict(result.metrics)
  rows = {'DSSL': metrics}
  if config.eval.rerank:
    metrics['rerank'] = reranked_metrics(result, config.eval.rerank_k1, config.eval.rerank_k_near)
    rows['DSSL + RR'] = metrics['rerank']
  if config.eval.image_to_text:
    metrics['image_to_text'] = metrics_lib.retrieval_metrics(
        result.similarity.T, result.gallery['person_id'], result.queries['person_id'])
    rows['image to text'] = metrics['image_to_text']
  seconds = time.time() - start
  unmatched = metrics['queries_without_match']
  lambda1, lambda2 = similarity_lib.sim_ti_weights(config, loaded.stage)
  reports.say(f'{split} split, {which}, {metrics["queries"]} queries, '
              f'{len(result.gallery["person_id"])} images, Sim_TI with lambda1 = {lambda1:g}, '
              f'lambda2 = {lambda2:g} ({seconds:.1f}s)'
              + (f'; {unmatched} queries whose person has no gallery image were left out'
                 if unmatched else '') + ':')
  reports.say(reports.metrics_table(rows))
  reports.say(f'R1 has a standard error of {metrics["R1_stderr"]:.2f} over this split\'s '
              'people: another split of as many would move it by about that.')
  if jax.process_index() == 0:
    name = 'results.json' if (split, other) == ('test', '') else f'results_{split}{other}.json'
    save_results(os.path.join(workdir, name), metrics,
                 {'split': split, 'evaluated': which, 'eval_seconds': round(seconds, 1),
                  'stage': loaded.stage, 'lambda1': lambda1, 'lambda2': lambda2,
                  'zero_shot': config.eval.zero_shot})
    plots.retrieval_picture(
        os.path.join(workdir, f'retrieval_{split}{other}.png'), result.similarity,
        result.queries['text'], result.queries['person_id'],
        result.gallery['file_path'], result.gallery['person_id'], image_root)
  return metrics


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: the final evaluation of a trained workdir (see final_evaluation), or
  of CLIP's own features with config.eval.zero_shot."""
  from dssl_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top
  meta = pipeline.dataset_meta(config.data)
  model, mesh = state_lib.make_model(config, meta), state_lib.make_mesh()
  loaded = (state_lib.zero_shot_variables(config, model, mesh) if config.eval.zero_shot
            else state_lib.load_variables(config, workdir, model, mesh))
  return final_evaluation(
      Encoder(model, mesh, config.eval.zero_shot), loaded, config, meta, os.path.abspath(workdir),
      image_root=os.path.join(builders.manual_dir(config.data), 'imgs'))


def save_results(path: str, metrics: dict, extra: dict | None = None):
  """R1, R5, R10, mAP, mINP (and the rest) into the json file `path`, atomically."""
  with open(path + '.tmp', 'w') as f:
    json.dump(metrics | (extra or {}), f, indent=2)
  os.replace(path + '.tmp', path)
