import hashlib
import json
import os

import numpy as np
from PIL import Image
import pytest

from dssl_jax.data import captions, synthetic


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('synthetic'))
  counts = synthetic.generate(out, identities=60, seed=3, images_per_identity=4)
  with open(os.path.join(out, synthetic.ANNOTATION_FILE)) as f:
    return out, json.load(f), counts


def _digest(folder):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def test_same_seed_same_bytes_in_any_number_of_processes_other_seed_other_data(tmp_path):
  for name, seed, processes in (('a', 7, 1), ('b', 7, 2), ('c', 8, 1)):
    synthetic.generate(str(tmp_path / name), identities=5, seed=seed, images_per_identity=2,
                       processes=processes)
  assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
  assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_cuhk_pedes_format_and_identity_split(generated):
  out, entries, counts = generated
  assert len(entries) == 240
  for e in entries:
    assert set(e) == {'split', 'captions', 'file_path', 'processed_tokens', 'id'}
    assert len(e['captions']) == 2 and e['processed_tokens'][0] == captions.tokenize(
        e['captions'][0])
    assert os.path.isfile(os.path.join(out, 'imgs', e['file_path']))
  split_ids = {s: {e['id'] for e in entries if e['split'] == s} for s in ('train', 'val', 'test')}
  assert {s: len(v) for s, v in split_ids.items()} == {'train': 42, 'val': 6, 'test': 12}
  assert not (split_ids['train'] & split_ids['test'] or split_ids['train'] & split_ids['val']
              or split_ids['val'] & split_ids['test'])
  assert counts['test'] == (12, 48, 96)


def test_captions_describe_the_person_and_vary():
  rng = np.random.default_rng(0)
  sex_words = {'man': {'man', 'guy', 'male', 'he'}, 'woman': {'woman', 'lady', 'female', 'girl',
                                                              'she'}}
  for _ in range(10):
    person = synthetic.sample_person(rng)
    texts = [synthetic.describe(person, rng) for _ in range(10)]
    other = 'woman' if person.sex == 'man' else 'man'
    upper = synthetic.COLOUR_WORDS.get(person.upper_colour, [person.upper_colour])
    for text in texts:
      words = captions.tokenize(text)
      assert sex_words[person.sex] & set(words) and not sex_words[other] & set(words), text
      assert any(colour in ' '.join(words) for colour in upper), text
      assert any(w in text for w in synthetic.UPPER[person.upper][2]), text
    assert len(set(texts)) > 5


def test_images_of_one_identity_differ_in_surroundings(generated):
  out, entries, _ = generated
  first = [np.asarray(Image.open(os.path.join(out, 'imgs', e['file_path'])), np.float32)
           for e in entries if e['id'] == entries[0]['id']]
  assert first[0].shape == (*synthetic.IMAGE_SIZE, 3)
  corner = lambda im: im[:30, :15].mean(axis=(0, 1))  # top-left: surroundings only
  assert max(np.abs(corner(a) - corner(b)).max() for a in first for b in first) > 30


def test_colour_histograms_alone_do_not_retrieve_the_person(generated):
  """Image-to-image retrieval by 8x8x8 colour histograms stays far from solving the task."""
  out, entries, _ = generated
  def histogram(path, bins=8):
    pixels = np.asarray(Image.open(os.path.join(out, 'imgs', path))).reshape(-1, 3) // (256 // bins)
    h = np.bincount((pixels * [bins * bins, bins, 1]).sum(1), minlength=bins**3)
    return h / h.sum()
  hists = np.stack([histogram(e['file_path']) for e in entries])
  ids = np.array([e['id'] for e in entries])
  similarity = np.minimum(hists[:, None], hists[None]).sum(-1)
  np.fill_diagonal(similarity, -1)
  rank1 = (ids[similarity.argmax(1)] == ids).mean()
  print(f'colour-histogram R1 {rank1:.3f} (chance {3 / (len(entries) - 1):.3f})')
  assert rank1 < 0.35


def test_rejects_too_few_identities(tmp_path):
  with pytest.raises(ValueError, match='--identities'):
    synthetic.generate(str(tmp_path), identities=2)
