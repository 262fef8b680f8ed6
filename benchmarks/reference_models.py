"""The plain models that benchmarks.torch_reference builds in PyTorch, here in Flax from DSSL's own
encoders, and their train step: the same model, batch and optimizer timed in both frameworks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dssl_jax import losses
from dssl_jax.models import clip
from dssl_jax.models import dssl
from dssl_jax.models.resnet import ResNet
from dssl_jax.models.text import TextEncoder


class ReferenceModel(nn.Module):
  """benchmarks.torch_reference.ReferenceModel in Flax, from the ResNet and text encoder DSSL uses;
  returns the loss of `part` (image | text | both). The ResNet computes in config.dtype."""
  config: ml_collections.FrozenConfigDict  # config.model
  vocab_size: int
  num_classes: int

  @nn.compact
  def __call__(self, batch: dict, part: str):
    c = self.config
    classifier = nn.Dense(self.num_classes, use_bias=False, name='classifier')
    loss = 0.0
    if part in ('image', 'both'):
      feature_map = ResNet(c.depth, c.width, dssl.compute_dtype(c), name='backbone')(
          batch['image'], train=True)
      v = nn.Dense(c.embed_dim, name='image_fc')(feature_map.mean(axis=(1, 2)))
      loss += losses.id_loss(classifier(v), batch['label'])
    if part in ('text', 'both'):
      text = TextEncoder(self.vocab_size, c.word_dim, c.embed_dim // 2, name='text')
      phrases = text(batch['phrases'], batch['phrase_mask']).mean(axis=1)
      sentences = text(batch['tokens'], batch['token_mask'])
      t = nn.Dense(c.embed_dim, name='text_fc')(sentences + phrases)
      loss += losses.id_loss(classifier(t), batch['label'])
    if part == 'both':
      loss += losses.rank_loss(v, t, batch['label'], margin=0.2)
    return loss


class ClipReferenceModel(nn.Module):
  """benchmarks.torch_reference's `clip` step in Flax: our CLIP encoders, an ID classifier on the
  image and sentence features and CLIP's contrastive loss."""
  config: ml_collections.FrozenConfigDict  # config.model
  num_classes: int

  @nn.compact
  def __call__(self, batch: dict, part: str):
    del part  # one step only
    image, text = clip.encoders(self.config.clip, context=batch['tokens'].shape[1])
    v, _ = image(batch['image'])
    t, _ = text(batch['tokens'])
    classifier = nn.Dense(self.num_classes, use_bias=False, name='classifier')
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    logits = unit(v) @ unit(t).T / 0.02
    pairs = jnp.arange(len(v))
    contrastive = (optax.softmax_cross_entropy_with_integer_labels(logits, pairs).mean()
                   + optax.softmax_cross_entropy_with_integer_labels(logits.T, pairs).mean()) / 2
    return (losses.id_loss(classifier(v), batch['label'])
            + losses.id_loss(classifier(t), batch['label']) + contrastive)


def train_step(params, batch_stats, opt_state, *, model, tx, batch, part):
  """One Adam step on the loss of `part` of the batch."""
  def loss_fn(params):
    loss, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch, part,
                                mutable=['batch_stats'])
    return loss, updates.get('batch_stats', {})
  (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), batch_stats, opt_state
