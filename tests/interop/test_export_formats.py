"""ONNX, LiteRT and StableHLO files: each run by its own runtime gives resnet_jax's logits, for
one architecture per block type, both stems, grey and RGB, with and without the model-side
resize; PyTorch's modules hold torchvision's and timm's state_dicts."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.checkpoints.checkpointing import Checkpointer
from resnet_jax.cli import export as cli
from resnet_jax.data import augment
from resnet_jax.evaluation import prediction
from resnet_jax.interop import artifacts, convert, runtimes
from resnet_jax.models import resnet
from tests.conftest import import_torch
from tests.evaluation.test_predict import _random_leaf

# (model, stem, width, input side, channels, config.image_size): one per block type. The
# resize runs up (28 -> 32), down (72 -> 48) and not at all; 72 px gives ResNet-D's pooled
# shortcut odd sizes.
ARCHITECTURES = {
    "basic": ("resnet_tiny", "cifar", 8, 28, 1, 32),
    "bottleneck": ("resnet50", "imagenet", 8, 32, 3, 0),
    "resnext_grouped": ("resnext50_32x4d", "imagenet", 16, 72, 3, 48),
    "resnet_d": ("resnet50d", "imagenet", 8, 72, 3, 0),
    "squeeze_excite": ("seresnet50", "cifar", 8, 16, 3, 0),
}
FAST = ("basic",)  # With EMA weights; the rest raw.
NUM_CLASSES = 5


def variables_for(model_name: str, stem: str, width: int, channels: int, seed: int = 0) -> dict:
  """Random weights (He-normal kernels, BN statistics off 0 and 1) as numpy arrays."""
  model = resnet.create_model(model_name, NUM_CLASSES, stem, width)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32))
  return jax.tree_util.tree_map_with_path(
      functools.partial(_random_leaf, np.random.default_rng(seed)), shapes)


def write_run(directory, model_name: str, stem: str, width: int, side: int, channels: int,
              image_size: int, ema: bool = False, **fields) -> str:
  """A workdir holding one checkpoint of random weights and the config a run would save."""
  variables = variables_for(model_name, stem, width, channels)
  if ema:  # The run's EMA weights: what every format must carry.
    variables = {**variables, "ema": variables_for(model_name, stem, width, channels, seed=3)}
  config = {"model": model_name, "stem": stem, "width": width, "num_classes": NUM_CLASSES,
            "input_shape": [side, side, channels], "image_size": image_size,
            "mean": [0.3, 0.45, 0.5][:channels], "std": [0.2, 0.25, 0.3][:channels],
            "class_names": [f"kind {i}" for i in range(NUM_CLASSES)], **fields}
  checkpointer = Checkpointer(os.path.join(str(directory), "checkpoints"))
  checkpointer.save(7, variables, config, force=True)
  checkpointer.close()
  return str(directory)


def pictures(side: int, channels: int, batch: int = 3, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, side, side, channels), np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def assert_matches_resnet_jax(logits: np.ndarray, workdir: str, images: np.ndarray) -> None:
  """Logits within 1e-4 of their scale of the JAX model on the same preprocessed input, and
  probabilities within 1e-5 of `resnet_jax.predict`'s."""
  from resnet_jax.checkpoints.restore import load_model
  loaded = load_model(workdir)
  config = loaded.config
  x = augment.preprocess(images, config["mean"], config["std"], config["image_size"])
  expected = np.asarray(loaded.model.apply(loaded.variables, x, train=False))
  scale = np.abs(expected).max()
  if len(images) > 1:  # The pictures must matter, or a wrong layout could hide behind fc's bias.
    assert np.abs(expected - expected.mean(axis=0)).max() > 1e-2 * scale
  assert logits.shape == expected.shape and logits.dtype == np.float32
  assert np.abs(logits - expected).max() < 1e-4 * scale
  probabilities = prediction.load_predictor(workdir).probabilities(images)
  assert np.abs(softmax(logits) - probabilities).max() < 1e-5


def _params(formats=("onnx", "tflite", "stablehlo")):
  """Slow but StableHLO's basic block: PyTorch's exporter and TFLite's converter take 10-30 s."""
  fast = lambda f, kind: f == "stablehlo" and kind in FAST
  return [pytest.param(f, kind, marks=() if fast(f, kind) else pytest.mark.slow, id=f"{f}-{kind}")
          for kind in ARCHITECTURES for f in formats]


def _requires(name: str) -> None:
  for module, how in artifacts.TOOLCHAINS[name]:
    pytest.importorskip(module, reason=f"--format={name} needs {module} ({how})")


@pytest.mark.parametrize("name, kind", _params())
def test_each_format_gives_resnet_jax_logits_in_its_own_runtime(tmp_path, name, kind):
  _requires(name)
  if name == "tflite":
    from jax.experimental import jax2tf  # noqa: F401  Not skipped: the day it goes, this fails.
  model_name, stem, width, side, channels, image_size = ARCHITECTURES[kind]
  workdir = write_run(tmp_path / "run", model_name, stem, width, side, channels, image_size,
                      ema=kind in FAST)
  output = str(tmp_path / f"model{artifacts.EXTENSIONS[name]}")
  contract = cli.export_file(workdir, name, output)
  assert contract["source"]["weights"] == ("ema" if kind in FAST else "raw")
  run = runtimes.load_runner(output)
  for batch in (1, 4):  # The batch dimension is dynamic.
    images = pictures(side, channels, batch, seed=batch)
    assert_matches_resnet_jax(run(images), workdir, images)


