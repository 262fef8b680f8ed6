"""A workdir keeps its run: a rerun or an evaluation with a config that would change what its
checkpoints are is refused in one line before anything is written."""
import json
import logging
import os
import sys

import pytest

from dssl_jax.configs import synthetic
from dssl_jax import checkpoints, modes
from dssl_jax.data.formats import DatasetMeta
from dssl_jax.errors import UserError


@pytest.fixture
def workdir(tmp_path):
  """A workdir whose run was started with configs/synthetic.py."""
  checkpoints.save_workdir_files(str(tmp_path), synthetic.get_config(),
                                 DatasetMeta(['<pad>', '<unk>'], 3, {}, ()))
  return str(tmp_path)


def _files(folder) -> dict:
  return {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)}


def test_a_changed_model_field_is_refused_before_anything_is_written(workdir):
  before = _files(workdir)
  config = synthetic.get_config()
  config.model.embed_dim = 64
  with pytest.raises(UserError, match=r'holds a run with other settings: model\.embed_dim '
                     r'\(\d+ -> 64\); .*Use a new --workdir'):
    checkpoints.check_workdir_config(workdir, config)
  for mode in ('train', 'eval'):  # the command line's path, checked before any write
    with pytest.raises(UserError, match=r'model\.embed_dim'):
      modes.run(config, workdir, mode)
  assert _files(workdir) == before


@pytest.mark.parametrize('field, value', [
    ('seed', 3), ('data.image_size', (64, 32)), ('data.max_words', 12),
    ('train.batch_size', 8), ('train.stage1_epochs', 1), ('data.synthetic.identities', 40),
    ('model.clip.image_layers', 2)])
def test_every_field_that_makes_the_run_is_refused(workdir, field, value):
  config = synthetic.get_config()
  *sections, name = field.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[name] = value
  with pytest.raises(UserError, match=field.replace('.', r'\.')):
    checkpoints.check_workdir_config(workdir, config)


def test_evaluation_and_cadence_changes_pass_silently(workdir, caplog):
  config = synthetic.get_config()
  config.eval.split, config.eval.lambda1, config.train.log_every_steps = 'val', 0.3, 7
  config.model.backbone_weights = 'elsewhere/resnet50.npz'  # starts a run; not part of it
  with caplog.at_level(logging.WARNING):
    checkpoints.check_workdir_config(workdir, config)
  assert not caplog.records


def test_a_moved_dataset_or_a_longer_stage_2_passes_with_one_line(workdir, caplog):
  config = synthetic.get_config()
  config.data.data_dir = '/mnt/elsewhere/tfds'
  config.train.stage2_epochs += 3  # the steps done keep their place: a resume trains on
  with caplog.at_level(logging.WARNING):
    checkpoints.check_workdir_config(workdir, config)
  assert len(caplog.records) == 1
  message = caplog.records[0].getMessage()
  assert "data.data_dir changed from '' to '/mnt/elsewhere/tfds'" in message
  assert 'train.stage2_epochs changed from' in message


def test_an_option_the_saved_config_predates_compares_as_its_default(workdir):
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  del saved['model']['zero_init_residual']  # written before the option existed
  with open(path, 'w') as f:
    json.dump(saved, f)
  config = synthetic.get_config()
  checkpoints.check_workdir_config(workdir, config)  # the default: the same run
  config.model.zero_init_residual = True
  with pytest.raises(UserError, match=r'model\.zero_init_residual \(False -> True\)'):
    checkpoints.check_workdir_config(workdir, config)


def test_a_workdir_without_a_run_takes_any_config(tmp_path):
  checkpoints.check_workdir_config(str(tmp_path), synthetic.get_config())


def test_stderr_into_keeps_what_a_read_prints_out_of_the_terminal(tmp_path, capfd):
  """What TensorStore's C++ and Python's logging print while a checkpoint reads goes to the log,
  after a header; nothing printed leaves no log; the terminal's stderr is back afterwards."""
  log = tmp_path / checkpoints.READ_LOG
  with checkpoints.stderr_into(log):
    pass
  assert not log.exists()
  with checkpoints.stderr_into(log):
    os.write(2, b'E tensorstore: corrupt chunk\n')  # as C++ writes it, under Python's stderr
    print('RuntimeError: Event loop is closed', file=sys.stderr)
  os.write(2, b'after\n')
  assert capfd.readouterr().err == 'after\n'
  header, *lines = log.read_text().splitlines()
  assert header.startswith('--- ') and header.endswith('process 0:')
  assert lines == ['E tensorstore: corrupt chunk', 'RuntimeError: Event loop is closed']
