"""dssl_jax: DSSL (ACM MM 2021) text-based person retrieval in JAX/Flax.

    from dssl_jax import Retriever
    retriever = Retriever.from_workdir('runs/cuhk')

Importing the package sets environment variables (TensorFlow's log level, XLA's flags) before jax
and TensorFlow are imported, and imports neither: `dssl_jax.Retriever` loads them on first use.
"""
import importlib.metadata
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ notices
# TensorFlow only reads, decodes and resizes images here: its oneDNN kernels (matmuls,
# convolutions) go unused, and their notice, printed at import, would open every script's output.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# XLA flags set on import, each for the jaxlibs it was checked with: XLA aborts on a flag it does
# not know. A flag the user's XLA_FLAGS already names keeps the user's value. Why each
# (docs/design.md, Engineering):
# - CPU: jaxlibs 0.10.2 and 0.11.2 send every convolution to YNNPACK, whose kernel gradients are
#   slow; keeping them out makes the train step faster on CPU and does nothing elsewhere.
# - GPU: jaxlib 0.11.2's Triton GEMM fusion aborts the process (a failed CHECK in
#   triton_tiling_propagation.cc) while compiling the train step; cuBLAS runs those dots instead.
XLA_FLAGS_BY_JAXLIB = {
    '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution': ('0.10.2', '0.11.2'),
    '--xla_gpu_enable_triton_gemm=false': ('0.10.2', '0.11.2'),
}


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ''


def with_default_xla_flags(xla_flags: str, jaxlib: str) -> str:
  """`xla_flags` (the user's XLA_FLAGS) with each flag of XLA_FLAGS_BY_JAXLIB checked for
  `jaxlib` appended, unless `xla_flags` sets that flag already."""
  for flag, jaxlibs in XLA_FLAGS_BY_JAXLIB.items():
    if jaxlib in jaxlibs and flag.split('=')[0] + '=' not in xla_flags:
      xla_flags = f'{xla_flags} {flag}'.strip()
  return xla_flags


os.environ['XLA_FLAGS'] = with_default_xla_flags(os.environ.get('XLA_FLAGS', ''), _jaxlib_version())
if not os.environ['XLA_FLAGS']:
  del os.environ['XLA_FLAGS']


def __getattr__(name):
  if name == 'Retriever':
    from dssl_jax.retriever import Retriever  # pylint: disable=g-import-not-at-top
    return Retriever
  raise AttributeError(f'module dssl_jax has no attribute {name!r}')
