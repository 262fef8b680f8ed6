"""Every entry point's `--help` shows its own flags and nothing foreign; the user's entry points
import jax and TensorFlow only after parsing (a quick `--help`); the library defines no flag;
`--mode=config` prints the resolved config; `--config` takes a shipped config's name."""
import os
import re
import subprocess
import sys

import pytest

from dssl_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY_POINTS = {  # module: (its flags, flags of other entry points that must not show)
    'dssl_jax.main': (['--config', '--workdir', '--mode'], ['--images', '--sweep', '--what']),
    'dssl_jax.search': (['--workdir', '--images', '--index', '--top', '--candidates', '--exact'],
                        ['--config', '--mode', '--sweep', '--what']),
    'launch.sweep': (['--config', '--workdir', '--sweep', '--seeds', '--variant'],
                     ['--mode', '--images', '--what']),
    'benchmarks.benchmark': (['--config', '--what', '--candidates', '--index_size'],
                           ['--workdir', '--mode', '--images', '--sweep']),
    'benchmarks.loss_balance': (['--config', '--batch'], ['--workdir', '--mode', '--images']),
}


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300, env=os.environ | {'PYTHONPATH': ROOT})


@pytest.mark.parametrize('module', sorted(ENTRY_POINTS))
def test_help_shows_own_flags_only(module):
  out = _run('-m', module, '--help')
  assert 'Traceback' not in out.stderr and 'Try --helpfull' in out.stdout, out.stderr
  own, foreign = ENTRY_POINTS[module]
  shown = {line.strip().split(':')[0].replace('[no]', '') for line in out.stdout.splitlines()
           if line.strip().startswith('--')}
  assert {f for f in own if f not in shown} == set(), out.stdout
  assert {f for f in foreign if f in shown} == set(), out.stdout


@pytest.mark.parametrize('module', ['dssl_jax.main', 'dssl_jax.search', 'launch.sweep'])
def test_user_entry_points_import_without_jax_or_tensorflow(module):
  out = _run('-c', f'import sys, {module}; '
             'print(sorted(m for m in ("jax", "tensorflow") if m in sys.modules))')
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '[]'


def test_the_library_defines_no_flag():
  """Retriever, what it uses, and the sweep's and loss balance's functions can be imported into
  any absl program."""
  out = _run('-c', 'from absl import flags; import dssl_jax; from dssl_jax import Retriever; '
             'from dssl_jax import checkpoints, evaluate, index, plots, reports, train; '
             'from benchmarks import loss_balance; import launch.sweep; '
             'print(sorted(m for m in flags.FLAGS.flags_by_module_dict() '
             'if "dssl_jax" in m or "launch" in m or "loss_balance" in m))')
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '[]'


def test_the_package_imports_neither_the_test_references_nor_the_configs_link():
  """torch, torchvision and open_clip are test requirements; the repository's configs/ is a link
  to dssl_jax/configs, which the package imports by that name (installed, there is no configs)."""
  pattern = re.compile(r'^\s*(import (torch|torchvision|open_clip|configs)\b|'
                       r'from (torch|torchvision|open_clip|configs)\b)', re.MULTILINE)
  found = []
  for folder, _, names in os.walk(os.path.join(ROOT, 'dssl_jax')):
    for name in names:
      if name.endswith('.py'):
        with open(os.path.join(folder, name)) as f:
          found += [f'{name}: {m.group(0).strip()}' for m in pattern.finditer(f.read())]
  assert found == []
  assert pattern.search('import torch\n') and pattern.search('  from configs import base\n')
  assert not pattern.search('from dssl_jax.configs import base\n')


def test_mode_config_prints_the_resolved_config():
  out = _run('-m', 'dssl_jax.main', '--config=configs/synthetic.py', '--mode=config',
             '--config.model.sdm_zero_ratio=0.25', '--config.train.batch_size=16')
  assert out.returncode == 0, out.stderr
  assert 'sdm_zero_ratio: 0.25' in out.stdout and 'batch_size: 16' in out.stdout
  assert 'depth: 18' in out.stdout and 'name: synthetic' in out.stdout  # the file's own values


