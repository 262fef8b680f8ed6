"""The base of every config: the paper's defaults (section 4.1.2), field by field in
dssl_jax/defaults.py. Dataset configs import this and override a few fields."""
from dssl_jax.defaults import get_config  # pylint: disable=unused-import
