"""One machine's figures for the paper-size runs: the stage-2 train step of DSSL on ResNet-50
(configs/cuhk.py) and on CLIP ViT-B/16 (configs/cuhk_clip.py) at 384x128, beside the plain
ResNet-50's own step (the backbone row), at batch 32, 128 and 256, in bfloat16 then float32, and
the evaluation encoders; one JSON file and one markdown table.

  launch/accelerator_check.sh [--out DIR] [--peak_tflops 989] [--budget_s 420]
  launch/accelerator_check.sh --quick     # tiny models on a CPU, the same code paths: a minute

Per row:
- step_s: the step as training runs it, `--reps` steps dispatched back to back, each with its
  batch copied to the device and the state donated, one block at the end; step_s_blocking: the
  median of the same steps with a block after each (the host's dispatch then adds to every step);
- GFLOP per step from XLA's cost analysis of the program before backend optimization (the
  compiled GPU program hides convolutions in cuDNN calls, which it does not count), the TFLOP/s
  they make, and MFU against --peak_tflops, the chip's dense bfloat16 peak, for every dtype;
- XLA's memory estimate of the compiled step and the device's peak memory so far.
The backbone row is benchmarks/reference_models.py's image step (ResNet, pooled feature, ID loss,
Adam) in the config's compute dtype: what DSSL's heads, GRU and losses add shows beside it.
Random batches of the configs' shapes: no dataset, and only jax, flax, optax, orbax-checkpoint,
ml-collections, absl and numpy are imported (no TensorFlow). Rows are measured most important
first; once --budget_s has passed, the rest are listed as skipped, so the check ends in time.
"""
import json
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import optax

from benchmarks import reference_models
from benchmarks.timing import median_seconds
from dssl_jax.configs import cuhk, cuhk_clip
from dssl_jax import cli, evaluate, train
from dssl_jax import state as state_lib
from dssl_jax.data import formats
from dssl_jax.models import dssl

flags.DEFINE_bool('quick', False, 'Tiny models at 64x32, batch 4: a CPU smoke test.')
flags.DEFINE_string('out', 'accelerator_check', 'Folder for accelerator_check.json and .md.')
flags.DEFINE_float('peak_tflops', 0.0, "The chip's dense bfloat16 peak in TFLOP/s (H100 and H200 "
                   'SXM: 989; 0: no MFU column).')
flags.DEFINE_list('batches', [], 'Batch sizes (default 32,128,256; --quick: 4).')
flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'Compute dtypes (config.model.dtype).')
flags.DEFINE_integer('reps', 10, 'Timed steps after one warm-up (--quick: 2).')
flags.DEFINE_float('budget_s', 420, 'Start no new row after this many seconds.')
FLAGS = flags.FLAGS

VOCAB, CLASSES = 5000, 11003  # CUHK-PEDES's vocabulary and train identities


def backbone_configs(quick: bool) -> dict:
  """{name: config} of the two paper-size models, or tiny ones of the same code paths."""
  resnet, clip = cuhk.get_config(), cuhk_clip.get_config()
  for config in (resnet, clip):  # random weights: the step costs the same
    config.model.backbone_weights = 'scratch'
  if quick:
    for config in (resnet, clip):
      config.data.image_size, config.data.max_phrases = (64, 32), 4
      config.model.embed_dim, config.model.gn_groups = 32, 4
    resnet.model.update(depth=18, width=8, word_dim=16)
    resnet.data.max_words = 10
    clip.data.max_words = 12
    clip.model.clip.update(image_width=32, image_layers=1, image_heads=2, text_width=32,
                           text_layers=1, text_heads=2, context=12, embed_dim=16)
  return {'resnet50' if not quick else 'resnet18_tiny': resnet,
          'clip_vit_b16' if not quick else 'clip_tiny': clip}


def _memory(compiled) -> dict:
  """XLA's estimate for the compiled program, and the device's peak so far (where it says)."""
  gb = lambda n: round(n / 2**30, 3)
  out = {}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    out['xla_memory_gb'] = gb(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                              + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['device_peak_gb'] = gb(stats['peak_bytes_in_use'])
  return out


def _abstract_on(mesh: jax.sharding.Mesh, tree):
  """Shapes and dtypes of `tree`, replicated over `mesh`'s devices."""
  sharding = state_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def step_flops(make_step, state, host_batch: dict) -> float:
  """FLOPs of one whole step of `make_step`(mesh), from XLA's cost analysis of the program before
  backend optimization. It is lowered for the host's CPU from shapes alone: the CPU's analysis
  counts convolutions, and a GPU's Lowered.cost_analysis() gives no FLOPs (jax 0.11.2)."""
  cpu = jax.sharding.Mesh(np.array(jax.devices('cpu')[:1]), ('data',))
  lowered = make_step(cpu).lower(_abstract_on(cpu, state), _abstract_on(cpu, host_batch))
  return float((lowered.cost_analysis() or {}).get('flops', float('nan')))


def _step_seconds(step, state, host_batch: dict, mesh, reps: int) -> tuple[float, float]:
  """(pipelined, blocking) seconds per step of the donating `step`(state, batch) -> (state, _):
  pipelined as training dispatches steps, blocking as the median of steps blocked one by one."""
  state, _ = step(state, train.global_batch(host_batch, mesh))  # warm-up
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(reps):
    state, out = step(state, train.global_batch(host_batch, mesh))
  jax.block_until_ready((state, out))
  pipelined = (time.perf_counter() - start) / reps
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    state, out = step(state, train.global_batch(host_batch, mesh))
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - start)
  return pipelined, statistics.median(times)


