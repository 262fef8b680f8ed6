"""The paper's losses (eq. 2, 3, 6, 13-21) as pure functions of the model's features.

Batch reduction of the ranking loss (config.loss.rank_reduction): eq. 3 sums the hinge over every
matched pair and each of its in-batch negatives (VSE0); 'sum' keeps that sum over the whole batch
as printed, 'mean' (the default, docs/experiments/rank_reduction.md) averages it over anchors like
the per-sample ID loss, 1/B of the printed weight against the ID terms. Pairs of the same person are
never negatives.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import dssl
from dssl_jax.similarity import cross_attention_similarity, l2_normalize, safe_norm


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """S[i, j] = cos(a_i, b_j)."""
  return l2_normalize(a) @ l2_normalize(b).T


def ranking_loss(similarity: jax.Array, person_ids: jax.Array, margin: float,
                 valid: jax.Array | None = None, same: jax.Array | None = None,
                 reduction: str = 'mean') -> jax.Array:
  """eq. 3 on S[i, j] = S(x1_i, x2_j), matched pairs on the diagonal.

  For each matched pair (x1_i, x2_i): hinge over every x2_j (j a negative) and every x1_j, summed
  over the anchors ('sum', as printed) or averaged over them ('mean').
  `valid` [B] drops entries (padded phrases) as anchors and as negatives; `same` [B, B] marks
  further pairs that are not negatives (identical inputs).
  """
  positive = jnp.diag(similarity)
  negative = person_ids[:, None] != person_ids[None, :]
  if valid is None:
    valid = jnp.ones_like(positive, bool)
  negative &= valid[:, None] & valid[None, :]
  if same is not None:
    negative &= ~same
  against_x2 = jnp.where(negative, jax.nn.relu(margin - positive[:, None] + similarity), 0)
  against_x1 = jnp.where(negative, jax.nn.relu(margin - positive[None, :] + similarity), 0)
  per_anchor = against_x2.sum(axis=1) + against_x1.sum(axis=0)
  total = jnp.sum(jnp.where(valid, per_anchor, 0))
  if reduction == 'sum':
    return total
  if reduction == 'mean':
    return total / jnp.maximum(valid.sum(), 1)
  raise UserError(f"config.loss.rank_reduction must be 'sum' or 'mean', got {reduction!r}")


def rank_loss(x1, x2, person_ids, margin, reduction: str = 'mean') -> jax.Array:
  """L_rank(x1, x2) with cosine similarity (eq. 3)."""
  return ranking_loss(cosine_matrix(x1, x2), person_ids, margin, reduction=reduction)


def id_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """eq. 16, averaged over the batch."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def id_losses(logits: dict, labels: jax.Array, names) -> dict:
  """{'id_' + name: eq. 16 on logits[name]} for each of `names`, as one softmax over them all."""
  per_feature = optax.softmax_cross_entropy_with_integer_labels(
      jnp.stack([logits[name] for name in names]), labels[None]).mean(-1)
  return {f'id_{name}': loss for name, loss in zip(names, per_feature)}


def mec_loss(person: jax.Array, surroundings: jax.Array,
             form: str = 'squared_cosine') -> jax.Array:
  """The mutual exclusion constraint (eq. 6) on P, S [B, p], rows V_P^i and V_S^i.

  'literal': ||P^T S||_F as printed, computed as sqrt(sum((P P^T) * (S S^T))) (B x B, not p x p).
  It is not scale-free while every other loss reads V_P and V_S through cosines or GN: at the
  start of stage 2 it dominates the loss and its backbone gradient dwarfs each Align term's
  (docs/experiments/loss_balance.md), and it is met by shrinking both features. Nor does it vanish
  when the features are orthogonal: it measures how the coordinates of the batch co-vary.
  'squared_cosine' (default): the mean of cos(V_P^i, V_S^j)^2 over every pair of the batch, i.e.
  ||P' S'^T||_F^2 / B^2 with P', S' the L2-normalised rows. It is what the text asks of MEC
  ("V_P and V_S are orthogonal to each other and the visual information is distributed between
  them without overlap"): 0 exactly when every person feature is orthogonal to every surroundings
  feature, at most 1, and blind to scale, so it can only be met by direction. Its pull on a cosine
  c is 2c / B^2: it fades as the overlap goes, and leaves the aligns the last word.
  'cosine': the root of that mean, ||P' S'^T||_F / B. The root's gradient over the cosines has
  norm 1 / B however small they are, so it pushes at full strength to the end and costs accuracy
  (docs/experiments/mec_form.md).
  """
  if form == 'literal':
    squared = jnp.sum((person @ person.T) * (surroundings @ surroundings.T))
    return jnp.sqrt(jnp.maximum(squared, 1e-12))
  if form in ('squared_cosine', 'cosine'):
    mean_square = jnp.mean(jnp.square(cosine_matrix(person, surroundings)))
    return mean_square if form == 'squared_cosine' else jnp.sqrt(jnp.maximum(mean_square, 1e-12))
  raise UserError("config.loss.mec_form must be 'squared_cosine', 'cosine' or 'literal', "
                  f'got {form!r}')


