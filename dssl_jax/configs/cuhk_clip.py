"""CUHK-PEDES on CLIP ViT-B/16 (OpenAI's weights, converted with python -m dssl_jax.clip_weights;
the tokenizer's merges file comes with open_clip): DSSL's heads and losses unchanged.

The schedule is IRRA's for this backbone (Jiang and Ye, CVPR 2023; its utils/options.py): Adam,
learning rate 1e-5 for the CLIP encoders and 5x that (5e-5) for the modules it adds, biases at 2x
without weight decay, weight decay 4e-5 elsewhere, 5 warm-up epochs from 0.1x, then a cosine to 0;
60 epochs of batch 128, 384x128 images, 77 text tokens; flip, pad-and-crop and random erasing.
DSSL's stage 1 (heads only, encoders frozen) stays, shortened to 5 epochs; IRRA's 60 epochs are
stage 2.
"""
from dssl_jax.configs import base


def get_config():
  config = base.get_config()
  config.data.name = 'cuhk_pedes'
  config.data.max_words = 77
  config.data.augment = ('flip', 'crop', 'erase')  # IRRA's (its datasets/build.py transforms)
  config.model.backbone = 'clip'
  config.model.embed_dim = 1024
  t = config.train
  t.batch_size = 128
  t.stage1_epochs, t.stage2_epochs = 5, 60
  t.stage1_lr = 5e-5
  t.stage2_lr = 5e-5  # the heads'; the encoders' is encoder_lr_factor x this = 1e-5
  t.encoder_lr_factor = 0.2
  t.bias_lr_factor = 2.0
  t.weight_decay = 4e-5
  t.stage2_schedule = 'cosine'
  t.warmup_epochs, t.warmup_factor = 5, 0.1
  return config