def measure(what: str, name: str, config, make_step, state, host_batch: dict, reps: int,
            peak_tflops: float) -> dict:
  """The row of the donating jitted step `make_step`(mesh)(state, batch) -> (state, _) on
  `host_batch`."""
  mesh, batch = state_lib.make_mesh(), len(host_batch['label'])
  data = train.global_batch(host_batch, mesh)
  flops = step_flops(make_step, state, host_batch)
  start = time.perf_counter()
  compiled = make_step(mesh).lower(state, data).compile()
  compile_s = time.perf_counter() - start
  memory = _memory(compiled)
  seconds, blocking = _step_seconds(compiled, state, host_batch, mesh, reps)
  row = {'what': what, 'model': name, 'dtype': config.model.dtype, 'batch': batch,
         'image_size': list(config.data.image_size), 'compile_s': round(compile_s, 1),
         'step_s': round(seconds, 4), 'step_s_blocking': round(blocking, 4),
         'images_per_s': round(batch / seconds, 1), 'gflop_per_step': float(f'{flops / 1e9:.4g}'),
         'tflops': float(f'{flops / seconds / 1e12:.4g}')}
  if peak_tflops:
    row['mfu'] = round(flops / seconds / (peak_tflops * 1e12), 4)
  return row | memory


def train_step_and_state(config, batch: int) -> tuple:
  """(make_step(mesh), state, host batch): DSSL's stage-2 step (the full loss, everything trained,
  the state donated), its state and a random batch."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), VOCAB, CLASSES)
  mesh = state_lib.make_mesh()
  state = state_lib.start_stage(state_lib.create_train_state(config, model, mesh), config, 2, mesh)
  return (lambda mesh: train.make_train_step(config, model, 2, 1000, mesh), state,
          formats.random_train_batch(config, VOCAB, CLASSES, batch))


def backbone_step_and_state(config, batch: int) -> tuple:
  """(make_step(mesh), state, host batch): the plain ResNet's step (benchmarks/reference_models.py,
  image part: ResNet, pooled feature, ID loss, Adam) in the config's compute dtype, its state
  (params, batch_stats, opt_state), replicated, and a random batch."""
  model = reference_models.ReferenceModel(ml_collections.FrozenConfigDict(config.model), VOCAB,
                                          CLASSES)
  host_batch = formats.random_batch(config, VOCAB, CLASSES, batch)
  tx = optax.adam(2e-4)
  variables = jax.jit(model.init, static_argnums=2)(jax.random.PRNGKey(0), host_batch, 'image')
  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))

  def step(state, batch):
    return reference_models.train_step(*state, model=model, tx=tx, batch=batch, part='image'), ()
  return (lambda mesh: jax.jit(step, donate_argnums=0),
          jax.device_put(state, state_lib.replicated(state_lib.make_mesh())), host_batch)


def encode_row(name: str, config, batch: int, reps: int) -> dict:
  """Images/s and captions/s of the evaluation encoders (gallery and query features)."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), VOCAB, CLASSES)
  variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
  encoder = evaluate.Encoder(model, state_lib.make_mesh())
  data = formats.random_eval_batch(config, VOCAB, CLASSES, batch)
  images = median_seconds(lambda: encoder.gallery(variables, [data]), reps)
  texts = median_seconds(lambda: encoder.queries(variables, [data]), reps)
  return {'what': 'eval_encode', 'model': name, 'dtype': config.model.dtype, 'batch': batch,
          'images_per_s': round(batch / images, 1), 'captions_per_s': round(batch / texts, 1)}


