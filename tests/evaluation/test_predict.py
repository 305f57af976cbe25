"""Tests for resnet_jax.predict: file reading, agreement with model.apply, the CLI."""

import csv
import functools
import json
import os
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import augment, images
from resnet_jax.models import resnet
from resnet_jax.evaluation import prediction
from resnet_jax.checkpoints.checkpointing import Checkpointer
from resnet_jax.errors import UserError

from tests.conftest import REPO
CONFIG = {
    "model": "resnet_tiny", "stem": "cifar", "width": 8, "num_classes": 4,
    "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
    "image_size": 24,  # Differs from the 16x16 training images: predict must resize.
    "input_shape": [16, 16, 3], "class_names": ["cat", "dog", "ship", "frog"],
    "dataset": "test",
}


def _random_leaf(rng: np.random.Generator, path: tuple,
                 shape: jax.ShapeDtypeStruct) -> np.ndarray:
  """He-normal kernels and BN statistics near 1 and 0: outputs that vary, unsaturated."""
  name = path[-1].key
  if name == "kernel":
    value = rng.normal(0, (2 / np.prod(shape.shape[:-1])) ** 0.5, shape.shape)
  elif name in ("scale", "var"):
    value = rng.uniform(0.5, 1.5, shape.shape)
  else:
    value = rng.normal(0, 0.1, shape.shape)
  return value.astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, dict]:
  """A workdir with one checkpoint of a random tiny model, as the trainer writes it."""
  model = resnet.create_model(CONFIG["model"], CONFIG["num_classes"], CONFIG["stem"],
                              CONFIG["width"])
  # Shapes only: compiling the real initialisers takes XLA on CPU half a minute.
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  variables = jax.tree_util.tree_map_with_path(
      functools.partial(_random_leaf, np.random.default_rng(0)), shapes)
  workdir = str(tmp_path_factory.mktemp("workdir"))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  checkpointer.save(0, variables, CONFIG, force=True)
  checkpointer.close()
  return workdir, variables


