"""The benchmark prints one JSON line per figure, with plausible values; the train step and the
encoders are timed where TensorFlow, TFDS, nltk, clu, tqdm and torch cannot be imported."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import BLOCK_DATA_STACK, needs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ['--config.data.image_size=(64,32)', '--config.model.depth=18', '--config.model.width=8',
        '--config.model.embed_dim=32', '--config.model.word_dim=16', '--config.model.gn_groups=4',
        '--config.data.max_words=10', '--config.data.max_phrases=4', '--vocab=50', '--classes=7']


# python -c WITHOUT_DATA_STACK ARGS: the benchmark where TensorFlow & co. cannot be imported.
WITHOUT_DATA_STACK = BLOCK_DATA_STACK + """
import runpy
runpy.run_module('benchmarks.benchmark', run_name='__main__', alter_sys=True)
"""


def _run(*args, config=('--config=configs/synthetic.py', *TINY), data_stack=True):
  start = ['-m', 'benchmarks.benchmark'] if data_stack else ['-c', WITHOUT_DATA_STACK]
  return subprocess.run([sys.executable, *start, *config, *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)


def _bench(*args, **kwargs):
  out = _run(*args, **kwargs)
  assert out.returncode == 0, out.stderr[-3000:]
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]


@pytest.mark.slow
def test_train_and_eval_figures_without_tensorflow():
  blocked = subprocess.run(
      [sys.executable, '-c', BLOCK_DATA_STACK + 'import dssl_jax.data.pipeline'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert blocked.returncode == 1 and 'tensorflow: blocked by the test' in blocked.stderr
  stage1, stage2, encode, rank, ranking = _bench(
      '--what=train,eval,ranking', '--batch=4', '--reps=1', '--gallery=3000', '--queries=4000',
      data_stack=False)
  assert (stage1['what'], stage2['what']) == ('train_stage1', 'train_stage2')
  for record in (stage1, stage2):
    assert record['images_per_s'] > 0 and record['compile_s'] > 0 and record['peak_rss_gb'] > 0
  assert stage1['gflop_per_step'] < stage2['gflop_per_step']  # no backbone backward in stage 1
  assert encode['what'] == 'eval_encode' and encode['batch'] == 4
  assert encode['images_per_s'] > 0 and encode['queries_per_s'] > 0
  assert (rank['gallery'], rank['queries']) == (3000, 4000) and rank['similarity_s'] >= 0
  for stage in ('metrics', 'rerank', 'image_to_text'):
    assert ranking[f'{stage}_s'] > 0
    # Rows a chunk at a time: far below the 46 MB similarity matrix (a full argsort: 92 MB).
    assert 0 < ranking[f'{stage}_peak_mb'] < ranking['similarity_mb'], stage


@pytest.mark.slow
def test_step_ops_counts_the_gru_loop_per_word():
  """Eight more words: one more iteration of the bi-GRU's loop (unrolled 8 words per iteration,
  both directions in it), forward and backward, lowered for a GPU or the CPU."""
  counts = {}
  for words in (16, 24):
    records = _bench('--what=step_ops', '--batch=4', f'--config.data.max_words={words}')
    assert [(r['step'], r['lowered_for']) for r in records] == [
        ('dssl_stage2', 'cuda'), ('reference_image', 'cuda'), ('dssl_stage2', 'cpu'),
        ('reference_image', 'cpu')]
    for dssl_step, reference in (records[:2], records[2:]):
      assert reference['loop_iterations'] == 0 and 0 < reference['ops'] < dssl_step['ops']
    counts[words] = records
  for row in (0, 2):
    assert counts[24][row]['loop_iterations'] - counts[16][row]['loop_iterations'] == 2
    assert counts[24][row]['ops'] > counts[16][row]['ops']
  # On the CPU, each threefry hash of the step's random draws is a loop of 5 iterations.
  assert counts[16][2]['loop_iterations'] > counts[16][0]['loop_iterations']


def test_gru_figures_fall_with_the_unroll_and_rise_with_a_loop_per_direction():
  """16 words and 8-word phrases, forward and backward: unroll u leaves 2 x 16 / u iterations for
  the sentences and 2 x 8 / u for the phrases, which unroll 8 runs with no loop."""
  records = {r['form']: r for r in _bench('--what=gru', '--batch=2', '--reps=1',
                                          '--config.data.max_words=16')}
  assert list(records) == [f'one_loop_unroll_{u}' for u in (1, 2, 4, 8, 16)] + [
      'loop_per_direction']
  assert [records[f'one_loop_unroll_{u}']['loop_iterations'] for u in (2, 4, 8)] == [16 + 8, 8 + 4, 4]
  assert records['loop_per_direction']['loop_iterations'] == 2 * (2 * 16 + 2 * 8)
  assert records['loop_per_direction']['ops'] > records['one_loop_unroll_1']['ops']
  assert all(r['step_s'] > 0 for r in records.values())


def test_search_figures():
  record, _ = _bench('--what=search', '--index_size=300', '--candidates=50')
  assert (record['index_size'], record['candidates'], record['queries']) == (300, 50, 1)
  assert record['two_stage_s_per_query'] > 0 and record['exact_s_per_query'] > 0
  assert 0 < record['first_stage_mb'] < record['index_mb']


@pytest.mark.slow
def test_prepare_input_and_test_eval_figures_of_a_generated_dataset(tmp_path):
  data = [f'--config.data.data_dir={tmp_path}', '--config.data.synthetic.identities=12',
          '--config.data.synthetic.images_per_identity=2', '--config.data.synthetic.image_size=(96,32)',
          '--config.train.batch_size=4', '--config.eval.batch_size=8']
  prepare, *inputs, test = _bench('--what=prepare,input,test_eval', '--batches=3', '--reps=1',
                                  '--input_threads=1,2', *data)
  # 12 identities: 6 train, 1 val, 5 test (configs/synthetic.py), 2 images and 4 captions each.
  assert (prepare['images'], prepare['captions']) == (24, 48)
  assert prepare['generate_s'] > 0 and prepare['build_images_per_s'] > 0
  paths = ('memory', 'disk', 'none', 'host_memory', 'host_none')
  assert [(r['path'], r['threads']) for r in inputs] == [(p, n) for p in paths for n in (1, 2)]
  for record in inputs:
    assert (record['batch'], record['pairs']) == (4, 12)
    assert record['pairs_per_s_per_core'] == pytest.approx(
        record['pairs_per_s'] / record['threads'], abs=0.1)
    # uint8 at the train size (64x32) to the device; the host path sends float32.
    pixels = 64 * 32 * 3
    assert record['image_bytes'] == pixels * (4 if record['path'].startswith('host') else 1)
    assert record['batch_bytes'] > 4 * record['image_bytes'] and record['copy_ms_per_step'] > 0
  assert list(tmp_path.glob('**/train_inputs/images_64x32_0of1.npy'))  # the disk path's copy
  assert (test['images'], test['queries']) == (10, 20)
  assert test['encode_images_s'] > 0 and test['total_s'] >= test['encode_images_s']
  out = _run('--what=prepare', *data)
  assert out.returncode == 1 and 'is already built: delete it' in out.stderr.splitlines()[-1]


@pytest.mark.slow
@needs('torch', 'torchvision')
def test_reference_times_the_same_model_in_jax_and_torch():
  records = _bench('--what=reference', '--config.model.width=64', '--batch=4', '--reps=1')
  assert [(r['what'], r['framework'].split()[0]) for r in records] == [
      (f'reference_{part}', framework) for part in ('image', 'text', 'both')
      for framework in ('jax', 'torch')]
  for jax_record, torch_record in zip(records[::2], records[1::2]):
    assert jax_record['step_s'] > 0 and torch_record['step_s'] > 0
    assert torch_record['jax_speed_vs_torch'] == pytest.approx(
        torch_record['step_s'] / jax_record['step_s'], rel=0.02, abs=0.01)


@pytest.mark.slow
@needs('torch', 'open_clip')
def test_clip_reference_times_the_same_encoders_in_jax_and_open_clip():
  jax_record, torch_record = _bench('--what=clip_reference', '--batch=4', '--reps=1', '--classes=7',
                                    config=('--config=configs/synthetic_clip_tiny.py',))
  assert (jax_record['framework'].split()[0], torch_record['framework'].split()[0]) == ('jax',
                                                                                       'torch')
  assert jax_record['params'] == torch_record['params']  # the same encoders and classifier
  assert torch_record['jax_speed_vs_torch'] == pytest.approx(
      torch_record['step_s'] / jax_record['step_s'], rel=0.02, abs=0.01)


def test_bad_requests_are_one_line():
  for args, message in ((['--what=reference'], 'error: --what=reference compares with torchvision'),
                        (['--what=train,fast'], 'error: --what: unknown fast')):
    out = _run(*args)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(message)
