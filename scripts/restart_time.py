r"""Time from the command to the first training step of a resumed run, compilation cache off and warm.

  python scripts/restart_time.py --runs=3 [--config=configs/resnet18.py] [--batch_size=16]

Makes a folder of 32x32 PNGs (4 classes), trains 2 steps to get a checkpoint,
then resumes a copy of that workdir for one more step, alternating
RESNET_JAX_COMPILATION_CACHE=off with a cache warmed by one untimed resume.
The first training step is the first train line of metrics.jsonl after the
resume (log_every_steps=1), watched from outside; its `compile_time_s` is the
first step's own time, compilation included.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_images(root: str) -> None:
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 16), ("test", 8)):
    for c in range(4):
      folder = os.path.join(root, split, f"class{c}")
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.png"))


def command(args, workdir: str, data: str, steps: int) -> list[str]:
  return [sys.executable, "-m", "resnet_jax.main", f"--config={args.config}",
          f"--workdir={workdir}", f"--config.dataset=folder:{data}",
          f"--config.batch_size={args.batch_size}", f"--config.num_train_steps={steps}",
          "--config.log_every_steps=1", "--quiet"]


def first_step(cmd: list[str], env: dict, metrics: str, step: int) -> tuple[float, float]:
  """Seconds from the start of cmd to the train line of `step`, and that line's compile_time_s."""
  start = time.monotonic()
  process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
  seen = None
  while seen is None:
    if os.path.exists(metrics):
      with open(metrics) as f:
        lines = [json.loads(line) for line in f if line.endswith("\n")]
      seen = next((r for r in lines if r["step"] == step and "train_loss" in r), None)
    if seen is None and process.poll() is not None:
      raise RuntimeError(f"{' '.join(cmd)} exited {process.returncode} before step {step}")
    time.sleep(0.02)
  elapsed = time.monotonic() - start
  if process.wait() != 0:
    raise RuntimeError(f"{' '.join(cmd)} exited {process.returncode}")
  return elapsed, seen["compile_time_s"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--config", default="configs/resnet18.py")
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="restart_time.")
  data, base, cache = (os.path.join(root, n) for n in ("data", "base", "cache"))
  write_images(data)
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  modes = {"off": {**env, "RESNET_JAX_COMPILATION_CACHE": "off"},
           "warm": {**env, "RESNET_JAX_CACHE": cache, "RESNET_JAX_COMPILATION_CACHE": ""}}
  subprocess.run(command(args, base, data, 2), cwd=REPO, env=modes["off"], check=True,
                 stdout=subprocess.DEVNULL)

  def resume(mode: str) -> tuple[float, float]:
    workdir = os.path.join(root, "resumed")
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(base, workdir)
    return first_step(command(args, workdir, data, 3), modes[mode],
                      os.path.join(workdir, "metrics.jsonl"), 3)

  cold = resume("warm")  # Fills the cache.
  print(f"cache cold (filling it): {cold[0]:.1f} s to the first step (first step "
        f"{cold[1]:.1f} s); load {os.getloadavg()}")
  times = {"off": [], "warm": []}
  for _ in range(args.runs):
    for mode in times:
      times[mode].append(resume(mode))
      print(f"cache {mode}: {times[mode][-1][0]:.1f} s to the first step (first step "
            f"{times[mode][-1][1]:.1f} s); load {os.getloadavg()}", flush=True)
  for mode, results in times.items():
    to_step = [t for t, _ in results]
    print(f"cache {mode}: median {statistics.median(to_step):.1f} s to the first step "
          f"(runs {', '.join(f'{t:.1f}' for t in to_step)}); first step median "
          f"{statistics.median(c for _, c in results):.1f} s")
  entries = sum(len(files) for _, _, files in os.walk(cache))
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
  print(f"cache: {entries} files, {size / 2**20:.1f} MiB")
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
