"""Shared test helpers: a tiny config, mock-data runs of the real command."""

import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for the session: subprocesses reuse compiled steps."""
  path = str(tmp_path_factory.mktemp("xla_cache"))
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield path


def tiny_config(**overrides):
  """A seconds-long config: resnet_tiny of width 4 on mock CIFAR-10."""
  from resnet_jax.config import default_config
  config = default_config.get_config()
  config.model = "resnet_tiny"
  config.width = 4
  config.batch_size = 16
  config.num_epochs = 1.0
  config.warmup_epochs = 0.5
  config.log_every_steps = 2
  config.learning_rate = 0.05
  config.update(overrides)
  return config


def tiny_flags(workdir, data_dir, **overrides) -> list[str]:
  """Command-line flags for a tiny run of the real command."""
  values = {"model": "resnet_tiny", "width": 4, "batch_size": 16, "num_epochs": 1.0,
            "warmup_epochs": 0.5, "log_every_steps": 2, "data_dir": str(data_dir)}
  values.update(overrides)
  return ["--config=configs/tiny.py", f"--workdir={workdir}", "--quiet"] + [
      f"--config.{k}={v}" for k, v in values.items()]


def resolved_config(config=None, size=16, num_train_examples=64, **overrides):
  """A config resolved as if 3-channel size x size images of 10 classes had loaded."""
  from resnet_jax.config import configuration
  config = config if config is not None else tiny_config()
  config.update(overrides)
  return configuration.resolve(config, {
      "num_classes": 10, "class_names": [f"class_{i}" for i in range(10)],
      "mean": (0.5,) * 3, "std": (0.25,) * 3, "input_shape": (size, size, 3),
      "num_train_examples": num_train_examples})


def write_mock_cifar10(data_dir, num_examples: int) -> None:
  """Puts mock CIFAR-10 into data_dir as the input pipeline's decoded cache, once."""
  import tensorflow_datasets as tfds
  from resnet_jax.data import memory
  if os.path.isdir(os.path.join(data_dir, "resnet_jax_cache")):
    return
  with tfds.testing.mock_data(num_examples=num_examples):
    for split in ("train", "test"):
      arrays, meta = memory.load_split("cifar10", split, str(data_dir))
      memory._write_cache(memory._cache_path(str(data_dir), "cifar10", split),
                                  arrays, meta)


def largest_state_file(step_dir) -> str:
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for name in names]
  return max(files, key=os.path.getsize)


def damage_checkpoint(step_dir, how: str = "truncated") -> None:
  """Damages the largest data file of a checkpoint's state."""
  path = largest_state_file(step_dir)
  if how == "truncated":  # A write cut short.
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == "deleted":
    os.remove(path)
  else:  # One flipped bit in the middle: same size, other numbers.
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))


def final_state(workdir) -> tuple[int, dict]:
  """(latest step, its saved state as host arrays)."""
  from resnet_jax.checkpoints import checkpointing
  manager = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
  step = manager.latest_step()
  return step, jax.device_get(manager.restore(step))


def assert_resume_is_exact(config, base, monkeypatch, stop_at_call: int, num_steps: int) -> None:
  """Trains `config` straight, and again stopped by SIGTERM at a train-step call then resumed;
  asserts both end with bit-identical parameters, statistics and optimizer state."""
  import signal
  from resnet_jax.train import steps, trainer
  from resnet_jax.errors import Stopped
  trainer.train_and_evaluate(config, str(base / "straight"), quiet=True)
  compile_step = steps.compile_train_step
  calls = {"n": 0}

  def compile_and_interrupt(*args, **kwargs):
    step = compile_step(*args, **kwargs)

    def interrupted(state, data):
      calls["n"] += 1
      if calls["n"] == stop_at_call:
        os.kill(os.getpid(), signal.SIGTERM)
      return step(state, data)
    return interrupted

  monkeypatch.setattr(steps, "compile_train_step", compile_and_interrupt)
  with pytest.raises(Stopped) as stopped:
    trainer.train_and_evaluate(config, str(base / "resumed"), quiet=True)
  assert stopped.value.exit_code == 143
  assert final_state(base / "resumed")[0] == stop_at_call  # Saved at the signal.
  monkeypatch.setattr(steps, "compile_train_step", compile_step)
  trainer.train_and_evaluate(config, str(base / "resumed"), quiet=True)
  (step_a, straight), (step_b, resumed) = final_state(base / "straight"), final_state(base / "resumed")
  assert step_a == step_b == num_steps
  chex.assert_trees_all_equal(straight, resumed)


