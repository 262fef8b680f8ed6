"""Each official annotation format, built from fixtures with valid and bad entries."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from dssl_jax.configs import base
from dssl_jax.data import builders, captions, pipeline
from dssl_jax.data.builders import annotations
from dssl_jax.errors import UserError

GOOD = [  # (file, id, split, captions)
    ('a/1.jpg', 11, 'train', ['A man in a red coat and black shoes.', 'The man wears a red coat.']),
    ('a/2.png', 11, 'train', ['A man with a red coat, and white shoes!']),
    ('b/3.jpg', 12, 'train', ['A woman in a blue dress with a black bag.', 'She has a blue dress.']),
    ('b/4.jpg', 13, 'val', ['A boy in a green shirt.']),
    ('c/5.jpg', 14, 'test', ['A girl wearing a yellow raincoat.', 'Yellow raincoat girl.']),
    ('c/6.png', 15, 'test', ['Someone walking.']),  # a caption without a noun phrase... almost
]
BAD = [  # (file, id, split, captions, reason)
    ('d/missing.jpg', 16, 'train', ['A man in a coat.'], 'missing image'),
    ('d/corrupt.jpg', 17, 'train', ['A man in a coat.'], 'corrupt image'),
    ('d/empty.jpg', 18, 'train', ['  ...  '], 'empty caption'),
    ('d/noid.jpg', None, 'train', ['A man in a coat.'], 'missing id'),
]


def write_dataset(root, name: str, bad=True):
  """Writes `name`'s annotation file and images under root; returns the manual_dir."""
  fmt = annotations.FORMATS[name]
  rng = np.random.default_rng(0)
  entries = []
  for file, pid, split, texts, *_ in GOOD + (BAD if bad else []):
    if name == 'icfg_pedes' and split == 'val':
      split = 'test'
    path = os.path.join(root, 'imgs', file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if 'corrupt' in file:
      with open(path, 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 this is not a jpeg')
    elif 'missing' not in file:
      mode = 'L' if file.endswith('.png') else 'RGB'  # grey PNGs must come out as RGB
      shape = (40, 20) if mode == 'L' else (60, 30, 3)
      Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    entry = {fmt.path_key: file, 'split': split, 'captions': texts}
    if pid is not None:
      entry['id'] = pid
    if name != 'rstp_reid':
      entry['processed_tokens'] = [captions.tokenize(t) for t in texts]
    entries.append(entry)
  # One image keeps its good caption and loses only its empty one.
  entries[0]['captions'] = entries[0]['captions'] + ['']
  with open(os.path.join(root, fmt.annotation_file), 'w') as f:
    json.dump(entries, f)
  return str(root)


def make_config(name, manual_dir, data_dir):
  config = base.get_config()
  config.data.name = name
  config.data.manual_dir = manual_dir
  config.data.data_dir = data_dir
  config.data.tagger = 'lexicon'  # no NLTK data on a test machine
  config.data.image_size = (32, 16)
  config.data.max_words = 6
  config.train.batch_size = 2
  config.eval.batch_size = 4
  return config


@pytest.mark.parametrize('name', ['cuhk_pedes', 'icfg_pedes', 'rstp_reid'])
def test_build_counts_summary_vocabulary_and_pipeline(name, tmp_path, capsys):
  config = make_config(name, write_dataset(tmp_path / 'raw', name), str(tmp_path / 'tfds'))
  builders.prepare(config.data)
  printed = capsys.readouterr().out
  assert 'skipped: 5 entries' in printed  # 4 bad entries + the one empty caption
  meta = pipeline.dataset_meta(config.data)
  builder = builders.get_builder(config.data)
  summary = builder.info.metadata['build_summary']
  assert summary['skipped_by_reason'] == {'missing image': 1, 'corrupt image': 1,
                                          'empty caption': 2, 'missing id': 1}
  assert {s['file'] for s in summary['skipped']} >= {'d/missing.jpg', 'd/corrupt.jpg',
                                                      'd/noid.jpg', 'a/1.jpg caption 2'}
  expected_splits = {'train': (3, 5), 'test': (3, 4) if name == 'icfg_pedes' else (2, 3)}
  if name != 'icfg_pedes':
    expected_splits['val'] = (1, 1)
  assert {s: (k['images'], k['captions']) for s, k in meta.kept.items()} == expected_splits
  assert meta.num_train_identities == 2
  assert meta.tagger == captions.resolve_tagger(config.data.tagger)  # the one actually used
  # Train words seen twice: 'man', 'red', 'coat', ...; 'yellow' (test only) is unknown.
  assert meta.vocabulary[:2] == ['<pad>', '<unk>'] and 'yellow' not in meta.vocabulary
  assert {'man', 'red', 'coat', 'blue', 'dress', 'black'} <= set(meta.vocabulary)

  examples = {e['file_path'].decode(): e
              for e in builder.as_dataset(split='train').as_numpy_iterator()}
  first = examples['a/1.jpg']['captions']
  assert first['tokens'][0].decode() == 'a man in a red coat and black shoes'
  assert first['phrases'][0].decode() == 'a man|a red coat|black shoes'
  assert sorted(int(e['label']) for e in examples.values()) == [0, 0, 1]

  batches = list(pipeline.train_input(config, meta).epoch(0))
  assert len(batches) == 2  # 5 train captions // batch 2
  batch = batches[0]
  assert batch['image'].shape == (2, 32, 16, 3) and batch['image'].dtype == np.uint8  # the step
  assert batch['image'].max() > 0  # normalizes
  for tokens, mask, phrases, phrase_mask in zip(batch['tokens'], batch['token_mask'],
                                                batch['phrases'], batch['phrase_mask']):
    assert tokens.shape == (6,) and phrases.shape == (26, 8)
    np.testing.assert_array_equal(mask, tokens != 0)
    np.testing.assert_array_equal(phrase_mask, phrases != 0)
    assert mask[0] and (mask[:mask.sum()]).all()  # padding only at the end
  gallery = list(pipeline.gallery(config, 'test'))
  assert sum(b['valid'].sum() for b in gallery) == expected_splits['test'][0]
  queries = list(pipeline.queries(config, meta, 'test'))
  assert sum(b['valid'].sum() for b in queries) == expected_splits['test'][1]
  for text, tokens in zip(queries[0]['text'], queries[0]['tokens']):  # padding repeats the last
    expected = captions.encode(captions.tokenize(text.decode()), meta.vocabulary)[:6]
    np.testing.assert_array_equal(tokens, expected + [0] * (6 - len(expected)))
  assert 1 in queries[0]['tokens']  # test words unseen in train are UNK


def test_strict_stops_at_the_first_bad_entry(tmp_path):
  config = make_config('cuhk_pedes', write_dataset(tmp_path / 'raw', 'cuhk_pedes'),
                       str(tmp_path / 'tfds'))
  config.data.strict = True
  with pytest.raises(UserError, match=r'a/1.jpg caption 2: empty caption .*strict'):
    builders.prepare(config.data)


def test_bad_folders_and_files_give_one_clear_line(tmp_path):
  config = make_config('cuhk_pedes', str(tmp_path / 'nowhere'), str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='nowhere.* is not a folder'):
    builders.prepare(config.data)
  config.data.manual_dir = str(tmp_path)
  with pytest.raises(UserError, match=r'reid_raw.json not found'):
    builders.prepare(config.data)
  (tmp_path / 'reid_raw.json').write_text('[{"split": "train",')
  with pytest.raises(UserError, match=r'reid_raw.json is not valid JSON'):
    builders.prepare(config.data)
  (tmp_path / 'reid_raw.json').write_text('{"split": "train"}')
  with pytest.raises(UserError, match=r'expected a JSON list'):
    builders.prepare(config.data)
  (tmp_path / 'reid_raw.json').write_text(
      '[{"id": 1, "split": "test", "file_path": "gone.jpg", "captions": ["a man"]}]')
  with pytest.raises(UserError, match=r'no usable train entry'):
    builders.prepare(config.data)
  config.data.name = 'market1501'
  with pytest.raises(UserError, match='config.data.name'):
    builders.prepare(config.data)


def test_unbuilt_dataset_and_changed_build_options_are_reported(tmp_path):
  config = make_config('rstp_reid', write_dataset(tmp_path / 'raw', 'rstp_reid', bad=False),
                       str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='--mode=prepare'):
    pipeline.dataset_meta(config.data)
  builders.prepare(config.data)
  config.data.min_word_count = 1
  with pytest.raises(UserError, match='min_word_count: built 2, asked 1'):
    builders.prepare(config.data)


@pytest.mark.slow
def test_a_dataset_written_from_the_readme_schema_alone_trains_and_tests(tmp_path):
  """README, "Your own dataset": 3 people in reid_raw.json + imgs/, through configs/cuhk.py with
  a data_dir of its own. No val entries: the last checkpoint is tested."""
  from dssl_jax.configs import cuhk  # pylint: disable=g-import-not-at-top
  from dssl_jax import modes  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_train_config  # pylint: disable=g-import-not-at-top
  raw, rng = tmp_path / 'mine', np.random.default_rng(0)
  entries = [
      {'id': 1, 'split': 'train', 'file_path': 'cam1/0001_a.jpg',
       'captions': ['A man in a grey coat and black trousers.', 'The man wears a grey coat.']},
      {'id': 1, 'split': 'train', 'file_path': 'cam2/0001_b.png',
       'captions': ['A man in a long grey coat.', 'A tall man, grey coat and black shoes.']},
      {'id': '2', 'split': 'train', 'file_path': 'cam1/0002_a.jpg',
       'captions': ['A woman with a red bag and a white shirt.', 'The woman carries a red bag.']},
      {'id': 2, 'split': 'train', 'file_path': 'cam2/0002_b.jpg',
       'captions': ['A woman in a white shirt with a red bag.', 'A red bag, a white shirt.']},
      {'id': 3, 'split': 'test', 'file_path': 'cam1/0003_a.jpg',
       'captions': 'A boy in a green jacket.'},
      {'id': 3, 'split': 'test', 'file_path': 'cam2/0003_b.jpg',
       'captions': ['A boy wearing a green jacket and blue jeans.']},
  ]
  for e in entries:
    (raw / 'imgs' / os.path.dirname(e['file_path'])).mkdir(parents=True, exist_ok=True)
    size = rng.integers(40, 200, 2)
    Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(
        raw / 'imgs' / e['file_path'])
  (raw / 'reid_raw.json').write_text(json.dumps(entries))
  config = cuhk.get_config()
  config.data.manual_dir, config.data.data_dir = str(raw), str(tmp_path / 'mine_tfds')
  config.data.tagger = 'lexicon'  # no NLTK data on a test machine
  config = tiny_train_config(config)
  config.train.batch_size, config.eval.batch_size, config.eval.image_to_text = 8, 16, False
  workdir = str(tmp_path / 'run')
  modes.run(config, workdir, 'train')
  meta = pipeline.dataset_meta(config.data)
  assert meta.num_train_identities == 2
  assert meta.kept == {'train': {'images': 4, 'captions': 8, 'identities': 2},
                       'val': {'images': 0, 'captions': 0, 'identities': 0},
                       'test': {'images': 2, 'captions': 2, 'identities': 1}}
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert results['evaluated'].startswith('the last checkpoint')
  assert results['queries'] == 2 and results['R1'] == 100.0  # one test person: always first
