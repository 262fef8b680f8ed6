"""The CLIP backbone on the embedded synthetic data: a CLIP-shaped model of 2 narrow layers per
encoder, from random weights (so no lower rate for the encoders), warm-up and cosine. Pass the
tokenizer's merges: --config.model.clip.bpe_path=.../open_clip/bpe_simple_vocab_16e6.txt.gz."""
from dssl_jax.configs import synthetic


def get_config():
  config = synthetic.get_config()
  config.data.max_words = 48  # BPE tokens, start and end included
  m = config.model
  m.backbone = 'clip'
  m.clip.update(patch=16, image_width=64, image_layers=2, image_heads=2, text_width=64,
                text_layers=2, text_heads=2, context=48, embed_dim=64)
  t = config.train
  t.stage1_epochs, t.stage2_epochs = 1, 6
  t.stage2_schedule, t.warmup_epochs = 'cosine', 1
  return config
