"""Benchmarks that print figures (JSON lines): train steps, evaluation, input pipeline, search.

  python -m benchmarks.benchmark --config configs/cuhk.py --what train,reference [--batch 32]
  python -m benchmarks.benchmark --config configs/cuhk_clip.py --what train,clip_reference

train: stage-1 and stage-2 step time on random data of the config's shapes (no dataset needed),
compile time, FLOPs per step from XLA's cost analysis and the FLOP/s achieved. step_ops: executed
ops and sequential loop iterations per step of DSSL's stage-2 step and of the plain ResNet's image
step, counted on the compiled programs (benchmarks/hlo_ops.py), lowered for a GPU and for the CPU.
gru: the bi-GRU's gradient per loop unroll, timed, and counted as step_ops. reference: the same
plain model (ResNet + bi-GRU + ID and ranking losses, Adam) timed in JAX and in PyTorch
(benchmarks/torch_reference.py, a child process), per branch and whole, with the ratio.
clip_reference: the same for the CLIP encoders of config.model.clip (ID and contrastive losses,
Adam) against open_clip's, at the config's image size and max_words tokens. eval_encode: gallery
and query encoding rates; eval: those, and Sim_TI on random features of CUHK-PEDES test size.
ranking: metrics, the texts' nearest neighbours (a [Q, Q] matmul), re-ranking + its metrics and
image-to-text metrics of a random similarity matrix (--gallery x --queries): time, and peak memory
beyond the matrix.
input: the train pipeline alone, per path (decoded images in memory, on disk, or decoded each
epoch; augmented in the step or in tf.data), with the bytes and host-to-device copy of a batch
(needs the built dataset). search: query latency on a random index, two stages and exact.
prepare: generating (synthetic) and building the config's dataset. test_eval: the final
evaluation of the built dataset's test split with a random model.
Warm-up excluded; medians. Set JAX_NUM_CPU_DEVICES=N to time N virtual CPU devices. peak_rss_gb
is the process's: run one --what per command to read it per stage. train, eval_encode, eval and
ranking need neither TensorFlow nor a dataset: they run where only jax, flax, optax, orbax,
ml-collections, absl and numpy are installed (a GPU machine's JAX, for instance).
"""
import functools
import itertools
import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from dssl_jax import cli, evaluate, rerank, train
from dssl_jax import metrics as metrics_lib
from dssl_jax import similarity as similarity_lib
from dssl_jax import state as state_lib
from dssl_jax.data import formats
from dssl_jax.errors import UserError
from dssl_jax.models import dssl
from dssl_jax.models import text as text_lib
from benchmarks import hlo_ops, reference_models
from benchmarks.timing import median_seconds, peak_megabytes

WHAT = ('train', 'step_ops', 'gru', 'reference', 'clip_reference', 'eval', 'eval_encode', 'ranking',
        'input', 'search', 'prepare', 'test_eval')
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cuhk.py; override '
                                'fields with --config.a.b=value.', lock_config=True)
flags.DEFINE_list('what', ['train'], f'What to time, one or several of {",".join(WHAT)}.')
flags.DEFINE_integer('batch', 0, 'Batch size (default: config.train.batch_size).')
flags.DEFINE_integer('reps', 3, 'Timed repetitions after one warm-up.')
flags.DEFINE_integer('vocab', 5000, 'Vocabulary size of the random data (CUHK-PEDES: ~5,000).')
flags.DEFINE_integer('classes', 11003, 'Train identities (CUHK-PEDES: 11,003).')
flags.DEFINE_integer('gallery', 3074, 'Gallery size for --what=eval (CUHK-PEDES test).')
flags.DEFINE_integer('queries', 6156, 'Query count for --what=eval (CUHK-PEDES test).')
flags.DEFINE_integer('index_size', 100_000, 'Indexed images for --what=search (random features).')
flags.DEFINE_integer('candidates', 1000, 'Images per query that the first search stage passes '
                     'to the full Sim_TI (--what=search).')
