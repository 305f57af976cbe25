r"""The PyTorch side of scripts/benchmark.py: the same ResNet, data and augmentation in PyTorch.

  python scripts/torch_baselines.py '<the benchmark's parsed arguments, as a JSON object>'

`run_torch` starts this file in a child process, before JAX touches the
device, so that JAX's GPU memory preallocation cannot starve PyTorch, and a
crash or a --torch_timeout there keeps the variants already done. The child
prints one JSON line per variant as it finishes, then one with the process
facts. Also holds what both frameworks share (the synthetic data, the
normalisation, the timing), so that each side measures the same work. Needs
numpy and torch, not resnet_jax or JAX.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

NUM_CLASSES = 10
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # Any fixed values: the data are random.
FULL_FP32 = ("highest", "float32")  # jax_default_matmul_precision values that rule out TF32.


def synthetic_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 images and labels, the same in both frameworks (seed 0)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.num_examples, args.image_size, args.image_size, 3), np.uint8)
  return images, rng.integers(0, NUM_CLASSES, (args.num_examples,), np.int32)


def median_seconds_per_step(run_steps: Callable[[int], None], num_steps: int,
                            repeats: int) -> float:
  """run_steps(n) runs n steps and returns only once the device has finished them."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_steps(num_steps)
    times.append((time.perf_counter() - start) / num_steps)
  return statistics.median(times)


def imported_tensorflow() -> bool:
  return "tensorflow" in sys.modules or "tensorflow_datasets" in sys.modules


def torch_resnet(model: str, stem: str, width: int, num_classes: int):
  """torchvision's ResNet v1.5 layout with resnet_jax's stems and width."""
  import torch
  from torch import nn
  stages, bottleneck = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                        "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
                        "resnet152": ((3, 8, 36, 3), True),
                        "resnet_tiny": ((1, 1, 1, 1), False)}[model]
  expansion = 4 if bottleneck else 1

  class Block(nn.Module):

    def __init__(self, inplanes: int, planes: int, stride: int):
      super().__init__()
      if bottleneck:
        self.convs = nn.ModuleList([nn.Conv2d(inplanes, planes, 1, bias=False),
                                    nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
                                    nn.Conv2d(planes, planes * 4, 1, bias=False)])
      else:
        self.convs = nn.ModuleList([nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False),
                                    nn.Conv2d(planes, planes, 3, 1, 1, bias=False)])
      self.bns = nn.ModuleList([nn.BatchNorm2d(c.out_channels) for c in self.convs])
      self.downsample = None
      if stride != 1 or inplanes != planes * expansion:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * expansion, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * expansion))

    def forward(self, x):
      y = x
      for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
        y = bn(conv(y))
        y = torch.relu(y) if i + 1 < len(self.convs) else y
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  if stem == "imagenet":
    layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
  else:
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
  inplanes = width
  for stage, num_blocks in enumerate(stages):
    for block in range(num_blocks):
      layers.append(Block(inplanes, width * 2**stage, 2 if stage > 0 and block == 0 else 1))
      inplanes = width * 2**stage * expansion
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, num_classes)]
  net = nn.Sequential(*layers)
  for m in net.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
  return net


