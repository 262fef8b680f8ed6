"""open_clip checkpoints read without torch, the position-table resize, the converter command."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from dssl_jax import clip_weights
from dssl_jax import similarity as similarity_lib
from dssl_jax import state as state_lib
from dssl_jax.errors import UserError
from tests.helpers import reference

torch = reference('torch')
open_clip = reference('open_clip')
safetensors_torch = reference('safetensors.torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['clip_weights'] + "
                 "sys.argv[1:]; runpy.run_module('dssl_jax.clip_weights', run_name='__main__')")


def _small_clip(image_size=224):
  torch.manual_seed(0)
  return open_clip.model.CLIP(
      embed_dim=32, quick_gelu=True,
      vision_cfg={'image_size': image_size, 'patch_size': 16, 'width': 64, 'layers': 1,
                  'head_width': 32},
      text_cfg={'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1})


def test_safetensors_read_as_written(tmp_path):
  tensors = {'f32': torch.randn(3, 4), 'f16': torch.randn(5).half(),
             'bf16': torch.randn(2, 2).bfloat16(), 'i64': torch.arange(6).reshape(2, 3),
             'scalar': torch.tensor(1.5), 'empty': torch.zeros(0, 3)}
  safetensors_torch.save_file(tensors, tmp_path / 'x.safetensors', metadata={'format': 'pt'})
  got = clip_weights.read_safetensors(str(tmp_path / 'x.safetensors'))
  assert set(got) == set(tensors)
  for name, tensor in tensors.items():
    if tensor.dtype == torch.bfloat16:
      assert got[name].dtype == ml_dtypes.bfloat16
      np.testing.assert_array_equal(got[name].astype(np.float32), tensor.float().numpy())
    else:
      assert got[name].dtype == tensor.numpy().dtype, name
      np.testing.assert_array_equal(got[name], tensor.numpy())


def test_a_truncated_safetensors_file_is_one_line(tmp_path):
  safetensors_torch.save_file({'a': torch.randn(100)}, tmp_path / 'x.safetensors')
  data = (tmp_path / 'x.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(data[:20])
  with pytest.raises(UserError, match='cut.safetensors: not a readable .safetensors file'):
    clip_weights.read_safetensors(str(tmp_path / 'cut.safetensors'))


def test_positions_resize_as_irra_interpolates():
  """IRRA's resize: the 14x14 grid's rows through torch's bilinear interpolate (align_corners
  False, no antialiasing) to 24x8; the class token's row unchanged."""
  table = np.random.default_rng(0).normal(size=(1 + 14 * 14, 16)).astype(np.float32)
  grid = torch.from_numpy(table[1:]).reshape(1, 14, 14, 16).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=(24, 8), mode='bilinear')
  want = want.permute(0, 2, 3, 1).reshape(24 * 8, 16).numpy()
  got = clip_weights.resize_positions(table, (24, 8))
  np.testing.assert_array_equal(got[0], table[0])
  np.testing.assert_allclose(got[1:], want, atol=1e-5, rtol=0)
  assert clip_weights.resize_positions(got, (24, 8)) is got  # made for the grid: kept
  with pytest.raises(UserError, match='neither 1 \\+ 24x8'):
    clip_weights.resize_positions(table[:51], (24, 8))  # 50 patches: no square grid


