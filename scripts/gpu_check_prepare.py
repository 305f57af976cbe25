"""`python scripts/gpu_check.py --prepare`: what the GPU machine cannot make, made here to carry.

The GPU machine has no TensorFlow or TFDS, so Fashion-MNIST is decoded here by
the trainer's own `memory.load_split` (TFDS prepares it from the original
archives, offline) and its .npz cache is copied, compressed, to DATA_DIR:
`--config.data_dir=DATA_DIR` then loads it there without TFDS. The packages the
trainer imports but the machine's image lacks are downloaded as wheels for
its Python, pinned to the versions installed here (the ones the tests ran).
"""

import importlib.metadata
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def compress_cache(source_dir: str, data_dir: str, dataset: str = "fashion_mnist") -> list[str]:
  """Each cached split of dataset under source_dir, rewritten compressed under data_dir."""
  source = os.path.join(source_dir, "resnet_jax_cache", dataset)
  target = os.path.join(data_dir, "resnet_jax_cache", dataset)
  os.makedirs(target, exist_ok=True)
  written = []
  for name in sorted(n for n in os.listdir(source) if n.endswith(".npz")):
    with np.load(os.path.join(source, name), allow_pickle=False) as f:
      arrays = {key: f[key] for key in f.files}  # Whatever keys memory.py wrote, as they are.
    path = os.path.join(target, name)
    np.savez_compressed(f"{path}.tmp.npz", **arrays)
    os.replace(f"{path}.tmp.npz", path)
    written.append(path)
  return written


def rebuild_archives(folder: str) -> None:
  """The original archives, from Debian's dataset-fashion-mnist (fashion_mnist_archives.py)."""
  import fashion_mnist_archives
  if not fashion_mnist_archives.DEBIAN_DIR.is_dir():
    raise SystemExit(f"{fashion_mnist_archives.DEBIAN_DIR} is missing: apt-get install -y "
                     "dataset-fashion-mnist, or pass --archives=DIR")
  for name in fashion_mnist_archives.ARCHIVES:
    fashion_mnist_archives.restore(name, pathlib.Path(folder))


def decode_fashion_mnist(archives: str, data_dir: str) -> list[str]:
  """Both splits through the trainer's loader (TFDS, offline), cached compressed in data_dir."""
  from resnet_jax.data import memory
  with tempfile.TemporaryDirectory() as tfds_dir:
    for split in ("train", "test"):
      memory.load_split("fashion_mnist", split, data_dir=tfds_dir, manual_dir=archives)
    return compress_cache(tfds_dir, data_dir)


def download_wheels(names: tuple[str, ...], python: str, folder: str) -> list[str]:
  """Wheels of names, at this environment's versions, for CPython `python` on x86-64 Linux."""
  os.makedirs(folder, exist_ok=True)
  for old in os.listdir(folder):  # One version of each: two stop pip's install.
    if old.endswith(".whl"):
      os.remove(os.path.join(folder, old))
  pins = [f"{name}=={importlib.metadata.version(name)}" for name in names]
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--python-version", python, "--implementation", "cp", "-d", folder, *pins]
  for platform in PLATFORMS:
    command[4:4] = ["--platform", platform]
  subprocess.run(command, check=True)
  return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def prepare(data_dir: str, archives: str, wheels: tuple[str, ...], python: str,
            wheel_dir: str) -> None:
  with tempfile.TemporaryDirectory() as rebuilt:
    if not archives:
      rebuild_archives(rebuilt)
    files = decode_fashion_mnist(archives or rebuilt, data_dir)
  files += download_wheels(wheels, python, wheel_dir)
  for path in files:
    print(f"{os.path.getsize(path) / 2**20:7.1f} MiB  {path}")
  total = sum(os.path.getsize(p) for p in files)
  print(f"{total / 2**20:.1f} MiB in all to carry (the working tree's limit is 64 MiB with it)")