def sdm_loss(f: dict, person_ids, margin: float, kind: str, phrases: str = 'sum',
             same_phrases: jax.Array | None = None, reduction: str = 'mean') -> jax.Array:
  """eq. 2: T_G vs T_P, plus each phrase slot i of M_T vs T_L (padded phrases left out).

  T_P and T_L are SDM's outputs from the zeroed input (the '_zeroed' copies where only this loss
  sees the zeroing, config.model.sdm_zeroing = 'loss').
  kind 'rank' is the paper's, eq. 3 with the batch `reduction`; 'euclidean' (Table 5) is the
  mean squared distance instead.
  phrases 'sum' adds the slots' losses as eq. 2 prints; 'mean' averages them over the slots that
  hold a phrase, so the phrase part weighs as much as the sentence part whatever n is.
  same_phrases [B, B, n] (identical_phrases): pairs of a slot that are no negatives.
  """
  valid = f['phrase_valid']  # [B, n]
  t_p, t_l = f.get('T_P_zeroed', f['T_P']), f.get('T_L_zeroed', f['T_L'])
  if kind == 'rank':
    sentence = rank_loss(f['T_G'], t_p, person_ids, margin, reduction)
    per_slot = jax.vmap(
        lambda m, t, v, same: ranking_loss(cosine_matrix(m, t), person_ids, margin, v, same,
                                           reduction),
        in_axes=(1, 1, 1, 2))(f['M_T'], t_l, valid, same_phrases)
  elif kind == 'euclidean':
    sentence = jnp.mean(jnp.sum((f['T_G'] - t_p)**2, axis=-1))
    distances = jnp.sum((f['M_T'] - t_l)**2, axis=-1)  # [B, n]
    per_slot = jnp.sum(distances * valid, axis=0) / jnp.maximum(valid.sum(axis=0), 1)
  else:
    raise UserError(f"config.loss.sdm must be 'rank' or 'euclidean', got {kind!r}")
  if phrases == 'sum':
    return sentence + per_slot.sum()
  if phrases == 'mean':
    return sentence + per_slot.sum() / jnp.maximum(valid.any(axis=0).sum(), 1)
  raise UserError(f"config.loss.sdm_phrases must be 'sum' or 'mean', got {phrases!r}")


def identical_phrases(batch: dict, config: ml_collections.ConfigDict) -> jax.Array | None:
  """same[a, b, i]: slot i of captions a and b holds the same words, or None when no pair counts
  as the same (config.loss.sdm_phrase_negatives).

  'other_person' (default): every other person's phrase is a negative, as eq. 3 is printed.
  'distinct': not one with the same words. A phrase is encoded on its own, so the same words
  ("the man", "black shoes") give the same M_T in every caption, and eq. 2 cannot rank one copy
  above the other: on the synthetic default such pairs make nearly all of the SDM loss that
  remains at the end (docs/experiments/sdm_negatives.md).
  CLIP's phrase spans are read in their sentence's context, so none of them is the same.
  """
  rule = config.loss.sdm_phrase_negatives
  if rule not in ('distinct', 'other_person'):
    raise UserError("config.loss.sdm_phrase_negatives must be 'distinct' or 'other_person', "
                    f'got {rule!r}')
  if rule == 'other_person' or formats.phrase_spans(config):
    return None
  words = jnp.where(batch['phrase_mask'], batch['phrases'], 0)  # [B, n, l]
  return jnp.all(words[:, None] == words[None, :], axis=-1)


def gallery_surroundings(config: ml_collections.ConfigDict) -> bool:
  """Whether Align II places each text in every image's surroundings (config.loss)."""
  where = config.loss.align2_surroundings
  if where not in ('gallery', 'own'):
    raise UserError("config.loss.align2_surroundings must be 'gallery' or 'own', got "
                    f'{where!r}')
  return where == 'gallery'


def align2_similarity(f: dict) -> jax.Array:
  """S[i, j] = cos(V_G^i, SPFM(T_P^j, V_S^i)) for image i and text j (eq. 7-8): the described
  person placed in the gallery image's surroundings, then matched with the whole gallery image.

  Ranking V_G^i against SPFM(T_P^j, V_S^j) instead lets every negative carry its own image's
  surroundings, and the loss is then solved by matching surroundings (config value 'own').
  """
  pairs = f['V_R_pairs']  # [B_image, B_text, p], in the compute dtype: read, not copied, in float32
  return jnp.einsum('ip,ijp->ij', l2_normalize(f['V_G']), pairs,
                    preferred_element_type=jnp.float32) / safe_norm(pairs.astype(jnp.float32))


