"""The stages' learning-rate schedules and optimizer groups."""
import jax
import numpy as np
import pytest

from dssl_jax.configs import base
from dssl_jax import state as state_lib
from dssl_jax.errors import UserError
from tests.helpers import leaves


def test_stage2_learning_rate_is_divided_by_10_every_10_epochs():
  schedule = state_lib.stage2_schedule(base.get_config(), steps_per_epoch=100)
  rates = [float(schedule(step)) for step in (0, 999, 1000, 1999, 2000, 2999)]
  np.testing.assert_allclose(rates, [2e-4, 2e-4, 2e-5, 2e-5, 2e-6, 2e-6], rtol=1e-6)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
  config = base.get_config()
  t = config.train
  t.stage2_schedule, t.warmup_epochs, t.warmup_factor, t.stage2_epochs = 'cosine', 5, 0.1, 60
  schedule = state_lib.stage2_schedule(config, steps_per_epoch=10)
  rates = [float(schedule(step)) for step in (0, 25, 50, 325, 600)]
  np.testing.assert_allclose(rates, [2e-5, 1.1e-4, 2e-4, 1e-4, 0.0], rtol=1e-5, atol=1e-12)
  t.stage2_schedule = 'linear'
  with pytest.raises(UserError, match="config.train.stage2_schedule must be 'step' or 'cosine'"):
    state_lib.stage2_schedule(config, 10)


def test_stage2_groups_take_their_rates_and_weight_decay():
  """Adam's first step moves each parameter by its rate x sign(gradient + L2 term): encoders at
  encoder_lr_factor, biases at bias_lr_factor and without decay (IRRA's recipe)."""
  config = base.get_config()
  config.model.backbone = 'clip'
  t = config.train
  t.stage2_lr, t.encoder_lr_factor, t.bias_lr_factor, t.weight_decay = 1e-3, 0.2, 2.0, 0.5
  params = {'backbone': {'kernel': np.full(3, 2.0), 'bias': np.full(3, 2.0)},
            'text': {'kernel': np.full(3, 2.0)}, 'image_global': {'kernel': np.full(3, 2.0),
                                                                   'bias': np.full(3, 2.0)}}
  grads = jax.tree.map(lambda p: np.full_like(p, -0.5), params)  # wd x 2.0 = 1.0 turns the sign
  tx = state_lib.make_optimizer(config, 2, steps_per_epoch=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  steps = {k: float(v[0]) for k, v in leaves(updates).items()}
  np.testing.assert_allclose(
      [steps[k] for k in ('backbone/kernel', 'backbone/bias', 'text/kernel', 'image_global/kernel',
                          'image_global/bias')],
      [-2e-4, 4e-4, -2e-4, -1e-3, 2e-3], rtol=1e-4)
  config.model.backbone = 'resnet'  # the bi-GRU ('text') is trained from scratch: a head's rate
  tx = state_lib.make_optimizer(config, 2, steps_per_epoch=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(leaves(updates)['text/kernel'][0]) == pytest.approx(-1e-3, rel=1e-4)
