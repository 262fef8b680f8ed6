"""DSSL's networks: the backbones, the text encoder, the heads of section 3, and the whole model."""
