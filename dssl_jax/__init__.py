"""dssl_jax: DSSL (ACM MM 2021) text-based person retrieval in JAX/Flax."""
