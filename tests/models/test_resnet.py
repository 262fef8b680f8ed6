"""Our ResNet with converted torchvision weights gives torchvision's feature map."""
import jax
import numpy as np
import pytest

from dssl_jax import weights
from dssl_jax.errors import UserError
from dssl_jax.models.resnet import ResNet
from tests.helpers import reference

torch = reference('torch')
torchvision = reference('torchvision')


def _random_torchvision(depth: int, seed: int = 0):
  torch.manual_seed(seed)
  model = getattr(torchvision.models, f'resnet{depth}')(weights=None)
  with torch.no_grad():  # non-trivial BN statistics and affine, so a BN mix-up shows
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  return model.eval()


def _convert_via_files(model, tmp_path):
  """Saved as a real .pth, read back and converted as `python -m dssl_jax.weights` does."""
  torch.save(model.state_dict(), tmp_path / 'resnet.pth')
  variables = weights.convert_state_dict(weights.read_torch_state_dict(str(tmp_path / 'resnet.pth')))
  weights.save_npz(variables, str(tmp_path / 'resnet.npz'))
  return str(tmp_path / 'resnet.npz')


@pytest.mark.parametrize('depth,size', [(50, (384, 128)), (18, (97, 61))])
def test_feature_map_matches_torchvision(depth, size, tmp_path):
  reference = _random_torchvision(depth)
  ours = ResNet(depth)
  images = np.random.default_rng(1).normal(size=(2, 3, *size)).astype(np.float32)
  expected_vars = ours.init(__import__('jax').random.key(0), images.transpose(0, 2, 3, 1))
  variables = weights.load_backbone(_convert_via_files(reference, tmp_path), expected_vars)
  got = np.asarray(ours.apply(variables, images.transpose(0, 2, 3, 1)))
  with torch.no_grad():
    want = torch.nn.Sequential(*list(reference.children())[:-2])(torch.from_numpy(images))
  want = want.numpy().transpose(0, 2, 3, 1)
  assert got.shape == want.shape and ours.out_features == want.shape[-1]
  error = np.abs(got - want).max()
  print(f'resnet{depth} {size}: max abs error {error:.2e}, relative {error / np.abs(want).max():.2e}')
  assert error / np.abs(want).max() < 1e-4


def test_mismatched_weights_fail_with_one_clear_line(tmp_path):
  path = _convert_via_files(_random_torchvision(18), tmp_path)
  images = np.zeros((1, 64, 32, 3), np.float32)
  import jax  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match='names do not match.*config.model.depth'):
    weights.load_backbone(path, ResNet(50).init(jax.random.key(0), images))
  with pytest.raises(UserError, match=r'conv1/kernel has shape \(7, 7, 3, 64\).*needs \(7, 7, 3, 16\)'):
    weights.load_backbone(path, ResNet(18, width=16).init(jax.random.key(0), images))
  with pytest.raises(UserError, match='is a PyTorch file: convert it first'):
    weights.load_backbone(str(tmp_path / 'resnet.pth'), ResNet(18).init(jax.random.key(0), images))
  (tmp_path / 'broken.npz').write_bytes(b'not a zip')
  with pytest.raises(UserError, match='broken.npz.*cannot read'):
    weights.load_backbone(str(tmp_path / 'broken.npz'), ResNet(18).init(jax.random.key(0), images))


@pytest.mark.slow
def test_training_step_matches_torchvision(tmp_path):
  """Train mode, the whole network, in float64 (in float32 both frameworks' gradients through 53
  batch-norm layers of a random ResNet-50 agree only to ~1e-2): the input gradient, kernel
  gradients (7x7, 3x3, 1x1 and strided 1x1) and the updated BN statistics."""
  import jax  # pylint: disable=g-import-not-at-top
  reference = _random_torchvision(50).train().double()
  body = torch.nn.Sequential(*list(reference.children())[:-2])
  rng = np.random.default_rng(3)
  images = rng.normal(size=(2, 3, 96, 64))
  weights_map = rng.normal(size=(2, 3, 2, 2048))
  converted = _convert_via_files(reference, tmp_path)  # before torch's step updates BN statistics
  x_t = torch.from_numpy(images).requires_grad_()
  (body(x_t) * torch.from_numpy(weights_map.transpose(0, 3, 1, 2))).sum().backward()

  with jax.enable_x64(True):
    ours = ResNet(50, dtype=np.float64)
    variables = weights.load_backbone(converted, ours.init(jax.random.key(0),
                                                           images.transpose(0, 2, 3, 1)))
    def loss(params, x):
      out, updates = ours.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                                train=True, mutable=['batch_stats'])
      return (out * weights_map).sum(), updates['batch_stats']
    (grads, grad_x), stats = jax.grad(loss, argnums=(0, 1), has_aux=True)(
        variables['params'], images.transpose(0, 2, 3, 1))

  def assert_close(got, want, what):
    error = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    assert error < 1e-6, f'{what}: relative error {error:.1e}'
  kernel = lambda module: module.weight.grad.numpy().transpose(2, 3, 1, 0)
  assert_close(grad_x, x_t.grad.numpy().transpose(0, 2, 3, 1), 'input gradient')
  assert_close(grads['conv1']['kernel'], kernel(reference.conv1), 'conv1')
  assert_close(grads['layer3_1']['conv2']['kernel'], kernel(reference.layer3[1].conv2),
               'layer3_1.conv2')
  assert_close(grads['layer4_2']['conv3']['kernel'], kernel(reference.layer4[2].conv3),
               'layer4_2.conv3')
  assert_close(grads['layer2_0']['downsample_0']['kernel'],
               kernel(reference.layer2[0].downsample[0]), 'layer2_0.downsample.0')
  assert_close(stats['layer3_1']['bn2']['var'], reference.layer3[1].bn2.running_var.numpy(),
               'layer3_1.bn2 running var')
  assert_close(stats['bn1']['mean'], reference.bn1.running_mean.numpy(), 'bn1 running mean')


@pytest.mark.parametrize('depth', [18, 50])
def test_zero_init_residual_starts_every_block_as_the_identity(depth):
  """torchvision's zero_init_residual: the branch's last BN scale is 0, so a block without a
  downsample passes its (non-negative, post-ReLU) input through unchanged."""
  x = np.random.default_rng(0).normal(size=(2, 64, 32, 3)).astype(np.float32)
  for zero in (True, False):
    model = ResNet(depth, 8, zero_init_residual=zero)
    variables = model.init(jax.random.PRNGKey(0), x)
    _, inner = model.apply(variables, x, train=True, capture_intermediates=True,
                           mutable=['batch_stats', 'intermediates'])
    block_in = inner['intermediates']['layer2_0']['__call__'][0]  # layer2_1's input
    block_out = inner['intermediates']['layer2_1']['__call__'][0]
    assert np.allclose(block_out, block_in) == zero
    last = 'bn3' if depth == 50 else 'bn2'
    assert (np.asarray(variables['params']['layer3_1'][last]['scale']) == 0).all() == zero