def assert_same_logits(expected, variables, model_name, num_classes, stem, width, images_BHWC):
  """resnet_jax's logits for variables equal PyTorch's `expected` within 1e-4 of their scale."""
  from resnet_jax.models import resnet
  model = resnet.create_model(model_name, num_classes, stem, width)
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images_BHWC))
  scale = np.abs(expected).max()
  # The images must matter, or a wrong mapping could hide behind the fc bias.
  assert np.abs(expected - expected.mean(axis=0)).max() > 1e-2 * scale
  assert np.abs(logits - expected).max() < 1e-4 * scale


def run_main(args, mock_examples=64, timeout=300, env=None, check=None):
  """Runs the real command on mock data in a subprocess; returns CompletedProcess."""
  command = [sys.executable, os.path.join(REPO, "tests", "mock_main.py"),
             f"--mock_examples={mock_examples}", *map(str, args)]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
  if check is not None and result.returncode != check:
    raise AssertionError(f"exit {result.returncode}, expected {check}\n"
                         f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
  return result


# (mode, file extension) cycled over the images of each class.
_KINDS = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".gif"), ("RGB", ".bmp"),
          ("P", ".png")]


def write_image_folder(root, split: str = "train",
                       class_names: tuple[str, ...] = ("zebra", "cat", "dog house"),
                       per_class: int = 4, size: int | None = None, seed: int = 0) -> list[str]:
  """Writes ROOT/split/<class>/ images in mixed modes and formats; returns the class names sorted.

  Sizes vary between 8 and 40 px unless `size` fixes them. Beside the images it
  writes what a FolderSource must ignore: hidden files and folders, a notes.txt.
  The last image of each class sits in a nested subfolder.
  """
  rng = np.random.default_rng(seed)
  for name in class_names:
    class_dir = os.path.join(root, split, name)
    os.makedirs(os.path.join(class_dir, "more"), exist_ok=True)
    for i in range(per_class):
      mode, ext = _KINDS[i % len(_KINDS)]
      height, width = (size, size) if size else rng.integers(8, 41, 2)
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      image = Image.fromarray(pixels).convert(mode)
      folder = os.path.join(class_dir, "more") if i == per_class - 1 else class_dir
      path = os.path.join(folder, f"{i:03d}{ext}")
      if mode == "P" and ext == ".png":
        image.save(path, transparency=0)
      else:
        image.save(path)
    with open(os.path.join(class_dir, "notes.txt"), "w") as f:
      f.write("not an image\n")
    Image.new("RGB", (8, 8)).save(os.path.join(class_dir, ".hidden.jpg"))
    os.makedirs(os.path.join(class_dir, ".cache"), exist_ok=True)
    Image.new("RGB", (8, 8)).save(os.path.join(class_dir, ".cache", "thumb.jpg"))
  os.makedirs(os.path.join(root, split, ".ipynb_checkpoints"), exist_ok=True)
  return sorted(class_names)


def import_torch():
  """PyTorch, or a skip saying it is missing: the reference tests need it, the rest do not."""
  return pytest.importorskip("torch", reason="needs PyTorch (the 'torch' extra)")


def import_torchvision():
  """torchvision's pure-Python parts (models, transforms.v2), or a skip saying what is missing.

  The torchvision wheel here may be built for another torch: its C ops fail to
  register, so the module that registers them is stubbed before the import.
  """
  import types
  import_torch()
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  return pytest.importorskip("torchvision", reason="needs torchvision (pip install torchvision)")


def import_timm():
  """timm (which imports torchvision), or a skip saying what is missing."""
  import_torchvision()
  return pytest.importorskip("timm", reason="needs timm (pip install timm --no-deps)")


def randomize_torch_model(net, seed: int) -> None:
  """He-normal convolutions, non-trivial BN affine parameters and running statistics, eval mode."""
  import torch
  from torch import nn
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.Conv2d):
        m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=generator)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.2, generator=generator)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=generator)
        m.bias.normal_(0.0, 0.2, generator=generator)
        m.running_mean.normal_(0.0, 0.3, generator=generator)
        m.running_var.uniform_(0.5, 2.0, generator=generator)
      elif isinstance(m, nn.Linear):
        m.weight.normal_(0.0, 1.0 / m.in_features ** 0.5, generator=generator)
        m.bias.normal_(0.0, 0.1, generator=generator)
  net.eval()


def relative_logit_difference(expected, variables, model_name, num_classes, stem, width,
                              images_BHWC) -> float:
  """max |ours - theirs| / max |theirs| of resnet_jax's logits against PyTorch's `expected`."""
  from resnet_jax.models import resnet
  model = resnet.create_model(model_name, num_classes, stem, width)
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images_BHWC))
  return float(np.abs(logits - expected).max() / np.abs(expected).max())