flags.DEFINE_string('scratch', None, 'Folder for the temporary --what=search index.')
flags.DEFINE_integer('batches', 0, 'Batches per timed pass of --what=input (0: one epoch).')
flags.DEFINE_list('input_threads', ['1', '2'], 'Threads of the --what=input passes, one pass '
                  'each.')
flags.DEFINE_list('input_paths', ['memory', 'disk', 'none', 'host_memory', 'host_none'],
                  'Train input paths of --what=input: cache_decoded memory, disk or none (uint8, '
                  'augmented in the step); host_memory, host_none (augmented in tf.data).')
FLAGS = flags.FLAGS


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _emit(record: dict):
  record |= {'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
             'peak_rss_gb': round(_peak_rss_gb(), 2)}
  print(json.dumps(record), flush=True)


def _model(config):
  return dssl.DSSL(ml_collections.FrozenConfigDict(config.model), FLAGS.vocab, FLAGS.classes)


def _state_and_step(config, model, variables, stage: int, mesh) -> tuple:
  """A replicated train state of `variables` for `stage`, and its jitted step (not donating)."""
  tx = state_lib.make_optimizer(config, stage, steps_per_epoch=1000)
  state = jax.device_put(state_lib.TrainState(
      jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
      tx.init(variables['params']), jax.random.PRNGKey(1)), state_lib.replicated(mesh))
  return state, train.make_train_step(config, model, stage, 1000, mesh, donate=False)


