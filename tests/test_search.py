"""Index a folder (with a corrupt and a later-added file), query it, and every bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dssl_jax import checkpoints, index as index_lib
from dssl_jax.data import captions
from dssl_jax.errors import UserError
from dssl_jax.retriever import Retriever
from dssl_jax import similarity as similarity_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_queries_use_the_tagger_the_training_phrases_were_made_with(trained, monkeypatch):
  """The dataset records the tagger it used, training copies it into the workdir, and search
  uses it whatever config.data.tagger says (here one that is not installed)."""
  workdir = trained[0]
  config, meta = checkpoints.load_workdir(workdir)
  assert meta.tagger == captions.resolve_tagger(config.data.tagger)
  retriever = Retriever.from_workdir(workdir)
  used = []
  real = captions.make_tagger
  monkeypatch.setattr(captions, 'make_tagger', lambda kind: used.append(kind) or real(kind))
  retriever.config.data.tagger = 'perceptron' if meta.tagger == 'lexicon' else 'lexicon'
  retriever.encode_texts(['a person in a red coat, blue jeans'])
  assert used == [meta.tagger]


def test_index_query_incremental(trained, tmp_path, capsys):
  workdir, images, entries, raw = trained
  retriever = Retriever.from_workdir(workdir)
  folder = str(tmp_path / 'index')
  counts = retriever.build_index(str(images), folder, shard_size=6)
  assert counts == {'found': len(entries) - 2, 'encoded': len(entries) - 3, 'unreadable': 1,
                    'indexed': len(entries) - 3}
  assert 'unreadable, skipped: corrupt.jpg' in capsys.readouterr().out
  index = index_lib.Index(folder)
  assert [s['count'] for s in index.manifest['shards']] == [6, 6, 3]

  # Later: three new files and one changed file; only those are encoded.
  for e in entries[-3:]:
    shutil.copy(os.path.join(raw, 'imgs', e['file_path']), images)
  changed = images / os.path.basename(entries[0]['file_path'])
  os.utime(changed, (1e9, 1e9))
  counts = retriever.build_index(str(images), folder, shard_size=6)
  assert counts == {'found': len(entries) + 1, 'encoded': 4, 'unreadable': 1,
                    'indexed': len(entries)}
  index = index_lib.Index(folder)
  assert index.manifest['shards'][0]['stale'] == [0]

  # Exact: the same as scoring every (current) image at once.
  people = entries[::3]  # one image of each of the 6 people
  texts = [e['captions'][1] for e in people]
  queries = retriever.encode_texts(texts)
  weights = similarity_lib.sim_ti_weights(retriever.config)
  assert weights == (0.5, 0.5)  # the synthetic default trains both CA terms
  results = index_lib.search(index, queries, 5, *weights, candidates=None)
  shards = range(len(index.manifest['shards']))
  valid = [index.valid(s) for s in shards]
  paths = np.concatenate([index.array(s, 'paths')[v] for s, v in zip(shards, valid)])
  assert sorted(paths) == sorted(os.path.basename(e['file_path']) for e in entries)
  gallery = {k: np.concatenate([index.features(s)[k][v] for s, v in zip(shards, valid)])
             for k in ('V_P', 'V_L')}
  full = similarity_lib.similarity(gallery, queries, *weights)
  for q, hits in enumerate(results):
    want = np.argsort(-full[q], kind='stable')[:5]
    assert [p for p, _ in hits] == list(paths[want])
    np.testing.assert_allclose([s for _, s in hits], full[q, want], rtol=1e-5)
  # Two stages: with every image a candidate, the exact result; with 4, Sim_TI's best of the 4
  # images of highest cos(V_P, T_P).
  for hits, exact in zip(index_lib.search(index, queries, 5, *weights, candidates=100),
                         results):
    assert [p for p, _ in hits] == [p for p, _ in exact]
    np.testing.assert_allclose([s for _, s in hits], [s for _, s in exact], rtol=1e-5)
  cosines = similarity_lib.similarity(gallery, queries, 0, 0)
  for q, hits in enumerate(index_lib.search(index, queries, 3, *weights, candidates=4)):
    four = np.argsort(-cosines[q], kind='stable')[:4]
    want = four[np.argsort(-full[q, four], kind='stable')][:3]
    assert [p for p, _ in hits] == list(paths[want])
  shares = index_lib.recall(index, queries, 3, *weights, candidates=(1, 100))
  assert shares[100] == 1 and shares[1] <= 1 / 3  # one candidate: at most one of the top 3
  # A caption of a known person finds that person first.
  top_person = [int(hits[0][0][1:6]) for hits in results]  # synthetic/p00007_2.jpg -> 7
  assert sum(t == e['id'] for t, e in zip(top_person, people)) >= 5, (top_person, results)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'dssl_jax.search', *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_command_line_and_bad_input(trained, tmp_path):
  workdir, images, entries, _ = trained
  folder = str(tmp_path / 'index')
  missing = _cli('query', f'--workdir={workdir}', f'--index={folder}', 'a man')
  assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith(
      f'error: no index in {folder}')
  built = _cli('index', f'--workdir={workdir}', f'--images={images}', f'--index={folder}')
  assert built.returncode == 0, built.stderr[-2000:]
  query = _cli('query', f'--workdir={workdir}', f'--index={folder}', '--json', '--top=3',
               entries[0]['captions'][0], 'a woman in a zzzq coat')
  assert query.returncode == 0, query.stderr[-2000:]
  first, second = [json.loads(line) for line in query.stdout.splitlines()]
  assert len(first['results']) == 3 and second['unknown_words'] == ['zzzq']
  assert os.path.getsize(os.path.join(folder, 'query_results.png')) > 1000
  for text, message in (('   ', 'is empty'), ('zzzq qqqz', 'no word of the training vocabulary')):
    out = _cli('query', f'--workdir={workdir}', f'--index={folder}', text)
    assert out.returncode == 1 and 'Traceback' not in out.stderr
    assert message in out.stderr.strip().splitlines()[-1]
  with open(os.path.join(folder, index_lib.MANIFEST)) as f:
    manifest = json.load(f)
  manifest['fingerprint']['vocabulary'] += 1  # as if made by another model
  with open(os.path.join(folder, index_lib.MANIFEST), 'w') as f:
    json.dump(manifest, f)
  out = _cli('query', f'--workdir={workdir}', f'--index={folder}', 'a man')
  assert out.returncode == 1 and 'made with another model or vocabulary' in out.stderr
  out = _cli('query', f'--workdir={tmp_path}', f'--index={folder}', 'a man')
  assert out.returncode == 1 and 'must be a trained dssl_jax workdir' in out.stderr
  del manifest['version']  # an index from before the two-stage search: one .npz per shard
  with open(os.path.join(folder, index_lib.MANIFEST), 'w') as f:
    json.dump(manifest, f)
  out = _cli('query', f'--workdir={workdir}', f'--index={folder}', 'a man')
  assert out.returncode == 1 and 'has an older format' in out.stderr.strip().splitlines()[-1]


def test_retriever_needs_a_trained_workdir(tmp_path):
  with pytest.raises(UserError, match='config.json not found'):
    Retriever.from_workdir(str(tmp_path))
