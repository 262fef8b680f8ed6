"""The command line: config overrides, typos, prepare, and one-line errors."""
import importlib
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*overrides):
  argv = ['prog', f'--config={os.path.join(ROOT, "configs", "synthetic.py")}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_overrides_apply_and_typos_are_rejected():
  config = _parse('--config.model.sdm_zero_ratio=0.25', '--config.loss.align4=False',
                  '--config.data.image_size=(96,32)')
  assert config.model.sdm_zero_ratio == 0.25 and config.loss.align4 is False
  assert tuple(config.data.image_size) == (96, 32)
  with pytest.raises(AttributeError, match='sdm_zero_rate'):
    _parse('--config.model.sdm_zero_rate=0.25')


def _main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, '-m', 'dssl_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300,
                        env=os.environ | {'PYTHONPATH': ROOT})


def test_prepare_generates_and_builds_offline(tmp_path):
  result = _main('--config=configs/synthetic.py', f'--workdir={tmp_path / "w"}',
                 '--mode=prepare', f'--config.data.data_dir={tmp_path / "tfds"}',
                 '--config.data.synthetic.identities=10')
  assert result.returncode == 0, result.stderr
  assert 'train: 20 images, 40 captions, 5 identities' in result.stdout  # 50/7/43% split
  assert 'test: 16 images, 32 captions, 4 identities' in result.stdout
  assert os.path.isfile(tmp_path / 'tfds' / 'downloads' / 'manual' /
                        'synthetic_ids10_img4_seed0_split5-1-4' / 'reid_raw.json')


def test_output_to_a_file_has_no_progress_bars_or_tfds_notices(tmp_path):
  """Not a terminal (a log file, a pipe): no escape codes, no TFDS notice repeated per builder."""
  result = _main('--config=configs/synthetic.py', '--mode=prepare',
                 f'--config.data.data_dir={tmp_path / "tfds"}',
                 '--config.data.synthetic.identities=10')
  assert result.returncode == 0, result.stderr
  for stream in (result.stdout, result.stderr):
    assert '\x1b' not in stream and 'Using custom data configuration' not in stream
  assert result.stderr.strip() == ''


def test_bad_manual_dir_is_one_line_and_exit_1(tmp_path):
  result = _main('--config=configs/cuhk.py', '--mode=prepare',
                 f'--config.data.manual_dir={tmp_path / "CUHK-PEDES"}',
                 f'--config.data.data_dir={tmp_path / "tfds"}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: config.data.manual_dir '{tmp_path / 'CUHK-PEDES'}' is not a folder")


_WITHOUT_NLTK_DATA = """import runpy, sys, nltk
nltk.data.path[:] = [sys.argv.pop(1)]  # an empty folder: no NLTK data installed
runpy.run_module('dssl_jax.main', run_name='__main__', alter_sys=True)
"""


@pytest.mark.parametrize('config', ['cuhk.py', 'rstp_clip.py'])
def test_a_real_data_config_without_nltk_data_stops_prepare_in_one_line(config, tiny_dataset,
                                                                         tmp_path):
  """The paper's phrases come from NLTK's tagger: a real dataset is not built with another one
  unless asked to (the synthetic configs' lexicon)."""
  from dssl_jax.data import builders  # pylint: disable=g-import-not-at-top
  raw = builders.manual_dir(tiny_dataset[0].data)  # a valid CUHK-PEDES layout
  (tmp_path / 'nltk_data').mkdir()
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_NLTK_DATA, str(tmp_path / 'nltk_data'),
       f'--config=configs/{config}', '--mode=prepare', '--config.data.name=cuhk_pedes',
       f'--config.data.manual_dir={raw}', f'--config.data.data_dir={tmp_path / "tfds"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ | {'PYTHONPATH': ROOT})
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.data.tagger='perceptron' but NLTK's perceptron tagger")
  assert 'python -m nltk.downloader averaged_perceptron_tagger_eng' in last
  assert "--config.data.tagger=lexicon builds other noun phrases than the paper's" in last
  assert not (tmp_path / 'tfds' / 'cuhk_pedes').exists()


@pytest.mark.parametrize('config, message', [
    ('cuhk.py', 'get ImageNet weights with'),
    ('cuhk_clip.py', "convert open_clip's ViT-B-16 (OpenAI) weights with")])
def test_a_real_data_run_without_backbone_weights_stops_before_any_work(config, message, tmp_path):
  result = _main(f'--config=configs/{config}', f'--workdir={tmp_path / "w"}',
                 f'--config.data.manual_dir={tmp_path / "CUHK-PEDES"}')  # a folder that is not there
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: config.model.backbone_weights is not set: {message}')


def test_every_config_file_resolves():
  names = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, 'configs'))
                 if n.endswith('.py') and n != '__init__.py')
  assert {'cuhk', 'cuhk_clip', 'icfg_clip', 'rstp_clip', 'synthetic_clip_tiny'} <= set(names)
  for name in names:
    config = importlib.import_module(f'configs.{name}').get_config()
    assert config.model.backbone == ('clip' if 'clip' in name else 'resnet'), name
    config.copy_and_resolve_references()
    synthetic = name.startswith('synthetic')
    assert config.data.tagger == ('lexicon' if synthetic else 'perceptron'), name
    irra = 'clip' in name and not synthetic  # IRRA's augmentation; the paper names none
    assert tuple(config.data.augment) == (('flip', 'crop', 'erase') if irra else ('flip',)), name


def test_mode_config_shows_the_fidelity_switches():
  result = _main('--config=configs/cuhk.py', '--mode=config', '--config.model.pdm=False')
  assert result.returncode == 0, result.stderr
  for line in ('rank_reduction: mean', 'pdm: false', 'spfm: true', 'lambda1: null', 'augment:'):
    assert line in result.stdout, line


def test_a_bucket_url_as_workdir_is_refused_in_one_line(tmp_path):
  result = _main('--config=configs/synthetic.py', '--workdir=gs://bucket/run')
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
      "error: --workdir 'gs://bucket/run': dssl_jax reads and writes through the local "
      'filesystem; mount the bucket (gcsfuse, s3fs) and pass the mounted path')


def test_a_typo_in_an_override_is_one_line_and_exit_1():
  result = _main('--config=configs/synthetic.py', '--config.model.sdm_zero_rate=0.25')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines() == [
      """error: config override rejected: 'sdm_zero_rate' Did you mean "sdm_zero_ratio" """
      """instead of "sdm_zero_rate"?"""]


def test_ci_runs_the_readme_test_command():
  """The README's first two code blocks: the main job, then the tests, which CI runs as written."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    blocks = f.read().split('```')
  main_job, tests = (blocks[k].strip().splitlines() for k in (1, 3))
  assert main_job[1].startswith('python -m dssl_jax.main --config configs/synthetic.py')
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    assert ' && '.join(tests) in f.read()
