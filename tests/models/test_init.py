"""conv_init="pytorch" against torch.nn.Conv2d's and nn.Linear's own default initialisation."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from resnet_jax.errors import UserError
from resnet_jax.config import configuration
from resnet_jax.models import build
from resnet_jax.train import steps
from tests.conftest import resolved_config, tiny_config


def _kernels(conv_init: str, width: int = 16) -> dict:
  config = resolved_config(tiny_config(model="resnet18", width=width, conv_init=conv_init),
                           size=16)
  variables = steps.init_variables_fn(config, build.create_model(config))()
  return {"/".join(p): np.asarray(v) for p, v in
          traverse_util.flatten_dict(jax.device_get(variables["params"])).items()}


@pytest.mark.slow
def test_pytorch_init_draws_as_torch_nn_defaults():
  torch = pytest.importorskip("torch", reason="needs PyTorch (the 'torch' extra)")
  ours = _kernels("pytorch")
  torchvision_like = _kernels("torchvision")
  torch.manual_seed(0)
  checked = 0
  for name, kernel in ours.items():
    if not name.endswith(("kernel", "fc/bias")):
      assert name.endswith(("scale", "bias")) and np.all(kernel == (1.0 if name.endswith(
          "scale") else 0.0)), name  # BatchNorm as torch's: weight 1, bias 0.
      continue
    if kernel.ndim == 4:  # HWIO
      h, w, i, o = kernel.shape
      draw = lambda: torch.nn.Conv2d(i, o, (h, w), bias=False).weight
    elif name == "fc/kernel":
      draw = lambda: torch.nn.Linear(*kernel.shape).weight
    else:  # fc/bias
      draw = lambda: torch.nn.Linear(ours["fc/kernel"].shape[0], kernel.shape[0]).bias
    # Enough of torch's draws (fresh layers of the same shape) to pin its bound and spread.
    reference = np.concatenate([draw().detach().numpy().ravel()
                                for _ in range(max(1, 20000 // kernel.size))])
    bound = np.abs(reference).max()
    assert np.abs(kernel).max() <= 1.001 * bound, name
    if kernel.size >= 100:
      assert np.abs(kernel).max() >= 0.9 * bound, name
      assert kernel.std() == pytest.approx(reference.std(), rel=0.15), name
      if kernel.ndim == 4 and kernel.shape[2] == kernel.shape[3]:
        # Where fan_in = fan_out, torchvision's normal is sqrt(6) times wider.
        assert torchvision_like[name].std() != pytest.approx(reference.std(), rel=0.15), name
    checked += 1
  assert checked >= 20


def test_unknown_conv_init_is_a_one_line_error():
  with pytest.raises(UserError, match="unknown conv_init 'xavier'"):
    configuration.validate(tiny_config(conv_init="xavier"))