def test_the_contract_says_what_a_caller_does_to_a_picture(tmp_path):
  workdir = write_run(tmp_path / "run", "resnet_tiny", "cifar", 8, 28, 1, 32,
                      eval_crop_fraction=0.875)
  output = str(tmp_path / "model.stablehlo")
  cli.export_file(workdir, "stablehlo", output)
  with open(output + ".json") as f:
    contract = json.load(f)
  assert contract["format"] == "stablehlo" and contract["file"] == "model.stablehlo"
  assert contract["input"] == {"name": "images", "shape": [None, 28, 28, 1], "dtype": "uint8",
                               "layout": "NHWC", "channels": "grey",
                               "values": "pixel values 0-255"}
  assert contract["framing"]["crop_fraction"] == 0.875
  assert contract["framing"]["cover"] == [32, 32]  # round(28 / 0.875)
  inside = contract["in_the_model"]
  assert (inside["mean"], inside["std"], inside["resize_to"]) == ([0.3], [0.2], 32)
  assert inside["network_input"] == [None, 32, 32, 1]
  assert contract["output"]["shape"] == [None, NUM_CLASSES]
  assert contract["class_names"] == [f"kind {i}" for i in range(NUM_CLASSES)]
  assert contract["source"]["step"] == 7
  assert contract["quantization"] is None


@pytest.mark.slow
def test_stablehlo_runs_in_a_process_that_cannot_import_resnet_jax(tmp_path):
  workdir = write_run(tmp_path / "run", "resnet_tiny", "imagenet", 8, 32, 3, 0)
  output = str(tmp_path / "model.stablehlo")
  cli.export_file(workdir, "stablehlo", output)
  images = pictures(32, 3, batch=5)
  np.save(tmp_path / "pictures.npy", images)
  # -I: no PYTHONPATH, no script folder on sys.path; the editable install's finder would
  # still find resnet_jax, so the name is blocked outright, and the test asserts it.
  code = f"""
import sys
sys.modules["resnet_jax"] = None
try:
  import resnet_jax
  sys.exit("resnet_jax could be imported")
except ImportError:
  pass
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open({output!r}, "rb").read()))
logits = exported.call(np.load({str(tmp_path / 'pictures.npy')!r}))
np.save({str(tmp_path / 'logits.npy')!r}, np.asarray(logits))
loaded = sorted(m for m in ("flax", "optax", "orbax", "resnet_jax", "torch", "tensorflow")
                if sys.modules.get(m) is not None)
print("loaded:", loaded)
"""
  result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path),
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "loaded: []" in result.stdout
  assert_matches_resnet_jax(np.load(tmp_path / "logits.npy"), workdir, images)


# PyTorch's modules against torchvision's and timm's own (width 64, as they build them).


@pytest.mark.parametrize("name, source", [("resnet18", "torchvision"),
                                          ("resnext50_32x4d", "torchvision"),
                                          ("resnet50d", "timm"), ("seresnet50", "timm")])
def test_torch_modules_hold_the_reference_state_dicts_and_give_their_logits(name, source):
  torch = import_torch()
  from tests.interop.test_family import NUM_CLASSES as CLASSES, reference_model, reference_logits
  from resnet_jax.interop import torch_resnet
  reference = reference_model(name, source)
  ours = torch_resnet.ResNet(convert.Architecture(name, "imagenet", 64, CLASSES))
  theirs = reference.state_dict()
  assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
      k: tuple(v.shape) for k, v in theirs.items()}
  ours.load_state_dict(theirs, strict=True)
  ours.eval()
  images = np.random.default_rng(0).normal(size=(2, 72, 72, 3)).astype(np.float32)
  with torch.no_grad():
    got = ours(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  expected = reference_logits(reference, images)
  assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()


def test_resize_matrices_are_jax_image_resize():
  from resnet_jax.interop import onnx_export
  x = np.random.default_rng(0).normal(size=(2, 28, 20, 3)).astype(np.float32)
  for out in (32, 12):  # Up, and down (antialiased).
    expected = np.asarray(jax.image.resize(x, (2, out, out, 3), "bilinear"))
    got = np.einsum("sh,tw,bhwc->bstc", onnx_export.resize_matrix(28, out),
                    onnx_export.resize_matrix(20, out), x)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_checkpoint_without_normalisation_is_refused_before_writing(tmp_path):
  from resnet_jax.errors import UserError
  variables = variables_for("resnet_tiny", "cifar", 8, 3)
  checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints"))
  checkpointer.save(0, variables, {"model": "resnet_tiny", "stem": "cifar"}, force=True)
  checkpointer.close()
  with pytest.raises(UserError, match="has no 'input_shape'"):
    cli.export_file(str(tmp_path / "run"), "stablehlo", str(tmp_path / "m.stablehlo"))
  assert sorted(os.listdir(tmp_path)) == ["run"]
