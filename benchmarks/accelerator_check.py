"""One machine's figures for the paper-size runs: the stage-2 train step of DSSL on ResNet-50
(configs/cuhk.py) and on CLIP ViT-B/16 (configs/cuhk_clip.py) at 384x128, at batch 32, 64 and 128,
in float32 and bfloat16, and the evaluation encoders; one JSON file and one markdown table.

  launch/accelerator_check.sh [--out DIR] [--peak_tflops 989] [--budget_s 420]
  launch/accelerator_check.sh --quick     # tiny models on a CPU, the same code paths: a minute

Per row: step time and images/s (medians after a warm-up), compile time, GFLOP per step from XLA's
cost analysis, MFU (those FLOPs per second over --peak_tflops, the chip's dense bfloat16 peak, for
every dtype), XLA's memory estimate of the compiled step and the device's peak memory so far.
Random batches of the configs' shapes: no dataset, and only jax, flax, optax, orbax-checkpoint,
ml-collections, absl and numpy are imported (no TensorFlow). Rows are measured most important
first; once --budget_s has passed, the rest are listed as skipped, so the check ends in time.
"""
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import ml_collections

from benchmarks.timing import median_seconds
from configs import cuhk, cuhk_clip
from dssl_jax import cli, evaluate, train
from dssl_jax.data import formats
from dssl_jax.models import dssl

flags.DEFINE_bool('quick', False, 'Tiny models at 64x32, batch 4: a CPU smoke test.')
flags.DEFINE_string('out', 'accelerator_check', 'Folder for accelerator_check.json and .md.')
flags.DEFINE_float('peak_tflops', 0.0, "The chip's dense bfloat16 peak in TFLOP/s (H100 SXM: "
                   '989; 0: no MFU column).')
flags.DEFINE_list('batches', [], 'Batch sizes (default 32,64,128; --quick: 4).')
flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'Compute dtypes (config.model.dtype).')
flags.DEFINE_integer('reps', 5, 'Timed steps after one warm-up (--quick: 1).')
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


def _timed(compiled, *args, reps: int) -> float:
  return median_seconds(lambda: jax.block_until_ready(compiled(*args)), reps)


def train_row(name: str, config, batch: int, reps: int, peak_tflops: float) -> dict:
  """The stage-2 step (the full loss, everything trained) of `config` at `batch`."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), VOCAB, CLASSES)
  mesh = train.make_mesh()
  state = train.start_stage(train.create_train_state(config, model, mesh), config, 2, mesh)
  data = train.global_batch(formats.random_batch(config, VOCAB, CLASSES, batch), mesh)
  start = time.perf_counter()
  compiled = train.make_train_step(config, model, 2, 1000, mesh, donate=False).lower(
      state, data).compile()
  compile_s = time.perf_counter() - start
  flops = (compiled.cost_analysis() or {}).get('flops', float('nan')) * jax.device_count()
  seconds = _timed(compiled, state, data, reps=reps)
  row = {'what': 'train_stage2', 'model': name, 'dtype': config.model.dtype, 'batch': batch,
         'image_size': list(config.data.image_size), 'compile_s': round(compile_s, 1),
         'step_s': round(seconds, 4), 'images_per_s': round(batch / seconds, 1),
         'gflop_per_step': float(f'{flops / 1e9:.4g}')}
  if peak_tflops:
    row['mfu'] = round(flops / seconds / (peak_tflops * 1e12), 4)
  return row | _memory(compiled)


def encode_row(name: str, config, batch: int, reps: int) -> dict:
  """Images/s and captions/s of the evaluation encoders (gallery and query features)."""
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), VOCAB, CLASSES)
  variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
  encoder = evaluate.Encoder(model, train.make_mesh())
  data = formats.random_eval_batch(config, VOCAB, CLASSES, batch)
  images = median_seconds(lambda: encoder.gallery(variables, [data]), reps)
  texts = median_seconds(lambda: encoder.queries(variables, [data]), reps)
  return {'what': 'eval_encode', 'model': name, 'dtype': config.model.dtype, 'batch': batch,
          'images_per_s': round(batch / images, 1), 'captions_per_s': round(batch / texts, 1)}


def plan(quick: bool, batches: list[int], dtypes: list[str]) -> list[tuple]:
  """(kind, model name, config, batch), the most telling first: bfloat16 before float32, the
  paper's batch 32 and IRRA's 128 before 64."""
  order = sorted(batches, key=lambda b: (b not in (32, 128, 4), b))
  rows = []
  for dtype in dtypes:
    for name, config in backbone_configs(quick).items():
      config.model.dtype = dtype
      rows += [('train', name, config.copy_and_resolve_references(), b) for b in order]
      rows.append(('encode', name, config.copy_and_resolve_references(), max(batches)))
  return rows


def markdown(machine: dict, rows: list[dict], skipped: list[str]) -> str:
  columns = ['model', 'dtype', 'batch', 'step_s', 'images_per_s', 'compile_s', 'gflop_per_step',
             'mfu', 'xla_memory_gb', 'device_peak_gb']
  lines = [f'# Accelerator check: {machine["device"]} x {machine["devices"]}', '',
           f'jax {machine["jax"]}, {machine["date"]}. Stage-2 train step (random batches, '
           'medians); MFU against --peak_tflops ' + (f'{machine["peak_tflops"]:g}' if
                                                       machine['peak_tflops'] else '(not given)')
           + '.', '', '| ' + ' | '.join(columns) + ' |', '|---' * len(columns) + '|']
  for r in rows:
    if r['what'] == 'train_stage2':
      lines.append('| ' + ' | '.join(str(r.get(c, '')) for c in columns) + ' |')
  lines += ['', '| encoders | dtype | batch | images/s | captions/s |', '|---|---|---|---|---|']
  for r in rows:
    if r['what'] == 'eval_encode':
      lines.append(f'| {r["model"]} | {r["dtype"]} | {r["batch"]} | {r["images_per_s"]} | '
                   f'{r["captions_per_s"]} |')
  if skipped:
    lines += ['', f'Skipped (past --budget_s): {", ".join(skipped)}.']
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  cli.quiet_logging()
  start = time.time()
  batches = [int(b) for b in FLAGS.batches] or ([4] if FLAGS.quick else [32, 64, 128])
  reps = 1 if FLAGS.quick else FLAGS.reps
  device = jax.devices()[0]
  machine = {'device': getattr(device, 'device_kind', device.platform), 'devices':
             jax.device_count(), 'platform': device.platform, 'jax': jax.__version__,
             'host': platform.node(), 'date': time.strftime('%Y-%m-%d'),
             'peak_tflops': FLAGS.peak_tflops, 'quick': FLAGS.quick}
  rows, skipped = [], []
  for kind, name, config, batch in plan(FLAGS.quick, batches, FLAGS.dtypes):
    label = f'{kind} {name} {config.model.dtype} batch {batch}'
    if time.time() - start > FLAGS.budget_s:
      skipped.append(label)
      continue
    row = (train_row(name, config, batch, reps, FLAGS.peak_tflops) if kind == 'train'
           else encode_row(name, config, batch, reps))
    rows.append(row)
    print(json.dumps(row), flush=True)
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