def align4_similarity(f: dict) -> jax.Array:
  """S[i, j] = cos(CA(T_P^j, V_L^i), T_P^j) for image i and text j (eq. 12-13)."""
  strips = jnp.ones(f['V_L'].shape[:2], bool)
  return cross_attention_similarity(f['V_L'], strips, f['T_P'])


def align5_similarity(f: dict) -> jax.Array:
  """S[i, j] = cos(CA(V_P^i, T_L^j), V_P^i) for image i and text j (eq. 14-15)."""
  return cross_attention_similarity(f['T_L'], f['phrase_valid'], f['V_P']).T


def separation_stats(f: dict) -> dict:
  """What separation does to the features: mean norms of V_P, V_S, T_P and mean |cos(V_P^i,
  V_S^i)|, logged each epoch so a user can see MEC work (or see features shrink)."""
  mean_norm = lambda x: safe_norm(x).mean()
  stats = {'norm_V_P': mean_norm(f['V_P']), 'norm_T_P': mean_norm(f['T_P'])}
  if 'V_S' in f:
    stats['norm_V_S'] = mean_norm(f['V_S'])
    stats['abs_cos_V_P_V_S'] = jnp.abs(
        jnp.sum(l2_normalize(f['V_P']) * l2_normalize(f['V_S']), axis=-1)).mean()
  return stats


def stage1_loss(f: dict, batch: dict) -> tuple[jax.Array, dict]:
  """eq. 17-18: ID loss on V_G and T_G."""
  terms = id_losses(f['logits'], batch['label'], ('V_G', 'T_G'))
  return sum(terms.values()), terms


def align_similarities(f: dict, config: ml_collections.ConfigDict) -> dict:
  """S [B, B] of each align the config trains: Align I (eq. 5), II (eq. 8), III (eq. 10), IV (eq.
  13) and V (eq. 14); the baseline's rank(V_G, T_G) as 'align1'. The aligns that compare two
  features by their cosine are computed as one einsum."""
  if config.model.baseline:
    return {'align1': cosine_matrix(f['V_G'], f['T_G'])}
  switches, loss = dssl.Switches.from_config(config.model), config.loss
  cosine_pairs, similarities = {}, {}  # align name: (x1, x2) | S [B, B]
  if loss.align1:
    cosine_pairs['align1'] = (f['V_P'], f['T_P'])
  if loss.align2 and switches.separation:
    if not switches.spfm:
      raise UserError('config.loss.align2 needs config.model.spfm (V_R = SPFM(T_P, V_S), eq. 7)')
    if gallery_surroundings(config):
      similarities['align2'] = align2_similarity(f)
    else:
      cosine_pairs['align2'] = (f['V_G'], f['V_R'])
  if loss.align3:
    if not switches.pdm:
      raise UserError('config.loss.align3 needs config.model.pdm (T_R = PDM(V_P), eq. 9)')
    cosine_pairs['align3'] = (f['T_G'], f['T_R'])
  if loss.align4:
    similarities['align4'] = align4_similarity(f)
  if loss.align5:
    similarities['align5'] = align5_similarity(f)
  if cosine_pairs:
    x1, x2 = (jnp.stack(x) for x in zip(*cosine_pairs.values()))
    cosines = jnp.einsum('kip,kjp->kij', l2_normalize(x1), l2_normalize(x2))
    similarities |= dict(zip(cosine_pairs, cosines))
  return similarities


def stage2_loss(f: dict, batch: dict, config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """eq. 19-21 (+ eq. 2), honouring every switch of config.model and config.loss.

  The baseline (Tables 1-2, first row) is ID on V_G, T_G plus rank(V_G, T_G): a common space.
  Terms that share a shape run together: the ID terms as one softmax, and eq. 3 over every align's
  similarity at once.
  """
  switches = dssl.Switches.from_config(config.model)
  loss, ids = config.loss, batch['person_id']
  terms = id_losses(f['logits'], batch['label'], dssl.id_features(switches))
  similarities = align_similarities(f, config)
  if similarities:
    names = sorted(similarities)
    ranked = jax.vmap(functools.partial(ranking_loss, person_ids=ids, margin=loss.margin,
                                        reduction=loss.rank_reduction))
    terms |= dict(zip(names, ranked(jnp.stack([similarities[name] for name in names]))))
  if config.model.baseline:
    return sum(terms.values()), terms
  if loss.mec and switches.separation:
    terms['mec'] = loss.mec_weight * mec_loss(f['V_P'], f['V_S'], loss.mec_form)
  if switches.sdm:
    terms['sdm'] = sdm_loss(f, ids, loss.margin, loss.sdm, loss.sdm_phrases,
                            identical_phrases(batch, config), loss.rank_reduction)
  return sum(terms.values()), terms