def bench_train(config, batch_size: int, reps: int):
  model, mesh = _model(config), state_lib.make_mesh()
  data_config = config.data
  variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
  batch = train.global_batch(
      formats.random_train_batch(config, FLAGS.vocab, FLAGS.classes, batch_size), mesh)
  params = sum(x.size for x in jax.tree.leaves(variables['params']))
  for stage in (1, 2):
    state, step = _state_and_step(config, model, variables, stage, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    # XLA's cost analysis is of the per-device program: scale to the whole step.
    flops = (compiled.cost_analysis() or {}).get('flops', float('nan')) * jax.device_count()
    seconds = median_seconds(lambda: jax.block_until_ready(compiled(state, batch)), reps)
    _emit({'what': f'train_stage{stage}', 'batch': batch_size,
           'image_size': list(data_config.image_size),
           'backbone': _backbone_name(config.model), 'embed_dim': config.model.embed_dim,
           'params': params,
           'compile_s': round(compile_s, 1), 'step_s': round(seconds, 3),
           'images_per_s': round(batch_size / seconds, 2),
           'gflop_per_step': float(f'{flops / 1e9:.4g}'),
           'achieved_gflops': float(f'{flops / 1e9 / seconds:.4g}')})


def _backbone_name(model) -> str:
  if model.backbone == 'clip':
    return f'clip_vit_w{model.clip.image_width}_l{model.clip.image_layers}_p{model.clip.patch}'
  return f'resnet{model.depth}'


def _torch_records(arguments: list[str]) -> dict:
  """benchmarks.torch_reference's records, by name, run in a child process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-m', 'benchmarks.torch_reference', *arguments],
                          capture_output=True, text=True, check=False, cwd=root)
  if result.returncode:
    raise UserError(f'the PyTorch reference failed (pip install -r requirements-dev.txt?): '
                    f'{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""}')
  return {r['what']: r for r in map(json.loads, result.stdout.splitlines())}


def _reference_step(model, batch: dict, part: str) -> tuple:
  """(the jitted Adam step of a reference_models `model` on `part` of `batch`, its state)."""
  tx = optax.adam(2e-4)
  variables = jax.jit(model.init, static_argnums=2)(jax.random.PRNGKey(0), batch, part)
  state = (variables['params'], variables.get('batch_stats', {}), tx.init(variables['params']))
  return jax.jit(functools.partial(reference_models.train_step, model=model, tx=tx, batch=batch,
                                   part=part)), state


def bench_reference(config, batch_size: int, reps: int, backbone: str = 'resnet'):
  """The same model and step in JAX and PyTorch, per branch and whole: where the time goes.
  backbone 'clip': the CLIP encoders' step against open_clip's (--what=clip_reference)."""
  model_config, data_config = config.model, config.data
  height, width = data_config.image_size
  common = [f'--batch={batch_size}', f'--height={height}', f'--width={width}',
            f'--classes={FLAGS.classes}', f'--max_words={data_config.max_words}', f'--reps={reps}']
  if backbone == 'clip':
    clip_config, parts = model_config.clip, ('clip',)
    torch_records = _torch_records(
        ['--parts=clip', *common, f'--clip_patch={clip_config.patch}',
         f'--clip_image_width={clip_config.image_width}',
         f'--clip_image_layers={clip_config.image_layers}',
         f'--clip_image_heads={clip_config.image_heads}',
         f'--clip_text_width={clip_config.text_width}',
         f'--clip_text_layers={clip_config.text_layers}',
         f'--clip_text_heads={clip_config.text_heads}', f'--clip_embed={clip_config.embed_dim}'])
    model = reference_models.ClipReferenceModel(ml_collections.FrozenConfigDict(model_config),
                                                FLAGS.classes)
    batch = formats.random_batch(config, FLAGS.vocab, FLAGS.classes, batch_size)
    batch['tokens'] = np.where(batch['token_mask'], batch['tokens'], 0)
    batch['tokens'][:, -1] = 49407
  else:
    if model_config.width != 64:
      raise UserError(f'--what=reference compares with torchvision, whose ResNets have width 64: '
                      f'set --config.model.width=64 (config has {model_config.width})')
    parts = ('image', 'text', 'both')
    torch_records = _torch_records(
        [f'--parts={",".join(parts)}', *common, f'--depth={model_config.depth}',
         f'--embed_dim={model_config.embed_dim}', f'--word_dim={model_config.word_dim}',
         f'--vocab={FLAGS.vocab}', f'--max_phrases={data_config.max_phrases}',
         f'--max_phrase_words={data_config.max_phrase_words}'])
    model = reference_models.ReferenceModel(ml_collections.FrozenConfigDict(model_config),
                                            FLAGS.vocab, FLAGS.classes)
    batch = formats.random_batch(config, FLAGS.vocab, FLAGS.classes, batch_size)
  batch = jax.device_put(batch)
  for part in parts:
    step, state = _reference_step(model, batch, part)
    compiled = step.lower(*state).compile()
    seconds = median_seconds(lambda: jax.block_until_ready(compiled(*state)), reps)
    reference = torch_records[f'reference_{part}']
    _emit({'what': f'reference_{part}', 'framework': f'jax {jax.__version__}',
           'batch': batch_size, 'params': sum(x.size for x in jax.tree.leaves(state[0])),
           'step_s': float(f'{seconds:.4g}'),
           'images_per_s': float(f'{batch_size / seconds:.4g}')})
    print(json.dumps(reference | {'jax_speed_vs_torch': round(reference['step_s'] / seconds, 2)}),
          flush=True)


def _lowered_for(platform: str, jitted, *args):
  """`jitted` lowered as XLA is given it for `platform`, whatever this machine is: compiled here,
  it is the program that platform would run, each lax.platform_dependent form included."""
  return jitted.trace(*args).lower(lowering_platforms=(platform,))


def bench_step_ops(config, batch_size: int):
  """Executed ops and sequential loop iterations of one step (benchmarks/hlo_ops.py), counted on
  the programs of DSSL's stage-2 step and of the plain ResNet's image step, lowered for a GPU
  (where the kernels are launched) and for the CPU, both compiled here."""
  mesh = state_lib.make_mesh()
  model = _model(config)
  state, step = _state_and_step(config, model, dssl.init_variables(model, jax.random.PRNGKey(0),
                                                                  config), 2, mesh)
  batch = train.global_batch(
      formats.random_train_batch(config, FLAGS.vocab, FLAGS.classes, batch_size), mesh)
  reference = reference_models.ReferenceModel(ml_collections.FrozenConfigDict(config.model),
                                              FLAGS.vocab, FLAGS.classes)
  reference_step, reference_state = _reference_step(
      reference, formats.random_batch(config, FLAGS.vocab, FLAGS.classes, batch_size), 'image')
  for platform in ('cuda', 'cpu'):
    programs = {'dssl_stage2': _lowered_for(platform, step, state, batch),
                'reference_image': _lowered_for(platform, reference_step, *reference_state)}
    for name, lowered in programs.items():
      _emit({'what': 'step_ops', 'step': name, 'lowered_for': platform, 'batch': batch_size,
             'image_size': list(config.data.image_size), 'backbone': _backbone_name(config.model),
             'augment': list(config.data.augment), 'jax': jax.__version__,
             **hlo_ops.count(lowered.compile().as_text())})


def _gru_per_direction(variables, x, mask, dtype):
  """The bi-GRU as one loop per direction (text.recurrence over one direction at a time): the
  form the model does not keep, timed beside it."""
  params, (count, steps) = variables['params'], mask.shape
  rows = x.transpose(1, 0, 2).reshape(count * steps, -1).astype(dtype)
  mask = mask.T[:, None, :, None]
  states = []
  for d in range(2):
    gates_in = (jnp.matmul(rows, params['input_kernel'][d].astype(dtype),
                           preferred_element_type=jnp.float32) + params['input_bias'][d]
                ).reshape(steps, 1, count, -1)
    if d:  # the backward direction reads a reversed copy
      gates_in, mask = gates_in[::-1], mask[::-1]
    states.append(text_lib.recurrence(gates_in, mask, params['hidden_kernel'][d:d + 1].astype(dtype),
                                      params['hidden_bias'][d:d + 1], 1)[0])
  return jnp.concatenate(states, axis=-1)


def bench_gru(config, batch_size: int, reps: int):
  """The bi-GRU's loop unrolled 1 to 16 steps per iteration, and one loop per direction: a batch's
  sentences and phrases encoded and differentiated, timed here, and its ops and loop iterations
  lowered for a GPU."""
  data_config, hidden = config.data, config.model.embed_dim // 2
  dtype = dssl.compute_dtype(config.model)
  batch = formats.random_train_batch(config, FLAGS.vocab, FLAGS.classes, batch_size)
  words = np.random.default_rng(0).normal(size=(batch_size, data_config.max_words,
                                                config.model.word_dim)).astype(np.float32)
  phrase_words = np.random.default_rng(1).normal(
      size=(batch_size * data_config.max_phrases, batch['phrases'].shape[-1],
            config.model.word_dim)).astype(np.float32)
  phrase_mask = batch['phrase_mask'].reshape(len(phrase_words), -1)
  inputs = (words, batch['token_mask'], phrase_words, phrase_mask)
  variables = text_lib.BiGRU(hidden, dtype).init(jax.random.PRNGKey(0), *inputs[:2])
  forms = {f'one_loop_unroll_{unroll}': text_lib.BiGRU(hidden, dtype, unroll).apply
           for unroll in (1, 2, 4, 8, 16)}
  forms['loop_per_direction'] = functools.partial(_gru_per_direction, dtype=dtype)
  for form, encode in forms.items():
    loss = lambda v, x, m, y, n, encode=encode: encode(v, x, m).sum() + encode(v, y, n).sum()
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 3)))
    seconds = median_seconds(lambda: jax.block_until_ready(grad(variables, *inputs)), reps)
    _emit({'what': 'gru', 'form': form, 'batch': batch_size, 'words': data_config.max_words,
           'phrases': len(phrase_words), 'hidden': hidden, 'step_s': float(f'{seconds:.4g}'),
           **hlo_ops.count(_lowered_for('cuda', grad, variables, *inputs).compile().as_text())})


def bench_eval_encode(config, batch_size: int, reps: int):
  """Images/s and captions/s of the evaluation encoders on random batches (no dataset)."""
  model, mesh = _model(config), state_lib.make_mesh()
  variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
  encoder = evaluate.Encoder(model, mesh)
  batch = formats.random_eval_batch(config, FLAGS.vocab, FLAGS.classes, batch_size)
  images = median_seconds(lambda: encoder.gallery(variables, [batch]), reps)
  texts = median_seconds(lambda: encoder.queries(variables, [batch]), reps)
  _emit({'what': 'eval_encode', 'batch': batch_size, 'images_per_s': round(batch_size / images, 1),
         'queries_per_s': round(batch_size / texts, 1)})


def bench_similarity(config):
  """Sim_TI of random features of CUHK-PEDES test size (--gallery x --queries)."""
  rng = np.random.default_rng(0)
  p, k, n = config.model.embed_dim, config.model.num_strips, config.data.max_phrases
  gallery = {'V_P': rng.normal(size=(FLAGS.gallery, p)).astype(np.float32),
             'V_L': rng.normal(size=(FLAGS.gallery, k, p)).astype(np.float32)}
  queries = {'T_P': rng.normal(size=(FLAGS.queries, p)).astype(np.float32),
             'T_L': rng.normal(size=(FLAGS.queries, n, p)).astype(np.float32),
             'phrase_valid': np.arange(n) < rng.integers(1, n + 1, FLAGS.queries)[:, None]}
  sim_s = median_seconds(lambda: similarity_lib.similarity(gallery, queries,
                                                     *similarity_lib.sim_ti_weights(config)), 1)
  _emit({'what': 'eval_similarity', 'gallery': FLAGS.gallery, 'queries': FLAGS.queries,
         'embed_dim': p, 'similarity_s': round(sim_s, 2)})


def bench_ranking(config):
  """Metrics and re-ranking (+ its metrics) of a random [queries, gallery] similarity (3 images per
  person), with the peak memory each needs beyond that matrix."""
  rng = np.random.default_rng(0)
  sim = rng.random((FLAGS.queries, FLAGS.gallery), np.float32)
  gallery_ids = np.arange(FLAGS.gallery) // 3
  query_ids = rng.choice(gallery_ids, FLAGS.queries)
  texts = rng.normal(size=(FLAGS.queries, config.model.embed_dim)).astype(np.float32)
  texts /= np.linalg.norm(texts, axis=1, keepdims=True)
  neighbours = rerank.nearest_texts(texts, config.eval.rerank_k_near)
  stages = {
      'metrics': lambda: metrics_lib.retrieval_metrics(sim, query_ids, gallery_ids),
      'text_neighbours': lambda: rerank.nearest_texts(texts, config.eval.rerank_k_near),
      'rerank': lambda: metrics_lib.retrieval_metrics(
          sim, query_ids, gallery_ids, rerank.rerank(sim, neighbours, config.eval.rerank_k1)),
      'image_to_text': lambda: metrics_lib.retrieval_metrics(sim.T, gallery_ids, query_ids)}
  record = {'what': 'ranking', 'gallery': FLAGS.gallery, 'queries': FLAGS.queries,
            'similarity_mb': round(sim.nbytes / 2**20)}
  for name, fn in stages.items():
    record[f'{name}_s'] = round(median_seconds(fn, FLAGS.reps), 2)
    record[f'{name}_peak_mb'] = round(peak_megabytes(fn), 1)
  _emit(record)


def _input_pass(train_input, batches: int, reps: int) -> tuple[int, dict, float]:
  """(pairs, last batch, median seconds) of a pass over `batches` batches (0: one epoch)."""
  passes = []

  def one_pass():
    pairs, batch = 0, None
    for batch in itertools.islice(train_input.epoch(len(passes)), batches or None):
      pairs += len(batch['image'])
    passes.append((pairs, batch))
  seconds = median_seconds(one_pass, reps)
  return *passes[-1], seconds


def bench_input(config, reps: int, batches: int, threads: list[int], paths: list[str]):
  """The train pipeline alone, for each of `paths` on each of `threads` threads
  (config.data.input_threads; 0: tf.data's pool over every core). Paths: 'memory', 'disk', 'none'
  (TrainInput's uint8 batches from config.data.cache_decoded's places); 'host_memory',
  'host_none' (HostAugmentedInput: augmented, normalized float32 from tf.data). Also a batch's
  bytes and its host-to-device copy (train.global_batch); the once-per-dataset setup (decoding,
  caption ids) is timed apart."""
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  meta, mesh = pipeline.dataset_meta(config.data), state_lib.make_mesh()
  for path, n in itertools.product(paths, threads):
    run = config.copy_and_resolve_references()
    run.data.input_threads = n
    host = path.startswith('host_')
    run.data.augment_on, run.data.cache_decoded = ('host', path[5:]) if host else ('device', path)
    start = time.perf_counter()
    train_input = pipeline.train_input(run, meta)
    setup_s = time.perf_counter() - start
    pairs, batch, seconds = _input_pass(train_input, batches, reps)
    copy_s = median_seconds(lambda b=batch: jax.block_until_ready(train.global_batch(b, mesh)), 10)
    cores = n or os.cpu_count()
    _emit({'what': 'input', 'path': path, 'backbone': run.model.backbone,
           'image_size': list(run.data.image_size), 'augment': list(run.data.augment),
           'threads': cores, 'batch': len(batch['image']), 'pairs': pairs,
           'pairs_per_s': round(pairs / seconds, 1),
           'pairs_per_s_per_core': round(pairs / seconds / cores, 1),
           'batch_bytes': sum(x.nbytes for x in batch.values()),
           'image_bytes': batch['image'].nbytes // len(batch['image']),
           'copy_ms_per_step': round(copy_s * 1e3, 3), 'setup_s': round(setup_s, 1)})


def bench_prepare(config):
  """Generating a synthetic dataset's files (if not there yet) and the TFDS build, timed apart."""
  from dssl_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  builder = builders.get_builder(d)
  if builder.is_prepared():
    raise UserError(f'{builder.data_dir} is already built: delete it (or set '
                    'config.data.data_dir to an empty folder) to time the build')
  start = time.perf_counter()
  generated = builders.generate_synthetic(d)
  generate_s = time.perf_counter() - start if generated else None
  start = time.perf_counter()
  builders.prepare(d)
  build_s = time.perf_counter() - start
  kept = pipeline.dataset_meta(d).kept
  images = sum(split['images'] for split in kept.values())
  _emit({'what': 'prepare', 'dataset': d.name, 'images': images,
         'captions': sum(split['captions'] for split in kept.values()),
         'generate_s': generate_s and round(generate_s, 1), 'build_s': round(build_s, 1),
         'build_images_per_s': round(images / build_s, 1)})


def bench_test_eval(config):
  """config.eval.split of the built dataset through a randomly initialised model of the config:
  encoding, Sim_TI, metrics and re-ranking, as the final evaluation runs them."""
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  meta = pipeline.dataset_meta(config.data)
  model = dssl.DSSL(ml_collections.FrozenConfigDict(config.model), meta.vocab_size,
                    meta.num_train_identities)
  split = config.eval.split
  variables = dssl.init_variables(model, jax.random.PRNGKey(0), config)
  encoder = evaluate.Encoder(model, state_lib.make_mesh())
  result = evaluate.evaluate_split(encoder, variables, config, meta, split)
  seconds = result.seconds
  start = time.perf_counter()
  evaluate.reranked_metrics(result, config.eval.rerank_k1, config.eval.rerank_k_near)
  seconds['rerank'] = time.perf_counter() - start
  images, queries = len(result.gallery['person_id']), len(result.queries['person_id'])
  _emit({'what': 'test_eval', 'split': split, 'images': images, 'queries': queries,
         'images_per_s': round(images / seconds['encode_images'], 1),
         'queries_per_s': round(queries / seconds['encode_queries'], 1),
         **{f'{name}_s': round(value, 1) for name, value in seconds.items()},
         'total_s': round(sum(seconds.values()), 1)})


def bench_search(config, size: int, shard_size: int = 50_000):
  """Query latency over `size` indexed images (random features in the index's format): two stages
  (--candidates) and the exact scan, warm page cache."""
  from dssl_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  embed_dim, strips = config.model.embed_dim, config.model.num_strips
  phrases = config.data.max_phrases
  folder = tempfile.mkdtemp(prefix='dssl_search_', dir=FLAGS.scratch)
  rng = np.random.default_rng(0)
  try:
    start, shards = time.perf_counter(), []
    for number, first in enumerate(range(0, size, shard_size)):
      count = min(shard_size, size - first)
      shards.append(index_lib.write_shard(
          folder, f'shard_{number:05d}', [f'{i:08d}.jpg' for i in range(first, first + count)],
          rng.standard_normal((count, embed_dim), np.float32),
          rng.standard_normal((count, strips, embed_dim), np.float32).astype(np.float16)))
    with open(os.path.join(folder, index_lib.MANIFEST), 'w') as f:
      json.dump({'version': index_lib.VERSION, 'fingerprint': {}, 'images': '',
                 'shards': shards}, f)
    build_s = time.perf_counter() - start
    index = index_lib.Index(folder)
    size_mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
    first_stage_mb = sum(index.array(s, 'V_P').nbytes for s in range(len(shards))) / 2**20
    for count in (1, 10):
      queries = {'T_P': rng.standard_normal((count, embed_dim), np.float32),
                 'T_L': rng.standard_normal((count, phrases, embed_dim), np.float32),
                 'phrase_valid': np.arange(phrases) < rng.integers(1, phrases + 1, count)[:, None]}
      weights = similarity_lib.sim_ti_weights(config)
      run = lambda m: index_lib.search(index, queries, 10, *weights, m)
      two_stage = median_seconds(lambda: run(FLAGS.candidates), 1)
      exact = median_seconds(lambda: run(None), 1)
      _emit({'what': 'search', 'index_size': size, 'queries': count, 'embed_dim': embed_dim,
             'candidates': FLAGS.candidates, 'two_stage_s_per_query': round(two_stage / count, 3),
             'exact_s_per_query': round(exact / count, 3), 'index_mb': round(size_mb, 2),
             'first_stage_mb': round(first_stage_mb, 2), 'write_random_index_s': round(build_s, 1)})
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def main(argv):
  del argv
  cli.quiet_logging()
  config = FLAGS.config
  batch = FLAGS.batch or config.train.batch_size
  unknown = set(FLAGS.what) - set(WHAT)
  if unknown:
    cli.fail(f'--what: unknown {",".join(sorted(unknown))} (choose from {",".join(WHAT)})')
  try:
    for what in FLAGS.what:
      if what == 'train':
        bench_train(config, batch, FLAGS.reps)
      elif what == 'step_ops':
        bench_step_ops(config, batch)
      elif what == 'gru':
        bench_gru(config, batch, FLAGS.reps)
      elif what == 'reference':
        bench_reference(config, batch, FLAGS.reps)
      elif what == 'clip_reference':
        bench_reference(config, batch, FLAGS.reps, backbone='clip')
      elif what in ('eval', 'eval_encode'):
        bench_eval_encode(config, FLAGS.batch or config.eval.batch_size, FLAGS.reps)
        if what == 'eval':
          bench_similarity(config)
      elif what == 'ranking':
        bench_ranking(config)
      elif what == 'search':
        bench_search(config, FLAGS.index_size)
      elif what == 'prepare':
        bench_prepare(config)
      elif what == 'test_eval':
        bench_test_eval(config)
      else:
        bench_input(config, FLAGS.reps, FLAGS.batches, [int(n) for n in FLAGS.input_threads],
                    FLAGS.input_paths)
  except UserError as error:
    cli.fail(str(error))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
