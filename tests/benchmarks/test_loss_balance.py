"""Each term's gradient norms are those of that term alone, per parameter group."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import loss_balance
from dssl_jax import losses
from dssl_jax.data.formats import random_batch
from tests.helpers import init_model, tiny_model_config


def _group_norms(grads):
  return {g: float(jnp.sqrt(sum(jnp.sum(x * x) for k, sub in grads.items()
                                if loss_balance.parameter_group(k) == g
                                for x in jax.tree.leaves(sub)))) for g in loss_balance.GROUPS}


@pytest.mark.slow
def test_term_gradients_match_each_term_alone():
  config = tiny_model_config()
  model, variables = init_model(config)
  batch = random_batch(config, 50, 7, batch_size=6)
  rng = jax.random.key(4)
  table = loss_balance.term_gradients(config, variables, batch, rng, model)
  assert set(table) == {'id_V_G', 'id_T_G', 'id_V_P', 'id_T_P', 'id_V_R', 'id_T_R', 'align1',
                        'align2', 'align3', 'align4', 'align5', 'mec', 'sdm'}

  def term(params, name):
    f, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                       train=True, rngs={'sdm': rng}, mutable=['batch_stats'])
    return losses.stage2_loss(f, batch, config)[1][name]

  for name in ('align2', 'mec', 'id_T_G'):
    value, grads = jax.value_and_grad(term)(variables['params'], name)
    np.testing.assert_allclose(table[name]['value'], value, rtol=1e-5)
    for group, norm in _group_norms(grads).items():
      np.testing.assert_allclose(table[name][f'grad_{group}'], norm, rtol=1e-4, atol=1e-7)
  assert table['id_T_G']['grad_backbone'] == 0 and table['mec']['grad_text'] == 0
  assert '| mec |' in loss_balance.markdown(table)