def test_config_takes_a_shipped_config_name_from_any_folder(tmp_path):
  shipped = os.path.join(ROOT, 'dssl_jax', 'configs', 'synthetic_tiny.py')
  assert cli.config_file('synthetic_tiny') == shipped
  assert cli.config_file('synthetic_tiny:x') == shipped + ':x'  # get_config's argument
  for kept in ('configs/synthetic_tiny.py', 'my_config', 'my_config.py', '../synthetic_tiny'):
    assert cli.config_file(kept) == kept  # a path, or no shipped config of that name
  for flag in (['--config', 'synthetic_tiny'], ['--config=synthetic_tiny']):
    out = _run('-m', 'dssl_jax.main', *flag, '--mode=config', '--config.seed=3', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'seed: 3' in out.stdout and 'embed_dim: 32' in out.stdout  # the tiny config's own


API_ERROR = """
import sys
from dssl_jax import Retriever
from dssl_jax.errors import UserError
try:
  Retriever.from_workdir(sys.argv[1]).encode_images(sys.argv[2:])
except UserError as e:
  sys.exit(f'error: {e}')
"""


def _bad_inputs(workdir: str, tmp) -> dict:
  """{case: (arguments to python, what stderr must name)}, as a user would meet each."""
  (tmp / 'a_file').write_text('not a folder')
  (tmp / 'empty.jpg').write_bytes(b'')
  (tmp / 'no_images').mkdir()
  (tmp / 'no_images' / 'notes.txt').write_text('no image here')
  main = ['-m', 'dssl_jax.main', '--config=configs/synthetic_tiny.py']
  search = ['-m', 'dssl_jax.search']
  return {
      'a --config file that does not exist': (
          ['-m', 'dssl_jax.main', '--config=configs/nope.py', f'--workdir={workdir}'],
          'configs/nope.py'),
      'a --workdir that is a file': ([*main, f'--workdir={tmp / "a_file"}'], str(tmp / 'a_file')),
      'a changed model field against an existing workdir': (
          [*main, f'--workdir={workdir}', '--config.model.embed_dim=64'], 'model.embed_dim'),
      'encode_images on a missing image': (
          ['-c', API_ERROR, workdir, str(tmp / 'missing.jpg')], str(tmp / 'missing.jpg')),
      'encode_images on an empty image': (
          ['-c', API_ERROR, workdir, str(tmp / 'empty.jpg')], str(tmp / 'empty.jpg')),
      'search with --top 0': ([*search, 'query', f'--workdir={workdir}', '--top=0', 'a man'],
                              '--top 0'),
      'an index over a folder with no images': (
          [*search, 'index', f'--workdir={workdir}', f'--images={tmp / "no_images"}',
           f'--index={tmp / "index"}'], str(tmp / 'no_images')),
      'a data.manual_dir that does not exist': (
          ['-m', 'dssl_jax.main', '--config=configs/cuhk.py', '--mode=prepare',
           f'--config.data.manual_dir={tmp / "CUHK-PEDES"}',
           f'--config.data.data_dir={tmp / "tfds"}'], str(tmp / 'CUHK-PEDES')),
  }


def _snapshot(folder: str) -> dict:
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(folder) for name in names}


def test_every_bad_input_ends_in_one_line_that_names_it_and_changes_nothing(trained, tmp_path):
  """Each case in a subprocess, as a user meets it: a non-zero exit, at most two lines on stderr,
  the path or field named, and no file of the trained workdir touched."""
  workdir = trained[0]
  before = _snapshot(workdir)
  for case, (args, named) in _bad_inputs(workdir, tmp_path).items():
    out = _run(*args)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0, case
    assert len(lines) <= 2 and named in out.stderr, f'{case}: {out.stderr[-2000:]}'
    assert _snapshot(workdir) == before, case
  assert not (tmp_path / 'index').exists()
