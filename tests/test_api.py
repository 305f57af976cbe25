"""The public API at the package root: what a notebook imports, and the README's example."""

import os
import subprocess
import sys

import numpy as np
import pytest

import resnet_jax
from tests.conftest import REPO
from tests.evaluation.test_predict import _direct_probabilities, checkpoint  # noqa: F401 (a fixture)


def test_every_public_name_resolves_and_is_listed():
  assert resnet_jax.__all__ == sorted(resnet_jax.__all__)
  for name in resnet_jax.__all__:
    assert getattr(resnet_jax, name) is not None, name
  with pytest.raises(AttributeError, match="no attribute 'train_step'"):
    resnet_jax.train_step  # noqa: B018  Internal: not part of the API.


def test_importing_the_package_loads_no_jax():
  code = "import sys, resnet_jax; print('jax' in sys.modules, 'tensorflow' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_readme_example_predicts_and_moves_weights_both_ways(checkpoint):  # noqa: F811
  workdir, variables = checkpoint
  predictor = resnet_jax.load_predictor(workdir)
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), np.uint8)
  probabilities = resnet_jax.predict(predictor, images)
  np.testing.assert_allclose(probabilities, _direct_probabilities(variables, images), atol=1e-5)
  np.testing.assert_allclose(resnet_jax.predict(workdir, images[0]), probabilities[0], atol=1e-6)

  loaded, config, _ = resnet_jax.load_variables(workdir)
  state_dict, arch = resnet_jax.to_torch_state_dict(loaded, config)
  assert (arch.model, arch.width, arch.num_classes) == ("resnet_tiny", 8, 4)
  back = resnet_jax.from_torch_state_dict(state_dict, arch.model, arch.stem, arch.width,
                                          arch.num_classes)
  np.testing.assert_array_equal(back["params"]["conv1"]["kernel"],
                                np.asarray(variables["params"]["conv1"]["kernel"]))


def test_predict_refuses_arrays_of_another_size(checkpoint):  # noqa: F811
  workdir, _ = checkpoint
  with pytest.raises(resnet_jax.UserError, match=r"do not match the model's input \(16, 16, 3\)"):
    resnet_jax.predict(workdir, np.zeros((2, 20, 20, 3), np.uint8))


def test_config_helpers_round_trip():
  config = resnet_jax.get_config()
  assert "model" in config and "batch_size" in config
  model = resnet_jax.create_model("resnet18", num_classes=10)
  assert model.num_classes == 10 and "resnet50" in resnet_jax.MODELS


@pytest.mark.parametrize("script,message", [
    ("resnet-jax-predict", "error: pass image files or folders to classify"),
    ("resnet-jax-export", "error: pass --workdir=DIR"),
    ("resnet-jax-train", "error: pass --config=configs/<name>.py"),
])
def test_console_scripts_run_the_programs(script, message, tmp_path):
  path = os.path.join(os.path.dirname(sys.executable), script)
  if not os.path.exists(path):
    pytest.skip(f"{script} is not installed: pip install -e . installs it")
  result = subprocess.run([path], cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(message), (
      result.stderr[-2000:])
