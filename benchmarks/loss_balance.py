"""How the stage-2 terms (eq. 19-21, eq. 2) weigh against each other: each term's value and the
norm of its own gradient on the backbone, the text encoder and the heads.

  python -m benchmarks.loss_balance --config configs/synthetic.py [--batch 32] [--config.x=y ...]

Random initial parameters and a random batch of the config's shapes (no dataset needed): the state
at the start of stage 2 when nothing has been learnt yet. A term whose gradient is orders of
magnitude above the others decides alone what the shared features become (as the literal MEC did).
Prints a markdown table.
"""
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import optax

from dssl_jax import cli, losses
from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import dssl

FLAGS = flags.FLAGS

GROUPS = ('backbone', 'text', 'heads')  # parameter groups: ResNet, word embedding + bi-GRU, rest


def parameter_group(name: str) -> str:
  return name if name in ('backbone', 'text') else 'heads'


def term_gradients(config: ml_collections.ConfigDict, variables: dict, batch: dict,
                   rng: jax.Array, model: dssl.DSSL) -> dict:
  """{term: {'value', 'grad_backbone', 'grad_text', 'grad_heads'}} for each stage-2 term.

  One compiled gradient of sum_k w_k term_k, run once per one-hot w: one compile, not one per term.
  """
  def terms_fn(params):
    f, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                       train=True, rngs={'sdm': rng}, mutable=['batch_stats'])
    return losses.stage2_loss(f, batch, config)[1]

  names = sorted(jax.eval_shape(terms_fn, variables['params']))

  @jax.jit
  def weighted(params, weights):
    def total(params):
      terms = terms_fn(params)
      return sum(w * terms[n] for w, n in zip(weights, names)), terms
    grads, terms = jax.grad(total, has_aux=True)(params)
    norms = {g: optax.global_norm({k: sub for k, sub in grads.items() if parameter_group(k) == g})
             for g in GROUPS}
    return terms, norms

  table = {}
  for i, name in enumerate(names):
    terms, norms = jax.device_get(weighted(variables['params'], jnp.eye(len(names))[i]))
    table[name] = {'value': float(terms[name])} | {f'grad_{g}': float(norms[g]) for g in GROUPS}
  return table


def markdown(table: dict) -> str:
  total = sum(row['value'] for row in table.values())
  lines = ['| term | value | share of the loss | grad backbone | grad text encoder | grad heads |',
           '|---' * 6 + '|']
  for name, row in table.items():
    lines.append(f'| {name} | {row["value"]:.4g} | {row["value"] / total:.1%} | ' + ' | '.join(
        f'{row[f"grad_{g}"]:.3g}' for g in GROUPS) + ' |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  config = FLAGS.config
  try:
    batch_size = FLAGS.batch or config.train.batch_size
    classes = FLAGS.classes or (11003 if tuple(config.data.image_size) == (384, 128) else 350)
    model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), FLAGS.vocab, classes)
    params_rng, sdm_rng = jax.random.split(jax.random.PRNGKey(FLAGS.seed))
    variables = dssl.init_variables(model, params_rng, config)
    batch = formats.random_batch(config, FLAGS.vocab, classes, batch_size, FLAGS.seed)
    table = term_gradients(config, variables, batch, sdm_rng, model)
  except UserError as e:
    cli.fail(str(e))
  print(markdown(table))


if __name__ == '__main__':  # flags only here: the module's functions are imported elsewhere
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cuhk.py; override '
                                  'fields with --config.a.b=value.', lock_config=True)
  flags.DEFINE_integer('batch', 0, 'Batch size (default: config.train.batch_size).')
  flags.DEFINE_integer('vocab', 5000, 'Vocabulary size of the random batch.')
  flags.DEFINE_integer('classes', 0, 'Train identities (default: 11,003 at the paper sizes, '
                       'i.e. 384x128 images; 350 otherwise, the synthetic default).')
  flags.DEFINE_integer('seed', 0, 'Parameters and batch.')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
