"""Retriever: the README's Python example, run as written against a tiny trained workdir."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dssl_jax import Retriever
from dssl_jax.errors import UserError
from dssl_jax import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    section = f.read().split('## Python API and search', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_the_readme_example_runs(trained, tmp_path, monkeypatch, capsys):
  workdir, _, entries, raw = trained
  (tmp_path / 'runs').mkdir()
  os.symlink(workdir, tmp_path / 'runs' / 'synthetic')
  (tmp_path / 'photos').mkdir()
  for e in entries:
    shutil.copy(os.path.join(raw, 'imgs', e['file_path']), tmp_path / 'photos')
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(_readme_example(), scope)  # pylint: disable=exec-used
  printed = capsys.readouterr().out.strip().splitlines()
  photos, images, scores = scope['photos'], scope['images'], scope['scores']
  assert len(photos) == len(entries) and scores.shape == (1, len(photos))
  assert images['V_P'].shape[0] == images['V_L'].shape[0] == len(photos)
  assert len(printed) == 3 and all(os.path.isfile(f'photos/{line.split()[1]}') for line in printed)
  # The index's exact search scores what similarity() scores.
  retriever = scope['retriever']
  texts = ['a woman in a red coat and black boots']
  [hits] = retriever.search(texts, 'photos_index', top=len(photos), candidates=None)
  want = dict(zip((os.path.basename(p) for p in photos), scores[0]))
  np.testing.assert_allclose([s for _, s in hits], [want[p] for p, _ in hits],
                             atol=1e-3)  # the index holds float16 features


def test_arrays_encode_as_their_files(trained, tmp_path):
  workdir, _, entries, raw = trained
  retriever = Retriever.from_workdir(workdir)
  arrays = [np.asarray(Image.open(os.path.join(raw, 'imgs', e['file_path'])).convert('RGB'))
            for e in entries[:3]]
  paths = [str(tmp_path / f'{i}.png') for i in range(3)]  # lossless: the same pixels
  for array, path in zip(arrays, paths):
    Image.fromarray(array).save(path)
  from_paths, from_arrays = retriever.encode_images(paths), retriever.encode_images(arrays)
  for k in from_paths:
    np.testing.assert_allclose(from_arrays[k], from_paths[k], rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match='image 1: give all paths or all uint8'):
    retriever.encode_images([arrays[0], np.zeros((4, 4))])
  with pytest.raises(UserError, match='list of at least one sentence'):
    retriever.encode_texts('a man in a coat')


_WITHOUT_DATA_EXTRA = """
import json, sys
for name in ('tensorflow', 'tensorflow_datasets', 'nltk', 'clu'):
  sys.modules[name] = None  # not installed: importing it fails
import numpy as np
from dssl_jax import Retriever
retriever = Retriever.from_workdir({workdir!r})
features = retriever.encode_images(list(np.load({arrays!r}).values()))
print(json.dumps({{k: v.tolist() for k, v in features.items()}}))
try:
  retriever.encode_texts(['a man in a coat'])
except Exception as e:
  print(f'{{type(e).__name__}}: {{e}}')
"""


def test_arrays_encode_without_tensorflow_or_nltk(trained, tmp_path):
  """What `pip install dssl_jax` (no data extra) gives: image arrays encode as they do with the
  data extra; sentences say which extra they need."""
  workdir, _, entries, raw = trained
  arrays = [np.asarray(Image.open(os.path.join(raw, 'imgs', e['file_path'])).convert('RGB'))
            for e in entries[:3]]
  np.savez(tmp_path / 'arrays.npz', *arrays)
  script = _WITHOUT_DATA_EXTRA.format(workdir=workdir, arrays=str(tmp_path / 'arrays.npz'))
  out = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=os.environ | {'PYTHONPATH': ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  features, error = out.stdout.strip().splitlines()[-2:]
  want = Retriever.from_workdir(workdir).encode_images(arrays)
  for k, v in json.loads(features).items():
    np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-5)
  assert error == ("UserError: noun phrases need nltk, which dssl_jax's data extra installs: "
                   "pip install 'dssl_jax[data]'")


def test_a_clip_model_encodes_queries_as_its_evaluation_does(tiny_dataset, bpe_path, tmp_path):
  """Query time tokenizes and chunks a sentence as the dataset build and the input pipeline did."""
  from dssl_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_train_config  # pylint: disable=g-import-not-at-top
  config = tiny_train_config(tiny_dataset[0])
  config.data.max_words = 24
  config.model.backbone = 'clip'
  config.model.clip.update(image_width=32, image_layers=1, image_heads=2, text_width=32,
                           text_layers=1, text_heads=2, context=24, embed_dim=16,
                           bpe_path=bpe_path)
  config.train.stage1_epochs, config.train.stage2_epochs = 1, 0
  train.run_training(config, str(tmp_path))
  meta = pipeline.dataset_meta(config.data)
  model, mesh = state_lib.make_model(config, meta), state_lib.make_mesh()
  batch = next(pipeline.queries(config, meta, 'test'))
  want = evaluate.Encoder(model, mesh).queries(
      state_lib.load_variables(config, str(tmp_path), model, mesh).variables, [batch])
  retriever = Retriever.from_workdir(str(tmp_path))
  texts = [t.decode() for t in batch['text'][batch['valid']]]
  got = retriever.encode_texts(texts)
  assert retriever.unknown_words(texts[0]) == []
  for name in ('T_P', 'T_L', 'phrase_valid'):
    np.testing.assert_allclose(got[name], want[name][:len(texts)], atol=1e-5, err_msg=name)