@pytest.mark.parametrize('suffix', ['safetensors', 'bin'])
def test_converter_runs_without_torch_and_equals_the_in_process_conversion(suffix, tmp_path):
  model = _small_clip()
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  source = tmp_path / f'open_clip_model.{suffix}'
  if suffix == 'safetensors':
    safetensors_torch.save_file(state, source)
  else:
    torch.save(state, source)
  result = subprocess.run([sys.executable, '-c', WITHOUT_TORCH, str(source),
                           str(tmp_path / 'c.npz'), '--image_size=384,128'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'image positions for a 384x128 input' in result.stdout
  want = clip_weights.convert_state_dict({k: v.numpy() for k, v in state.items()}, (24, 8))
  with np.load(tmp_path / 'c.npz') as got:
    assert got['image/positional_embedding'].shape == (1 + 24 * 8, 64)
    flat = {'/'.join(k): v for k, v in _flatten(want)}
    assert set(got.files) == set(flat)
    for key, value in flat.items():
      np.testing.assert_array_equal(got[key], value, err_msg=key)


def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, (*prefix, key))
    else:
      yield (*prefix, key), value


def test_a_state_dict_that_is_not_clip_is_one_line():
  with pytest.raises(UserError, match='not an open_clip CLIP model'):
    clip_weights.convert_state_dict({'conv1.weight': np.zeros((64, 3, 7, 7))}, (24, 8))


def _tiny_clip(tmp_path, config):
  """A random open_clip CLIP at 64x32, its weights converted into tmp_path/clip.npz, and `config`
  set to the same CLIP (returns the open_clip model)."""
  from dssl_jax import weights  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = open_clip.model.CLIP(
      embed_dim=16, quick_gelu=True,
      vision_cfg={'image_size': (64, 32), 'patch_size': 16, 'width': 32, 'layers': 1,
                  'head_width': 16},
      text_cfg={'context_length': 24, 'vocab_size': 49408, 'width': 32, 'heads': 2,
                'layers': 1}).eval()
  converted = clip_weights.convert_state_dict(
      {k: v.detach().numpy() for k, v in model.state_dict().items()}, (4, 2))
  weights.save_npz(converted, str(tmp_path / 'clip.npz'))
  config.data.image_size, config.data.max_words = (64, 32), 24
  config.model.backbone, config.model.backbone_weights = 'clip', str(tmp_path / 'clip.npz')
  config.model.clip.update(image_width=32, image_layers=1, image_heads=2, text_width=32,
                           text_layers=1, text_heads=2, context=24, embed_dim=16,
                           bpe_path=open_clip.tokenizer.default_bpe())
  return model, converted


def test_training_starts_from_the_converted_weights(tiny_dataset, tmp_path):
  from dssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_train_config  # pylint: disable=g-import-not-at-top
  config = tiny_train_config(tiny_dataset[0])
  _, converted = _tiny_clip(tmp_path, config)
  model = state_lib.make_model(config, pipeline.dataset_meta(config.data))
  params = state_lib.create_train_state(config, model, state_lib.make_mesh()).params
  np.testing.assert_array_equal(params['backbone']['proj'], converted['image']['proj'])
  np.testing.assert_array_equal(params['text']['transformer']['resblocks_0']['c_fc']['kernel'],
                                converted['text']['transformer']['resblocks_0']['c_fc']['kernel'])
  config.model.clip.image_layers = 2
  with pytest.raises(UserError, match=r'missing .*resblocks_1.*check config.model.clip and '
                     'data.image_size'):
    state_lib.create_train_state(
        config, state_lib.make_model(config, pipeline.dataset_meta(config.data)),
        state_lib.make_mesh())


def test_zero_shot_similarity_is_open_clips_logits_per_text_up_to_scale(tmp_path):
  """config.eval.zero_shot ranks by cos(projected class token, projected end-of-text token): the
  Encoder's zero-shot features through Sim_TI give open_clip's logits_per_text over its scale."""
  from dssl_jax import evaluate  # pylint: disable=g-import-not-at-top
  from dssl_jax.data.formats import DatasetMeta  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_model_config  # pylint: disable=g-import-not-at-top
  config = tiny_model_config()
  reference, _ = _tiny_clip(tmp_path, config)
  config.eval.zero_shot = True
  assert similarity_lib.sim_ti_weights(config) == (0.0, 0.0)
  model = state_lib.make_model(config, DatasetMeta(['<pad>'], 3, {}, ()))
  mesh = state_lib.make_mesh()
  loaded = state_lib.zero_shot_variables(config, model, mesh)
  variables, which = loaded.variables, loaded.which
  assert which == f'zero-shot CLIP ({tmp_path / "clip.npz"})'
  rng = np.random.default_rng(0)
  images = rng.normal(size=(5, 64, 32, 3)).astype(np.float32)
  tokens = np.zeros((4, 24), np.int32)
  for row, length in enumerate((3, 7, 12, 24)):
    tokens[row, :length] = rng.integers(1, 49406, length)
    tokens[row, 0], tokens[row, length - 1] = 49406, 49407
  d = config.data
  encoder = evaluate.Encoder(model, mesh, zero_shot=True)
  gallery = encoder.gallery(variables, [{
      'image': images, 'valid': np.ones(5, bool), 'person_id': np.arange(5),
      'file_path': np.full(5, b'x.jpg', object)}])
  queries = encoder.queries(variables, [{
      'tokens': tokens, 'token_mask': tokens != 0, 'valid': np.ones(4, bool),
      'phrases': np.zeros((4, d.max_phrases, d.max_words), np.int32),
      'phrase_mask': np.zeros((4, d.max_phrases, d.max_words), bool),
      'person_id': np.arange(4), 'text': np.full(4, b'x', object)}])
  ours = similarity_lib.similarity({k: gallery[k] for k in evaluate.GALLERY_FEATURES},
                             {k: queries[k] for k in evaluate.QUERY_FEATURES},
                             *similarity_lib.sim_ti_weights(config))
  with torch.no_grad():
    image_features = reference.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                            normalize=True)
    text_features = reference.encode_text(torch.from_numpy(tokens.astype(np.int64)),
                                          normalize=True)
    logits_per_text = (reference.logit_scale.exp() * text_features @ image_features.T).numpy()
  scale = float(reference.logit_scale.detach().exp())
  np.testing.assert_allclose(ours * scale, logits_per_text, atol=2e-4 * scale, rtol=0)
  assert np.ptp(logits_per_text) > 0.1 * scale  # the scores differ enough to rank


def test_zero_shot_eval_ranks_the_test_split_without_a_checkpoint(tiny_dataset, tmp_path):
  from dssl_jax import modes  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_train_config  # pylint: disable=g-import-not-at-top
  config = tiny_train_config(tiny_dataset[0])
  _tiny_clip(tmp_path, config)
  config.eval.zero_shot = True
  modes.run(config, str(tmp_path / 'run'), 'eval')
  with open(tmp_path / 'run' / 'results.json') as f:
    results = json.load(f)
  assert results['zero_shot'] is True and results['evaluated'].startswith('zero-shot CLIP (')
  assert (results['lambda1'], results['lambda2']) == (0.0, 0.0)
  assert results['queries'] > 0 and 0 <= results['R1'] <= 100 and 'rerank' in results
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
  config.model.backbone_weights = 'scratch'
  with pytest.raises(UserError, match='zero_shot ranks with pre-trained CLIP features'):
    modes.run(config, str(tmp_path / 'run'), 'eval')