class TorchBatches:
  """The resnet_jax pipeline in torch, on device: per-epoch permutation, pad-crop, flip, normalise."""

  def __init__(self, images_NHWC, labels, batch_size: int, padding: int = 4):
    import torch
    self.torch, self.images, self.labels = torch, images_NHWC, labels
    self.batch_size, self.padding, self.position = batch_size, padding, 0
    device = images_NHWC.device
    n, height, width, _ = images_NHWC.shape
    self.permutation = torch.randperm(n, device=device)
    self.rows, self.cols = torch.arange(height, device=device), torch.arange(width, device=device)
    self.batch_index = torch.arange(batch_size, device=device)[:, None, None]
    self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

  def next(self, channels_last: bool):
    torch, b, p = self.torch, self.batch_size, self.padding
    if self.position + b > len(self.permutation):
      self.permutation, self.position = torch.randperm(len(self.permutation),
                                                       device=self.images.device), 0
    indices = self.permutation[self.position:self.position + b]
    self.position += b
    images = torch.nn.functional.pad(self.images[indices], (0, 0, p, p, p, p))
    offsets = torch.randint(0, 2 * p + 1, (b, 2), device=images.device)
    rows = (offsets[:, 0, None] + self.rows)[:, :, None]
    cols = (offsets[:, 1, None] + self.cols)[:, None, :]
    images = images[self.batch_index, rows, cols]  # [B, H, W, C]
    flip = torch.rand(b, device=images.device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(2), images)
    x = (images.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, self.labels[indices]


def torch_variants(args: argparse.Namespace, cuda: bool) -> list[tuple[str, bool, bool, bool]]:
  """(name, channels_last, bf16 autocast, torch.compile); run in this order, compile last."""
  amp = args.precision == "bf16"
  suffix = "_amp_bf16" if amp else ""
  variants = [(f"eager{suffix}", False, amp, False), (f"channels_last{suffix}", True, amp, False)]
  if cuda and not amp:  # Reported, but not counted: not the precision JAX ran.
    variants.append(("channels_last_amp_bf16", True, True, False))
  if args.torch_compile if args.torch_compile is not None else cuda:
    variants.append((f"compile_channels_last{suffix}", True, amp, True))
  return variants


def run_torch_worker(args: argparse.Namespace) -> None:
  """Prints one JSON line per variant as it finishes, then one with the process facts."""
  import torch
  import torch.nn.functional as F
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if cuda:
    torch.backends.cudnn.benchmark = True  # As XLA autotunes its convolutions.
  # TF32 for float32 convolutions and matmuls, as XLA's DEFAULT precision on GPU, unless
  # --matmul_precision asks for full float32.
  tf32 = args.matmul_precision.lower() not in FULL_FP32
  if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9; the allow_tf32 flags are deprecated.
    torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
  else:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
  torch.manual_seed(0)
  images, labels = synthetic_data(args)
  images = torch.from_numpy(images).to(device)
  labels = torch.from_numpy(labels).long().to(device)
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  for name, channels_last, amp, compiled in torch_variants(args, cuda):
    result = {"variant": name, "precision": "bf16" if amp else "fp32"}
    if channels_last and not cuda and args.width < 8:
      # torch 2.13 CPU: the backward of a channels_last 1x1 stride-2 convolution with 4
      # input channels corrupts the heap (abort with 1 thread, hang with 2).
      result["error"] = "skipped: torch CPU channels_last crashes for width < 8"
      print(json.dumps(result), flush=True)
      continue
    try:
      net = torch_resnet(args.model, args.stem, args.width, NUM_CLASSES).to(device)
      if channels_last:
        net = net.to(memory_format=torch.channels_last)
      optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
      forward = torch.compile(net) if compiled else net
      batches = TorchBatches(images, labels, args.batch_size)

      def step():
        x, y = batches.next(channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
          logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Kept on device, like resnet_jax's metrics.
        return loss.detach(), (logits.argmax(-1) == y).float().mean()

      def run_steps(n):
        for _ in range(n):
          step()
        sync()

      if cuda:
        torch.cuda.reset_peak_memory_stats()
      start = time.perf_counter()
      run_steps(1)
      result["compile_seconds"] = time.perf_counter() - start
      run_steps(max(args.warmup - 1, 0))
      seconds = median_seconds_per_step(run_steps, args.steps, args.repeats)
      result.update(images_per_second=args.batch_size / seconds, step_ms=1e3 * seconds,
                    peak_memory_bytes=torch.cuda.max_memory_allocated() if cuda else None)
      del net, optimizer, forward
    except Exception as e:  # One variant failing (e.g. torch.compile) must not lose the others.
      result["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    print(json.dumps(result), flush=True)
    if cuda:
      torch.cuda.empty_cache()
  name = torch.cuda.get_device_name() if cuda else "cpu"
  print(json.dumps({"torch_device": name, "torch_version": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "torch_tf32": tf32,
                    "imported_tensorflow": imported_tensorflow()}), flush=True)


def run_torch(args: argparse.Namespace) -> tuple[dict, dict, str | None]:
  """Runs the PyTorch variants in a child process; returns (variants, facts, skip reason)."""
  import importlib.util
  if args.no_torch:
    return {}, {}, "--no_torch"
  if importlib.util.find_spec("torch") is None:
    return {}, {}, "torch is not installed"
  # The parsed arguments, not the command line: the child needs no parser of its own.
  child = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(vars(args))],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
  reason = None
  try:
    stdout, _ = child.communicate(timeout=args.torch_timeout)
  except subprocess.TimeoutExpired:
    os.killpg(child.pid, signal.SIGKILL)  # Its own session: inductor's compile workers too.
    stdout, _ = child.communicate()
    reason = f"timed out after {args.torch_timeout:.0f} s (--torch_timeout)"
  if child.returncode and reason is None:
    reason = f"PyTorch worker exited with status {child.returncode}"
  variants, facts = {}, {}
  for line in stdout.splitlines():
    if line.startswith("{"):
      record = json.loads(line)
      if "variant" in record:
        variants[record.pop("variant")] = record
      else:
        facts = record
  return variants, facts, reason


if __name__ == "__main__":
  run_torch_worker(argparse.Namespace(**json.loads(sys.argv[1])))
