"""Grad-CAM: a model whose class evidence sits in one corner gets its heat map there."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from resnet_jax.evaluation import explain, prediction
from resnet_jax.interop import convert
from resnet_jax.models import resnet
from tests.conftest import REPO

SIZE, PATCH = 32, 8


def corner_pictures(rng, count):
  """Dim noise; class 0 has a bright patch top-left, class 1 the same patch bottom-right."""
  labels = np.arange(count) % 2
  pictures = rng.integers(0, 60, (count, SIZE, SIZE, 3)).astype(np.uint8)
  for picture, label in zip(pictures, labels):
    corner = slice(0, PATCH) if label == 0 else slice(SIZE - PATCH, SIZE)
    picture[corner, corner] = 255
  return pictures, labels


@pytest.fixture(scope="module")
def corner_model(tmp_path_factory):
  """resnet_tiny trained for a few steps to tell the two corners apart, saved as a workdir."""
  model = resnet.create_model("resnet_tiny", 2, "cifar", width=8)
  rng = np.random.default_rng(0)
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  optimizer = optax.adam(3e-3)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

  for _ in range(25):
    pictures, labels = corner_pictures(rng, 32)
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                (pictures / 255.0 - 0.5) / 0.25, labels)
  workdir = str(tmp_path_factory.mktemp("corner") / "run")
  convert.save_converted(jax.device_get({"params": params, "batch_stats": batch_stats}), workdir,
                         "resnet_tiny", "cifar", 8, 2, input_shape=(SIZE, SIZE, 3),
                         mean=(0.5,) * 3, std=(0.25,) * 3, class_names=("top_left", "bottom_right"))
  return workdir, float(loss)


@pytest.mark.slow
def test_the_heat_map_peaks_in_the_corner_that_holds_the_evidence(corner_model):
  workdir, loss = corner_model
  assert loss < 0.2  # The model did learn the corners; else the test would prove nothing.
  predictor = prediction.load_predictor(workdir)
  pictures, labels = corner_pictures(np.random.default_rng(1), 8)
  heat, classes = explain.grad_cam(predictor.model, predictor.variables,
                                   predictor.normalise(pictures))
  heat, classes = np.asarray(heat), np.asarray(classes)
  np.testing.assert_array_equal(classes, labels)
  assert heat.shape == (8, SIZE, SIZE) and heat.min() >= 0 and np.allclose(heat.max((1, 2)), 1)
  half = SIZE // 2
  for heat_HW, label in zip(heat, labels):
    y, x = np.unravel_index(np.argmax(heat_HW), heat_HW.shape)
    assert (y < half and x < half) if label == 0 else (y >= half and x >= half), (label, y, x)
    quadrants = [heat_HW[:half, :half].mean(), heat_HW[:half, half:].mean(),
                 heat_HW[half:, :half].mean(), heat_HW[half:, half:].mean()]
    assert np.argmax(quadrants) == (0 if label == 0 else 3), quadrants
  # Asking for the other class moves the map to the other corner.
  other, _ = explain.grad_cam(predictor.model, predictor.variables,
                              predictor.normalise(pictures[:1]), classes=jnp.array([1]))
  y, x = np.unravel_index(np.argmax(np.asarray(other)[0]), (SIZE, SIZE))
  assert y >= half and x >= half


@pytest.mark.slow
def test_cli_writes_one_heat_map_per_picture(corner_model, tmp_path):
  workdir, _ = corner_model
  pictures, _ = corner_pictures(np.random.default_rng(2), 2)
  files = []
  for i, picture in enumerate(pictures):
    folder = tmp_path / f"set{i}"
    folder.mkdir()
    files.append(str(folder / "same_name.png"))
    Image.fromarray(picture).save(files[-1])
  out = tmp_path / "maps"
  result = subprocess.run([sys.executable, "-m", "resnet_jax.predict", f"--workdir={workdir}",
                           f"--explain={out}", *files], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["same_name-1.png", "same_name.png"]
  with Image.open(out / "same_name.png") as image:
    assert image.size == (224, 224) and image.mode == "RGB"
  assert "wrote 2 Grad-CAM heat map(s)" in result.stdout
  (tmp_path / "a_file").write_text("")
  result = subprocess.run([sys.executable, "-m", "resnet_jax.predict", f"--workdir={workdir}",
                           f"--explain={tmp_path / 'a_file'}", *files], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "is a file" in result.stderr
  assert "Traceback" not in result.stderr
