import numpy as np
import pytest

from dssl_jax.data import augment as augment_lib
from dssl_jax.data import pipeline
from dssl_jax.errors import UserError


def _epoch(config, meta, epoch, **kwargs):
  return list(pipeline.train_input(config, meta, **kwargs).epoch(epoch))


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
  single = config.copy_and_resolve_references()
  single.data.input_threads = 1  # a thread pool of its own changes the speed, not the data
  for got, want in zip(_epoch(single, meta, 0), first, strict=True):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _with_augment(config, augment):
  """The host's tf.data augmentation (config.data.augment_on='host'), kept as the reference."""
  config = config.copy_and_resolve_references()
  config.data.augment, config.data.augment_on = augment, 'host'
  return config


def _train_images(config, meta, augment, epoch=0):
  return _epoch(_with_augment(config, augment), meta, epoch)[0]['image']


def test_flip_mirrors_some_images_and_nothing_else(tiny_dataset):
  config, meta = tiny_dataset
  flipped, plain = _train_images(config, meta, ('flip',)), _train_images(config, meta, ())
  mirrored = [np.allclose(f, p[:, ::-1]) and not np.allclose(f, p) for f, p in zip(flipped, plain)]
  same = [np.allclose(f, p) for f, p in zip(flipped, plain)]
  assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_crop_is_a_window_of_the_image_padded_with_black(tiny_dataset):
  config, meta = tiny_dataset
  cropped, plain = _train_images(config, meta, ('crop',)), _train_images(config, meta, ())
  pad = augment_lib.CROP_PADDING
  black = -np.array(pipeline.IMAGENET_MEAN) / np.array(pipeline.IMAGENET_STD)
  offsets = []
  for c, p in zip(cropped, plain):
    padded = np.broadcast_to(black, (p.shape[0] + 2 * pad, p.shape[1] + 2 * pad, 3)).copy()
    padded[pad:-pad, pad:-pad] = p
    found = [(y, x) for y in range(2 * pad + 1) for x in range(2 * pad + 1)
             if np.allclose(c, padded[y:y + p.shape[0], x:x + p.shape[1]], atol=1e-6)]
    assert found, 'a crop is not a window of the padded image'
    offsets.append(found[0])
  assert len(set(offsets)) > 3  # windows at several places, not the image itself each time


def test_erase_changes_pixels_only_inside_one_rectangle(tiny_dataset):
  config, meta = tiny_dataset
  erased, plain = _train_images(config, meta, ('erase',)), _train_images(config, meta, ())
  changed_images = 0
  for e, p in zip(erased, plain):
    changed = np.any(e != p, axis=-1)
    if not changed.any():
      continue
    changed_images += 1
    rows, cols = np.nonzero(changed)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert np.all(e[box] == 0)  # one rectangle, all of it the mean pixel (0 after normalizing)
    outside = np.ones(changed.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(e[outside], p[outside])
    area = (np.ptp(rows) + 1) * (np.ptp(cols) + 1) / changed.size
    assert 0.01 <= area <= 0.6  # 2-40% of the image, give or take the rounding of its sides
  assert 0 < changed_images < len(plain)  # p = 0.5: some images, not all


def test_augmentations_are_seeded_and_train_only(tiny_dataset):
  config, meta = tiny_dataset
  every = augment_lib.AUGMENTATIONS
  first, again = _train_images(config, meta, every), _train_images(config, meta, every)
  np.testing.assert_array_equal(first, again)
  other_seed = _with_augment(config, every)
  other_seed.seed += 1
  assert not np.array_equal(first, _epoch(other_seed, meta, 0)[0]['image'])
  for split in ('val', 'test'):
    gallery = [next(pipeline.gallery(_with_augment(config, a), split))['image']
               for a in ((), every)]
    np.testing.assert_array_equal(*gallery)
    queries = [next(pipeline.queries(_with_augment(config, a), meta, split)) for a in ((), every)]
    for key in ('tokens', 'phrases'):
      np.testing.assert_array_equal(queries[0][key], queries[1][key])
  with pytest.raises(UserError, match="config.data.augment: 'mixup' unknown"):
    pipeline.train_input(_with_augment(config, ('flip', 'mixup')), meta)


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
    pipeline.train_input(config, meta, process_count=3)
  with pytest.raises(UserError, match="'dev'"):
    next(pipeline.gallery(config, 'dev'))


def _decoded(config, where, memory_gb=8.0):
  config = config.copy_and_resolve_references()
  config.data.cache_decoded, config.data.decoded_memory_gb = where, memory_gb
  return config


def _pairs(batches) -> list[tuple]:
  """(label, tokens, phrases, uint8 image) of every pair, as bytes; float images un-normalized."""
  out = []
  for b in batches:
    images = b['image']
    if images.dtype != np.uint8:
      images = np.round((images * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN) * 255)
    for i in range(len(images)):
      out.append((int(b['label'][i]), b['tokens'][i].tobytes(), b['phrases'][i].tobytes(),
                  images[i].astype(np.uint8).tobytes()))
  return out


def test_every_place_of_the_decoded_images_gives_the_same_pairs(tiny_dataset):
  """Memory, the disk copy and decoding per batch: the same batches; each pair (image, caption
  ids, label) one that the host's tf.data path also gives."""
  config, meta = tiny_dataset
  want = _epoch(_decoded(config, 'memory'), meta, 1)
  for where in ('disk', 'none'):
    for got, batch in zip(_epoch(_decoded(config, where), meta, 1), want, strict=True):
      for key in batch:
        np.testing.assert_array_equal(got[key], batch[key], err_msg=f'{where}: {key}')
  host = set()
  for epoch in range(5):  # each epoch leaves out a few pairs (whole batches only)
    host.update(_pairs(_epoch(_with_augment(config, ()), meta, epoch)))
  assert set(_pairs(want)) <= host


def test_the_disk_copy_and_caption_ids_are_made_once_per_dataset(tiny_dataset, monkeypatch,
                                                                   capsys):
  config, meta = tiny_dataset
  pipeline.train_input(_decoded(config, 'disk'), meta)
  capsys.readouterr()

  def no_text_encoder(*_):
    raise AssertionError('caption ids computed again')
  monkeypatch.setattr(pipeline, '_text_encoder', no_text_encoder)
  again = pipeline.train_input(_decoded(config, 'auto', memory_gb=0), meta)
  assert again.where == 'disk' and isinstance(again.images, np.memmap)
  assert 'decoding' not in capsys.readouterr().out
  assert len(list(again.epoch(0))) == again.steps_per_epoch  # no text encoding per epoch either
  longer = _decoded(config, 'disk')
  longer.data.max_words += 1  # other caption ids: computed for this config
  with pytest.raises(AssertionError, match='computed again'):
    pipeline.train_input(longer, meta)


def test_auto_decodes_into_memory_what_fits_the_budget(tiny_dataset):
  config = _decoded(tiny_dataset[0], 'auto', memory_gb=1.0)
  height, width = config.data.image_size
  fits = 2**30 // (height * width * 3)
  assert pipeline.decoded_where(config, fits) == 'memory'
  assert pipeline.decoded_where(config, fits + 1) == 'disk'
  with pytest.raises(UserError, match="cache_decoded must be 'auto'"):
    pipeline.decoded_where(_decoded(config, 'gpu'), 10)
