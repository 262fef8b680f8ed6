"""CLIP's encoders against open_clip (the reference) at 384x128, weights converted from the
.safetensors file open_clip's model writes."""
import jax.numpy as jnp
import numpy as np
import pytest

from dssl_jax import clip_weights
from dssl_jax.models import clip
from tests.helpers import reference

torch = reference('torch')
open_clip = reference('open_clip')
safetensors_torch = reference('safetensors.torch')

GRID = (24, 8)  # 384x128 in 16x16 patches


def _open_clip_model(width, layers, text_width, text_layers, embed, seed=0):
  """A random open_clip CLIP at 384x128, LayerNorms and biases random too (they start at 1, 0)."""
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(
      embed_dim=embed, quick_gelu=True,
      vision_cfg={'image_size': (384, 128), 'patch_size': 16, 'width': width, 'layers': layers,
                  'head_width': 64 if width >= 512 else 32},
      text_cfg={'context_length': 77, 'vocab_size': 49408, 'width': text_width,
                'heads': max(text_width // 64, 2), 'layers': text_layers}).eval()
  with torch.no_grad():
    for name, value in model.named_parameters():
      if '.ln' in name or name.startswith('ln') or name.endswith('bias'):
        value.normal_(0.0, 0.5)
  return model


def _converted(model, tmp_path):
  path = str(tmp_path / 'open_clip_model.safetensors')
  safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
  return clip_weights.convert_state_dict(clip_weights.read_state_dict(path), GRID)


def _ours(model):
  v, t = model.visual, model
  heads = v.transformer.resblocks[0].attn.num_heads
  image = clip.VisionTransformer(16, v.conv1.out_channels, len(v.transformer.resblocks), heads,
                                 v.proj.shape[1])
  text = clip.TextTransformer(49408, 77, t.token_embedding.embedding_dim,
                              len(t.transformer.resblocks),
                              t.transformer.resblocks[0].attn.num_heads, t.text_projection.shape[1])
  return image, text


def _check(model, tmp_path, atol):
  variables = _converted(model, tmp_path)
  image_encoder, text_encoder = _ours(model)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 3, 384, 128)).astype(np.float32)
  tokens = np.zeros((3, 77), np.int64)
  for row, length in enumerate((5, 12, 77)):  # the last one fills the context
    tokens[row, :length] = rng.integers(1, 49406, length)
    tokens[row, 0], tokens[row, length - 1] = 49406, 49407
  model.visual.output_tokens = True
  with torch.no_grad():
    pooled, patches = model.visual(torch.from_numpy(images))
    patches = patches @ model.visual.proj
    sentence = model.encode_text(torch.from_numpy(tokens))
  ours_pooled, ours_grid = image_encoder.apply({'params': variables['image']},
                                               jnp.asarray(images.transpose(0, 2, 3, 1)))
  assert ours_grid.shape == (2, *GRID, pooled.shape[1])
  np.testing.assert_allclose(ours_pooled, pooled.numpy(), atol=atol, rtol=0)
  np.testing.assert_allclose(ours_grid.reshape(2, -1, pooled.shape[1]), patches.numpy(),
                             atol=atol, rtol=0)
  ours_sentence, _ = text_encoder.apply({'params': variables['text']}, jnp.asarray(tokens))
  np.testing.assert_allclose(ours_sentence, sentence.numpy(), atol=atol, rtol=0)
  # Causal: a context cut after the end-of-text token gives the same sentence features.
  short, _ = text_encoder.apply({'params': variables['text']}, jnp.asarray(tokens[:2, :12]))
  np.testing.assert_allclose(short, sentence.numpy()[:2], atol=atol, rtol=0)


def test_small_clip_matches_open_clip(tmp_path):
  _check(_open_clip_model(64, 2, 64, 2, 48), tmp_path, atol=2e-5)


@pytest.mark.slow
def test_vit_b16_matches_open_clip(tmp_path):
  """The published shape (ViT-B/16: width 768, 12 layers; text 512, 12 layers), random."""
  _check(_open_clip_model(768, 12, 512, 12, 512), tmp_path, atol=2e-4)
