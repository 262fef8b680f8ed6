"""Similarities: cosines, the cross-modal attention CA as a pairwise similarity (eq. 11-15), and the
test similarity Sim_TI over a gallery and its queries. The losses, the evaluation and the search
score with these.

Sim_TI (the paper gives lambda1 = lambda2 = 0.5, not the formula; docs/design.md's reading):
  cos(V_P, T_P) + l1 * cos(CA(T_P, V_L), T_P) + l2 * cos(CA(V_P, T_L), V_P),
with a CA term left out (weight 0) where the run trained none of its heads (`sim_ti_weights`).
The pair-dependent CA terms are computed in chunks of queries, from Gram matrices (no [Q, G, p]
tensor), so a CUHK-PEDES-sized test set fits in a few GB.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PAPER_LAMBDA = 0.5  # lambda1 = lambda2 (section 4.1.2)


def safe_norm(x: jax.Array, eps: float = 1e-8, keepdims: bool = False) -> jax.Array:
  """||x|| over the last axis, at least eps, with a finite gradient at x = 0 (padded phrases are
  exact zero vectors at init; jnp.linalg.norm's gradient there is NaN)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=keepdims), eps * eps))


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / safe_norm(x, keepdims=True)


def attention_weights(cosines: jax.Array, mask: jax.Array) -> jax.Array:
  """eq. 12/15: softmax of the cosines over valid parts, then only weights above 1/(valid count)."""
  alpha = jax.nn.softmax(jnp.where(mask, cosines, -1e9), axis=-1)  # masked parts get 0
  count = jnp.maximum(mask.sum(-1, keepdims=True), 1)
  return jnp.where(mask & (alpha > 1.0 / count), alpha, 0.0)


def part_gram(parts: jax.Array) -> jax.Array:
  """G[a] = X_a X_a^T [m, m]: all CA needs of the parts' geometry; a gallery's is computed once."""
  return jnp.einsum('amp,anp->amn', parts, parts)


def cross_attention_similarity(parts: jax.Array, mask: jax.Array, queries: jax.Array,
                               gram: jax.Array | None = None) -> jax.Array:
  """S[a, b] = cos(CA(q_b, X_a), q_b) for every owner a of parts X_a [m, p] and every query q_b.

  CA(q, X) = sum of alpha_i X_i over the selected parts. Its norm comes from the Gram matrix of X_a
  (`part_gram`, pass it when X is reused), so no [A, B, p] tensor is built: this is what makes a
  full test similarity affordable. parts [A, m, p], mask [A, m] (padded phrases False),
  queries [B, p] -> [A, B].
  """
  count, parts_per_owner, features = parts.shape
  lengths = safe_norm(parts)  # [A, m]
  unit = parts / lengths[..., None]
  # One 2-D matmul: XLA:CPU runs the equivalent 3-D einsum much slower (docs/benchmarks.md,
  # "Figures behind code comments").
  cosines = (unit.reshape(-1, features) @ l2_normalize(queries).T).reshape(
      count, parts_per_owner, -1).transpose(0, 2, 1)  # [A, B, m]
  weights = attention_weights(cosines, mask[:, None, :])  # [A, B, m]
  projection = jnp.einsum('abm,abm,am->ab', weights, cosines, lengths)  # CA . q / |q|
  gram = part_gram(parts) if gram is None else gram
  squared_norm = jnp.einsum('abm,amn,abn->ab', weights, gram, weights)
  return projection / jnp.sqrt(jnp.maximum(squared_norm, 1e-16))


def sim_ti_weights(config: ml_collections.ConfigDict, stage: int = 2) -> tuple[float, float]:
  """(lambda1, lambda2) of Sim_TI for the run `config` describes, at a checkpoint of `stage`.

  An unset weight (config.eval.lambda1/2 = None) is the paper's 0.5 where its CA term was trained,
  else 0: only Align IV (eq. 13) trains the visual parts V_L (image_local, SAM) to match a text,
  and only Align V (eq. 14) trains the phrases T_L to match an image (SDM's eq. 2 trains them to
  reconstruct M_T, not to match); the baseline trains neither, and neither is trained before stage
  2. A random head would add noise to exactly the ablation rows of Table 1 that turn those aligns
  off, and to a stage-1 checkpoint. A weight set explicitly is used as given.
  """
  e, loss, baseline = config.eval, config.loss, config.model.baseline
  if e.zero_shot:  # CLIP's features alone (Encoder's zero_shot): no CA term exists
    return 0.0, 0.0
  def weight(value, trained: bool) -> float:
    if value is None:
      return PAPER_LAMBDA if trained and stage == 2 and not baseline else 0.0
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
