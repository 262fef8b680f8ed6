"""Importing dssl_jax sets XLA's flags for the jaxlibs they were checked with; a user's own value
of a flag wins, and jax computes with them."""
import os
import subprocess
import sys

import dssl_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRITON = '--xla_gpu_enable_triton_gemm'
YNN = '--xla_cpu_experimental_ynn_fusion_type'
SHOW_FLAGS_AND_COMPUTE = """
import os, dssl_jax
print(os.environ.get('XLA_FLAGS', ''))
import jax, jax.numpy as jnp
x = jnp.arange(12.).reshape(3, 4)
print(float(jax.jit(lambda a: (a @ a.T).sum())(x)))
"""


def _import_dssl_jax(xla_flags=None) -> tuple[str, float]:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  out = subprocess.run([sys.executable, '-c', SHOW_FLAGS_AND_COMPUTE], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  flags, total = out.stdout.strip().splitlines()[-2:]
  return flags, float(total)


def test_the_tested_jaxlibs_get_the_triton_gemm_flag_and_jax_computes_with_it():
  assert dssl_jax._jaxlib_version() in ('0.10.2', '0.11.2')  # the two tested sets
  flags, total = _import_dssl_jax()
  assert f'{TRITON}=false' in flags.split() and f'{YNN}=-individual_convolution' in flags.split()
  assert total == 12**2 + 15**2 + 18**2 + 21**2  # (x @ x.T).sum(): the squared column sums


def test_a_users_own_value_wins_and_the_rest_is_kept():
  flags, _ = _import_dssl_jax(f'{TRITON}=true --xla_dump_to=/tmp/nowhere')
  assert f'{TRITON}=true' in flags.split() and f'{TRITON}=false' not in flags
  assert '--xla_dump_to=/tmp/nowhere' in flags.split()


def test_each_flag_only_for_the_jaxlibs_it_was_checked_with():
  add = dssl_jax.with_default_xla_flags
  assert add('', '0.10.2').split() == [f'{YNN}=-individual_convolution', f'{TRITON}=false']
  assert add('', '0.11.2').split() == [f'{YNN}=-individual_convolution', f'{TRITON}=false']
  assert add('--xla_foo=1', '0.12.0') == '--xla_foo=1'  # an unchecked jaxlib: nothing added
  assert add(f'{YNN}=x', '0.10.2').split() == [f'{YNN}=x', f'{TRITON}=false']
