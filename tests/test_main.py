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


def test_bad_manual_dir_is_one_line_and_exit_1(tmp_path):
  result = _main('--config=configs/cuhk.py', '--mode=prepare',
                 f'--config.data.manual_dir={tmp_path / "CUHK-PEDES"}',
                 f'--config.data.data_dir={tmp_path / "tfds"}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: config.data.manual_dir '{tmp_path / 'CUHK-PEDES'}' is not a folder")


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
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme_commands = f.read().split('```')[1].strip().splitlines()
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    assert readme_commands[1] in f.read()
