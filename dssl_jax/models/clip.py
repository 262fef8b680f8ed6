"""CLIP's two encoders (Radford et al. 2021) in Flax: a ViT image encoder and a causal text
Transformer, with OpenAI's layout so that published weights convert by renaming
(dssl_jax/clip_weights.py).

Both are pre-LN Transformers. The image encoder embeds 16x16 patches, prepends a class token, and
projects the final-LN class token; the text encoder projects the final-LN state at the end-of-text
token (the largest id of a row: CLIP's vocabulary puts it last). Both also return every position
projected the same way, from which DSSL takes its local features. LayerNorms use PyTorch's
epsilon (1e-5) and run in float32; `dtype` is the matmuls' (bfloat16 for mixed precision).
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def quick_gelu(x):
  """OpenAI's trained CLIPs use x * sigmoid(1.702 x), not the exact GELU."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {'quick_gelu': quick_gelu, 'gelu': lambda x: jax.nn.gelu(x, approximate=False)}


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then + mlp(ln_2(x)): one fused q/k/v projection as OpenAI stores it."""
  heads: int
  activation: str = 'quick_gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    n, length, width = x.shape
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype, name=name)
    qkv = dense(3 * width, 'in_proj')(_layer_norm('ln_1')(x))
    q, k, v = jnp.split(qkv.reshape(n, length, 3 * self.heads, width // self.heads), 3, axis=2)
    attended = jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(n, length, width)
    x = x + dense(width, 'out_proj')(attended)
    hidden = ACTIVATIONS[self.activation](dense(4 * width, 'c_fc')(_layer_norm('ln_2')(x)))
    return x + dense(width, 'c_proj')(hidden)


class Transformer(nn.Module):
  layers: int
  heads: int
  activation: str = 'quick_gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.heads, self.activation, self.dtype, name=f'resblocks_{i}')(
          x, mask).astype(jnp.float32)
    return x


class VisionTransformer(nn.Module):
  """Image [N, H, W, 3] -> (class feature [N, out], patch features [N, H/patch, W/patch, out]).

  The position table has one row per patch of the configured image size (plus the class token);
  weights trained at another size are resized once, at conversion.
  """
  patch: int = 16
  width: int = 768
  layers: int = 12
  heads: int = 12
  out_dim: int = 512
  activation: str = 'quick_gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding='VALID',
                use_bias=False, dtype=self.dtype, name='conv1')(images)
    n, rows, cols, width = x.shape
    scale = width**-0.5
    class_embedding = self.param('class_embedding', nn.initializers.normal(scale), (width,))
    positions = self.param('positional_embedding', nn.initializers.normal(scale),
                           (rows * cols + 1, width))
    x = jnp.concatenate([jnp.broadcast_to(class_embedding, (n, 1, width)),
                         x.reshape(n, rows * cols, width).astype(jnp.float32)], axis=1)
    x = _layer_norm('ln_pre')(x + positions)
    x = Transformer(self.layers, self.heads, self.activation, self.dtype, name='transformer')(x)
    x = _layer_norm('ln_post')(x)
    projection = self.param('proj', nn.initializers.normal(scale), (width, self.out_dim))
    x = x @ projection
    return x[:, 0], x[:, 1:].reshape(n, rows, cols, self.out_dim)


class TextTransformer(nn.Module):
  """Token ids [N, L] (L <= context) -> (sentence feature [N, out], token features [N, L, out]).

  Causal attention: a position sees only those before it, so padding after the end-of-text token
  changes nothing, and a context shorter than 77 gives the same features for texts that fit.
  """
  vocab_size: int = 49408
  context: int = 77
  width: int = 512
  layers: int = 12
  heads: int = 8
  out_dim: int = 512
  activation: str = 'quick_gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    length = tokens.shape[1]
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name='token_embedding')(tokens)
    positions = self.param('positional_embedding', nn.initializers.normal(0.01),
                           (self.context, self.width))
    x = x + positions[:length]
    causal = jnp.tril(jnp.ones((length, length), bool))
    x = Transformer(self.layers, self.heads, self.activation, self.dtype, name='transformer')(
        x, causal)
    x = _layer_norm('ln_final')(x)
    projection = self.param('text_projection', nn.initializers.normal(self.width**-0.5),
                            (self.width, self.out_dim))
    x = x @ projection
    end_of_text = jnp.argmax(tokens, axis=-1)
    return jnp.take_along_axis(x, end_of_text[:, None, None], axis=1)[:, 0], x


def encoders(config, dtype=jnp.float32, context: Optional[int] = None):
  """(VisionTransformer, TextTransformer) of config.model.clip; `context` overrides its length."""
  return (VisionTransformer(config.patch, config.image_width, config.image_layers,
                            config.image_heads, config.embed_dim, config.activation, dtype),
          TextTransformer(config.vocab_size, context or config.context, config.text_width,
                          config.text_layers, config.text_heads, config.embed_dim,
                          config.activation, dtype))