def _direct_probabilities(variables: dict, images_BHWC: np.ndarray) -> np.ndarray:
  """Softmax of model.apply on uint8 images at the training resolution."""
  model = resnet.create_model(CONFIG["model"], CONFIG["num_classes"], CONFIG["stem"],
                              CONFIG["width"])
  x = augment.preprocess(images_BHWC, CONFIG["mean"], CONFIG["std"],
                                CONFIG["image_size"])
  return np.asarray(jax.nn.softmax(model.apply(variables, x, train=False), axis=-1))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, str]:
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(1)
  paths = {name: str(folder / name) for name in (
      "rgb.npy", "gray_float.npy", "big.png", "rgba.png", "corrupt.png")}
  np.save(paths["rgb.npy"], rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  np.save(paths["gray_float.npy"], rng.uniform(0, 1, (16, 16)))
  # A smooth 32x48 picture: halved to 16x24 and center-cropped, it should be its own 2x2 mean.
  y, x = np.mgrid[0:32, 0:48]
  big = np.stack([4 * y, 5 * x, 240 - 2 * x - 3 * y], axis=-1).astype(np.uint8)
  Image.fromarray(big).save(paths["big.png"])
  Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(paths["rgba.png"])
  with open(paths["big.png"], "rb") as f:
    png = f.read()
  with open(paths["corrupt.png"], "wb") as f:
    f.write(png[:len(png) // 2])  # A valid header, then nothing: fails on decode.
  return paths


def test_read_image_scales_the_shorter_side_and_crops_the_center(image_files):
  image = prediction.read_image(image_files["big.png"], (16, 16, 3))
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8
  y, x = np.mgrid[0:32, 0:48]
  big = np.stack([4 * y, 5 * x, 240 - 2 * x - 3 * y], axis=-1).astype(np.float64)
  halved = big.reshape(16, 2, 24, 2, 3).mean(axis=(1, 3))
  # Interior pixels are exact for a linear picture; the top and bottom rows feel the edge.
  np.testing.assert_allclose(image[1:-1], halved[1:-1, 4:20], atol=1.0)
  gray = prediction.read_image(image_files["gray_float.npy"], (16, 16, 1))
  expected = np.round(np.load(image_files["gray_float.npy"]) * 255)
  np.testing.assert_array_equal(gray[..., 0], expected)


def test_bad_arrays_are_refused_with_the_file_named(tmp_path):
  path = str(tmp_path / "too_bright.npy")
  np.save(path, np.full((16, 16, 3), 2.0))
  with pytest.raises(UserError, match=r"too_bright\.npy: float arrays must hold values in"):
    prediction.read_image(path, (16, 16, 3))


def _check_predictions(result: dict, top_k: int) -> None:
  probabilities = [p["probability"] for p in result["predictions"]]
  assert len(probabilities) == top_k
  assert probabilities == sorted(probabilities, reverse=True)
  assert sum(probabilities) <= 1 + 1e-6
  for p in result["predictions"]:
    assert p["class"] == CONFIG["class_names"][p["index"]]


def test_classify_files_agrees_with_model_apply(checkpoint, image_files):
  workdir, variables = checkpoint
  files = [image_files[n] for n in ("rgb.npy", "corrupt.png", "gray_float.npy", "big.png")]
  results = prediction.classify_files(prediction.load_predictor(workdir), files, top_k=3)
  assert [r["file"] for r in results] == files

  assert image_files["corrupt.png"] in results[1]["error"]
  assert results[1]["predictions"] == []
  gray = np.round(np.load(image_files["gray_float.npy"]) * 255).astype(np.uint8)
  inputs = np.stack([
      np.load(image_files["rgb.npy"]),
      np.repeat(gray[..., None], 3, axis=-1),
      prediction.read_image(image_files["big.png"], (16, 16, 3)),
  ])
  expected = _direct_probabilities(variables, inputs)
  # The random model must tell these images apart, or agreement would prove little.
  assert np.abs(expected - expected[0]).max() > 1e-3
  for result, row in zip([results[0], results[2], results[3]], expected):
    assert "error" not in result
    _check_predictions(result, top_k=3)
    order = np.argsort(-row)[:3]
    assert [p["index"] for p in result["predictions"]] == order.tolist()
    np.testing.assert_allclose([p["probability"] for p in result["predictions"]], row[order],
                               rtol=1e-5, atol=1e-6)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "resnet_jax.predict", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def test_cli_classifies_readable_files_and_exits_1_on_a_corrupt_one(checkpoint, image_files,
                                                                     tmp_path):
  workdir, _ = checkpoint
  output = tmp_path / "preds.json"
  files = [image_files[n] for n in ("rgb.npy", "corrupt.png", "rgba.png")]
  result = _run_cli(f"--workdir={workdir}", "--top_k=2", f"--output={output}", *files)
  assert result.returncode == 1, result.stderr
  assert f"error: {image_files['corrupt.png']}: cannot read it as an image" in result.stderr
  assert "Traceback" not in result.stderr
  written = json.loads(output.read_text())
  assert [r["file"] for r in written] == files
  in_process = prediction.classify_files(prediction.load_predictor(workdir), files, top_k=2)
  for from_cli, expected in zip([written[0], written[2]], [in_process[0], in_process[2]]):
    _check_predictions(from_cli, top_k=2)
    assert from_cli["predictions"][0]["class"] in result.stdout
    assert [p["index"] for p in from_cli["predictions"]] == [
        p["index"] for p in expected["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in from_cli["predictions"]],
                               [p["probability"] for p in expected["predictions"]], rtol=1e-5)
  assert "cannot read it as an image" in written[1]["error"]


def test_cli_missing_checkpoint_is_one_line_and_exit_2(tmp_path, image_files):
  result = _run_cli(f"--workdir={tmp_path / 'absent'}", image_files["rgb.npy"])
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "does not exist" in errors[0]
  assert "Traceback" not in result.stderr


def test_cli_checkpoint_that_is_a_file_is_one_line_and_exit_2(image_files):
  result = _run_cli(f"--checkpoint={image_files['rgb.npy']}", image_files["rgb.npy"])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --checkpoint={image_files['rgb.npy']} is a file, not a folder: pass the workdir "
      "that training or resnet_jax.convert wrote, or a checkpoint folder inside it"]


# Folders, batches, CSV.


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> tuple[str, list[str]]:
  """PNG, JPEG and .npy images among a .txt, hidden files and folders, and a subfolder."""
  root = tmp_path_factory.mktemp("mixed")
  rng = np.random.default_rng(2)
  (root / "sub" / "deeper").mkdir(parents=True)
  (root / ".cache").mkdir()
  picture = lambda: Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
  picture().save(root / "b.png")
  picture().save(root / "a.JPG", quality=95)
  picture().save(root / "sub" / "c.jpeg")
  picture().save(root / "sub" / "deeper" / "d.png")
  np.save(root / "sub" / "e.npy", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  picture().save(root / ".hidden.png")
  picture().save(root / ".cache" / "f.png")
  (root / "notes.txt").write_text("not an image")
  (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  expected = [root / "a.JPG", root / "b.png", root / "sub" / "broken.png",
              root / "sub" / "c.jpeg", root / "sub" / "deeper" / "d.png", root / "sub" / "e.npy"]
  return str(root), [str(p) for p in expected]


def test_folders_expand_to_their_images_recursively_and_sorted(mixed_folder, image_files,
                                                               tmp_path):
  root, expected = mixed_folder
  assert prediction.expand_paths([root]) == expected
  # Files named on the command line are taken whatever they are, in the order given.
  assert prediction.expand_paths([image_files["rgb.npy"], root, f"{root}/notes.txt"]) == [
      image_files["rgb.npy"], *expected, f"{root}/notes.txt"]
  # A hidden folder named on the command line is searched like any other.
  assert prediction.expand_paths([os.path.join(root, ".cache")]) == [
      os.path.join(root, ".cache", "f.png")]
  no_images = tmp_path / "text_only"
  no_images.mkdir()
  (no_images / "readme.txt").write_text("")
  with pytest.raises(UserError, match=r"^folder .*text_only holds no image files \(\.png "):
    prediction.expand_paths([root, str(no_images)])


def test_batches_give_the_same_predictions_and_csv_and_json_are_written(checkpoint, mixed_folder,
                                                                        tmp_path):
  workdir, _ = checkpoint
  root, files = mixed_folder
  predictor = prediction.load_predictor(workdir)
  one_batch = prediction.classify_files(predictor, prediction.expand_paths([root]), top_k=2)
  in_pairs = prediction.classify_files(predictor, files, top_k=2, batch_size=2)
  assert [r["file"] for r in one_batch] == [r["file"] for r in in_pairs] == files
  for a, b in zip(one_batch, in_pairs):
    assert a.get("error") == b.get("error")
    np.testing.assert_allclose([p["probability"] for p in a["predictions"]],
                               [p["probability"] for p in b["predictions"]], rtol=1e-5)
  assert "broken.png: cannot read it as an image" in one_batch[2]["error"]

  prediction.write_results(str(tmp_path / "preds.json"), one_batch)
  assert json.loads((tmp_path / "preds.json").read_text()) == one_batch
  prediction.write_results(str(tmp_path / "preds.csv"), one_batch)
  with open(tmp_path / "preds.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["file", "class_1", "probability_1", "class_2", "probability_2", "error"]
  assert [row["file"] for row in rows] == files
  for row, result in zip(rows, one_batch):
    if "error" in result:
      assert row["error"] == result["error"] and row["class_1"] == row["probability_2"] == ""
      continue
    assert row["error"] == ""
    assert [row["class_1"], row["class_2"]] == [p["class"] for p in result["predictions"]]
    assert [float(row["probability_1"]), float(row["probability_2"])] == [
        p["probability"] for p in result["predictions"]]


def test_output_and_checkpoint_paths_are_checked_in_one_line(tmp_path, image_files):
  for output, problem in [(tmp_path / "preds.txt", "has the unknown extension '.txt': name it "
                           "FILE.json or FILE.csv"),
                          (tmp_path / "absent" / "p.csv", "is in no existing directory"),
                          (tmp_path / "preds", "unknown extension '(none)'"),
                          (tmp_path, "is a directory")]:
    with pytest.raises(UserError, match=re.escape(problem)):
      prediction.check_output(str(output))
  (tmp_path / "dir.csv").mkdir()
  with pytest.raises(UserError, match="dir.csv is a directory"):
    prediction.check_output(str(tmp_path / "dir.csv"))
  with pytest.raises(UserError, match=r"^--workdir=.*rgb\.npy is a file, not a folder: pass"):
    prediction.checkpoint_path(image_files["rgb.npy"], None)


# Large images: decoded reduced, limited without Pillow's warning.


def test_jpeg_is_decoded_reduced_and_matches_a_full_decode(tmp_path, monkeypatch):
  y, x = np.mgrid[0:480, 0:640]
  smooth = np.stack([y * 255 // 480, x * 255 // 640, (x + y) * 255 // 1120], -1).astype(np.uint8)
  path = str(tmp_path / "large.jpg")
  Image.fromarray(smooth).save(path, quality=95)
  decoded = []
  check_size = prediction._check_size
  monkeypatch.setattr(prediction, "_check_size", lambda p, w, h: (decoded.append((w, h)),
                                                                 check_size(p, w, h)))
  image = prediction.read_image(path, (16, 16, 3))
  assert decoded == [(80, 60)]  # 1/8 scale: still covers 16x16.
  with Image.open(path) as full:
    expected = images.frame(full.convert("RGB"), 16, 16).astype(np.float64)
  assert np.abs(image - expected).mean() < 2


def test_images_above_the_limit_are_refused_by_name_without_pillows_warning(tmp_path,
                                                                            monkeypatch):
  path = str(tmp_path / "wide.png")
  Image.fromarray(np.zeros((40, 300, 3), np.uint8)).save(path)
  # Pillow's own limit, lowered so that it would warn (and refuse above twice as much).
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Any warning fails the test.
    assert prediction.read_image(path, (16, 16, 3)).shape == (16, 16, 3)
    monkeypatch.setattr(prediction, "MAX_PIXELS", 10_000)
    with pytest.raises(UserError) as info:
      prediction.read_image(path, (16, 16, 3))
  assert str(info.value) == (f"{path}: 300x40 pixels is more than predict decodes (0.01 "
                             "megapixels, 100x100): downscale it first")
  assert Image.MAX_IMAGE_PIXELS == 5000  # Restored.


def test_a_checkpoint_of_another_network_is_one_line_not_a_key_error(tmp_path):
  workdir = str(tmp_path / "other")
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  checkpointer.save(0, {"params": {"dense": {"kernel": np.ones((3, 2), np.float32)}},
                        "batch_stats": {}}, {"dataset": "test"}, force=True)
  checkpointer.close()
  with pytest.raises(UserError, match=r"holds no ResNet that resnet_jax knows \(its parameters "
                                      r"are dense\)"):
    prediction.load_predictor(workdir)
