import numpy as np
import pytest

from dssl_jax.data import pipeline
from dssl_jax.errors import UserError


def _epoch(config, meta, epoch, **kwargs):
  return list(pipeline.TrainInput(config, meta, **kwargs).epoch(epoch))


def test_epochs_are_reproducible_and_differ(tiny_dataset):
  config, meta = tiny_dataset
  first, again, second = (_epoch(config, meta, 0), _epoch(config, meta, 0),
                          _epoch(config, meta, 1))
  steps = meta.kept['train']['captions'] // config.train.batch_size
  assert len(first) == len(second) == steps
  np.testing.assert_array_equal(first[0]['image'], again[0]['image'])
  np.testing.assert_array_equal(np.concatenate([b['tokens'] for b in first]),
                                np.concatenate([b['tokens'] for b in again]))
  assert not np.array_equal(first[0]['tokens'], second[0]['tokens'])
  labels = np.concatenate([b['label'] for b in first])
  assert labels.min() >= 0 and labels.max() < meta.num_train_identities


def test_flip_mirrors_some_images_and_nothing_else(tiny_dataset):
  config, meta = tiny_dataset
  flipped = _epoch(config, meta, 0)[0]['image']
  config = config.copy_and_resolve_references()
  config.data.flip = False
  plain = _epoch(config, meta, 0)[0]['image']
  mirrored = [np.allclose(f, p[:, ::-1]) and not np.allclose(f, p) for f, p in zip(flipped, plain)]
  same = [np.allclose(f, p) for f, p in zip(flipped, plain)]
  assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_process_shards_are_disjoint_and_complete(tiny_dataset):
  config, meta = tiny_dataset
  def paths(**kw):
    return {p for b in pipeline.gallery(config, 'test', **kw)
            for p, v in zip(b['file_path'], b['valid']) if v}
  everything, half0, half1 = paths(), paths(process_index=0, process_count=2), paths(
      process_index=1, process_count=2)
  assert len(everything) == meta.kept['test']['images']
  assert half0 | half1 == everything and not half0 & half1
  steps = [len(_epoch(config, meta, 0, process_index=i, process_count=2)) for i in (0, 1)]
  assert steps[0] == steps[1]  # hosts stay in step
  batch = _epoch(config, meta, 0, process_index=1, process_count=2)[0]
  assert batch['image'].shape[0] == config.train.batch_size // 2


def test_queries_and_gallery_carry_person_ids(tiny_dataset):
  config, meta = tiny_dataset
  query_ids = np.concatenate([b['person_id'][b['valid']] for b in pipeline.queries(
      config, meta, 'test')])
  gallery_ids = np.concatenate([b['person_id'][b['valid']] for b in pipeline.gallery(
      config, 'test')])
  assert len(query_ids) == meta.kept['test']['captions']
  assert set(query_ids) == set(gallery_ids) and len(set(gallery_ids)) == meta.kept['test'][
      'identities']


def test_bad_batch_or_split_is_reported(tiny_dataset):
  config, meta = tiny_dataset
  with pytest.raises(UserError, match='must divide evenly over 3 processes'):
    pipeline.TrainInput(config, meta, process_count=3)
  with pytest.raises(UserError, match="'dev'"):
    next(pipeline.gallery(config, 'dev'))