def plan(quick: bool, batches: list[int], dtypes: list[str]) -> list[tuple]:
  """(kind, model name, config, batch), the most telling first: per dtype (bfloat16 first), both
  models at the paper's batch 32 and IRRA's 128, then the larger batches, then the encoders. Each
  ResNet train row follows its backbone row."""
  first = [b for b in batches if b in (4, 32, 128)]
  rounds = [first, [b for b in batches if b not in first]]
  rows = []
  for dtype in dtypes:
    models = {}
    for name, config in backbone_configs(quick).items():
      config.model.dtype = dtype
      models[name] = config.copy_and_resolve_references()
    for batch_round in rounds:
      for name, config in models.items():
        for b in batch_round:
          if config.model.backbone == 'resnet':
            rows.append(('backbone', name, config, b))
          rows.append(('train', name, config, b))
    rows += [('encode', name, config, max(batches)) for name, config in models.items()]
  return rows


def markdown(machine: dict, rows: list[dict], skipped: list[str]) -> str:
  columns = ['model', 'dtype', 'batch', 'step_s', 'step_s_blocking', 'images_per_s',
             'vs_backbone', 'compile_s', 'gflop_per_step', 'tflops', 'mfu', 'xla_memory_gb',
             'device_peak_gb']
  lines = [f'# Accelerator check: {machine["device"]} x {machine["devices"]}', '',
           f'jax {machine["jax"]}, {machine["date"]}. Train steps on random batches: step_s '
           'pipelined as training runs (batch copied, state donated, one block at the end), '
           'step_s_blocking one block per step; vs_backbone: step_s over the backbone row\'s; '
           'GFLOP of the program before backend optimization; MFU against --peak_tflops '
           + (f'{machine["peak_tflops"]:g}' if machine['peak_tflops'] else '(not given)') + '.',
           '', '| ' + ' | '.join(columns) + ' |', '|---' * len(columns) + '|']
  for r in rows:
    if r['what'] in ('train_stage2', 'train_backbone'):
      label = r['model'] + (' backbone' if r['what'] == 'train_backbone' else '')
      lines.append('| ' + ' | '.join([label] + [str(r.get(c, '')) for c in columns[1:]]) + ' |')
  lines += ['', '| encoders | dtype | batch | images/s | captions/s |', '|---|---|---|---|---|']
  for r in rows:
    if r['what'] == 'eval_encode':
      lines.append(f'| {r["model"]} | {r["dtype"]} | {r["batch"]} | {r["images_per_s"]} | '
                   f'{r["captions_per_s"]} |')
  if skipped:
    lines += ['', f'Skipped (past --budget_s): {", ".join(skipped)}.']
  return '\n'.join(lines) + '\n'


def run_row(kind: str, name: str, config, batch: int, reps: int, backbone: dict) -> dict:
  """One row; a train row gets vs_backbone from `backbone`, {(dtype, batch): backbone row}."""
  if kind == 'encode':
    return encode_row(name, config, batch, reps)
  build = backbone_step_and_state if kind == 'backbone' else train_step_and_state
  what = 'train_backbone' if kind == 'backbone' else 'train_stage2'
  row = measure(what, name, config, *build(config, batch), reps, FLAGS.peak_tflops)
  if kind == 'backbone':
    backbone[config.model.dtype, batch] = row
  elif (config.model.dtype, batch) in backbone and config.model.backbone == 'resnet':
    row['vs_backbone'] = round(row['step_s'] / backbone[config.model.dtype, batch]['step_s'], 2)
  return row


def main(argv):
  del argv
  cli.quiet_logging()
  start = time.time()
  batches = [int(b) for b in FLAGS.batches] or ([4] if FLAGS.quick else [32, 128, 256])
  reps = 2 if FLAGS.quick else FLAGS.reps
  device = jax.devices()[0]
  machine = {'device': getattr(device, 'device_kind', device.platform), 'devices':
             jax.device_count(), 'platform': device.platform, 'jax': jax.__version__,
             'xla_flags': os.environ.get('XLA_FLAGS', ''), 'host': platform.node(),
             'date': time.strftime('%Y-%m-%d'), 'peak_tflops': FLAGS.peak_tflops,
             'quick': FLAGS.quick}
  rows, skipped, backbone = [], [], {}
  for kind, name, config, batch in plan(FLAGS.quick, batches, FLAGS.dtypes):
    label = f'{kind} {name} {config.model.dtype} batch {batch}'
    if time.time() - start > FLAGS.budget_s:
      skipped.append(label)
      continue
    rows.append(run_row(kind, name, config, batch, reps, backbone))
    print(json.dumps(rows[-1]), flush=True)
    print(f'[{time.time() - start:.0f}s] {label} done', file=sys.stderr, flush=True)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, 'accelerator_check.json'), 'w') as f:
    json.dump({'machine': machine, 'rows': rows, 'skipped': skipped,
               'seconds': round(time.time() - start, 1)}, f, indent=2)
  table = markdown(machine, rows, skipped)
  with open(os.path.join(FLAGS.out, 'accelerator_check.md'), 'w') as f:
    f.write(table)
  print(table)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
