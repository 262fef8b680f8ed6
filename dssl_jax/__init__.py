"""dssl_jax: DSSL (ACM MM 2021) text-based person retrieval in JAX/Flax.

    from dssl_jax import Retriever
    retriever = Retriever.from_workdir('runs/cuhk')

Importing the package sets two environment variables before jax and TensorFlow are imported, and
imports neither: `dssl_jax.Retriever` loads them on first use.
"""
import importlib.metadata
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ notices

# jaxlib 0.10.2 sends every CPU convolution to YNNPACK, slow for kernel gradients; this flag keeps
# the training step ~2x faster on CPU (docs/design.md) and does nothing elsewhere. XLA aborts on a
# flag it does not know, so it is set only for the jaxlib it was checked with.
CPU_CONVOLUTION_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
CPU_CONVOLUTION_FLAG_JAXLIB = '0.10.2'


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ''


if (_jaxlib_version() == CPU_CONVOLUTION_FLAG_JAXLIB
    and CPU_CONVOLUTION_FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', '')):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + CPU_CONVOLUTION_FLAG).strip()


def __getattr__(name):
  if name == 'Retriever':
    from dssl_jax.retriever import Retriever  # pylint: disable=g-import-not-at-top
    return Retriever
  raise AttributeError(f'module dssl_jax has no attribute {name!r}')
