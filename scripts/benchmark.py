r"""Training-step throughput: resnet_jax's compiled step against the same ResNet in PyTorch.

  python scripts/benchmark.py --model=resnet18 --width=64 --batch_size=128 --steps=100

Data are synthetic uint8 images held on the device, augmented there in both
frameworks (gather, pad-and-crop, flip, normalise), so the comparison is like
for like. JAX rows: the full compiled step of `train.compile_train_step`; the
bare `train.train_step` on a preprocessed batch; and the trainer's host loop
(metrics left on device, read every `--log_every` steps; use --steps well
above it). PyTorch rows run in a child process, before JAX touches the
device, so that JAX's GPU memory preallocation cannot starve them, and a
crash or a --torch_timeout there keeps the variants already done. Prints a
table, then one JSON line, last. Measured: docs/benchmarks.md (H100),
docs/benchmark_notes.md (CPU).
"""

import argparse
import functools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NUM_CLASSES = 10
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # Any fixed values: the data are random.
# Dense peak FLOP/s per GPU from NVIDIA's data sheets: (bf16, tf32, fp32 without tensor cores).
# More specific names first: device_kind is e.g. "NVIDIA H100 80GB HBM3" for the SXM part.
PEAK_FLOPS = (("H100 PCIe", (756e12, 378e12, 51e12)), ("H100 NVL", (835e12, 418e12, 60e12)),
              ("H100", (989e12, 495e12, 67e12)), ("H200", (989e12, 495e12, 67e12)),
              ("A100", (312e12, 156e12, 19.5e12)))
FULL_FP32 = ("highest", "float32")  # jax_default_matmul_precision values that rule out TF32.


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
  p.add_argument("--image_size", type=int, default=32, help="side of the synthetic images, pixels")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps, the first one compiles")
  p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
  p.add_argument("--num_examples", type=int, default=0, help="0: max(4 * batch_size, 1024)")
  p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--matmul_precision", default="",
                 help="jax_default_matmul_precision (e.g. highest); 'highest' also turns "
                      "PyTorch's TF32 off")
  p.add_argument("--log_every", type=int, default=0, help="host-loop log interval; 0: config's")
  p.add_argument("--init", default="host", choices=("host", "model"),
                 help="host: Kaiming-normal variables made with numpy and passed to "
                      "create_train_state (under a second; XLA:CPU takes seconds to a minute "
                      "to compile the model's threefry initialisers); model: the model's own")
  p.add_argument("--peak_flops", type=float, default=0.0, help="device peak FLOP/s for MFU")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=None,
                 help="run the torch.compile variant (default: on CUDA only)")
  p.add_argument("--torch_timeout", type=float, default=1200.0,
                 help="seconds for all PyTorch variants; those done by then are kept")
  p.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.num_examples = args.num_examples or max(4 * args.batch_size, 1024)
  if args.num_examples < args.batch_size:
    p.error(f"--num_examples {args.num_examples} is smaller than --batch_size {args.batch_size}")
  return args


def synthetic_data(args) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.num_examples, args.image_size, args.image_size, 3), np.uint8)
  return images, rng.integers(0, NUM_CLASSES, (args.num_examples,), np.int32)


def median_seconds_per_step(run_steps, num_steps: int, repeats: int) -> float:
  """run_steps(n) runs n steps and returns only once the device has finished them."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_steps(num_steps)
    times.append((time.perf_counter() - start) / num_steps)
  return statistics.median(times)


def imported_tensorflow() -> bool:
  return "tensorflow" in sys.modules or "tensorflow_datasets" in sys.modules


# JAX ---------------------------------------------------------------------


def jax_config(args):
  from resnet_jax import default_config
  config = default_config.get_config()
  config.model, config.width, config.stem = args.model, args.width, args.stem
  config.batch_size = args.batch_size
  config.half_precision = args.precision == "bf16"
  # Enough that the schedule never ends inside the benchmark.
  config.num_train_steps = (args.warmup + 3 * args.repeats * args.steps) * 2 + 10
  return config


def host_init_variables(model, image_shape, dtype, seed: int = 0) -> dict:
  """Kaiming-normal (fan_out) convolutions, unit BN, zero biases: shapes from eval_shape."""
  import jax
  import jax.numpy as jnp
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape), dtype),
                                             train=False))
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan = np.prod(leaf.shape[:-2]) * leaf.shape[-1] if leaf.ndim == 4 else leaf.shape[0]
      return (rng.standard_normal(leaf.shape) * np.sqrt((2.0 if leaf.ndim == 4 else 1.0) / fan)
              ).astype(leaf.dtype)
    return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(init, shapes)


def cost_flops(jitted, *args) -> float:
  """FLOPs of one call, from XLA's cost analysis of the compiled program (cached: no recompile)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def run_jax(args) -> dict:
  import jax
  from resnet_jax import flops, input_pipeline, train
  if args.matmul_precision:
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
  config = jax_config(args)
  batch_size, image_shape = args.batch_size, (args.image_size, args.image_size, 3)
  mesh = train.create_mesh()
  schedule = train.learning_rate_schedule(config, args.num_examples // batch_size,
                                          config.num_train_steps)
  model = train.create_model(config, NUM_CLASSES)
  init_variables = (host_init_variables(model, image_shape, train.compute_dtype(config))
                    if args.init == "host" else None)
  start = time.perf_counter()
  state = jax.block_until_ready(
      train.create_train_state(config, model, image_shape, schedule, mesh, init_variables))
  init_seconds = time.perf_counter() - start
  images, labels = synthetic_data(args)
  data = {"image": train.put_replicated(images, mesh), "label": train.put_replicated(labels, mesh)}
  out = {"init_seconds": init_seconds}

  def timed(step, operand, name):
    """Compiles (first call), warms up, times; threads the donated state through."""
    nonlocal state
    start = time.perf_counter()
    state, metrics = step(state, operand)
    jax.block_until_ready((state, metrics))
    out[f"{name}_compile_seconds"] = time.perf_counter() - start
    out[f"{name}_flops"] = cost_flops(step, state, operand)

    def run_steps(n):
      nonlocal state
      if not n:
        return
      for _ in range(n):
        state, metrics = step(state, operand)
      jax.block_until_ready((state, metrics))

    run_steps(max(args.warmup - 1, 0))
    out[f"{name}_seconds_per_step"] = median_seconds_per_step(run_steps, args.steps, args.repeats)

  # The full step: gather from the on-device dataset, crop/flip, normalise, train.
  full_step = train.compile_train_step(config, mesh, schedule, MEAN, STD, args.num_examples)
  timed(full_step, data, "full")
  memory = full_step.lower(state, data).compile().memory_analysis()
  if memory is not None:
    out["compiled_memory_bytes"] = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                       + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

  # The bare step: the same train_step on a batch already preprocessed.
  make_batch = jax.jit(lambda d: {
      "image": input_pipeline.preprocess(d["image"][:batch_size], MEAN, STD, 0,
                                         train.compute_dtype(config)),
      "label": d["label"][:batch_size]}, out_shardings=train.batch_sharded(mesh))
  batch = jax.block_until_ready(make_batch(data))
  bare_step = jax.jit(
      functools.partial(train.train_step, schedule=schedule, label_smoothing=config.label_smoothing,
                        dropout_key=jax.random.key(config.seed)),
      donate_argnums=0, out_shardings=(train.replicated(mesh), train.replicated(mesh)))
  timed(bare_step, batch, "bare")

  # The trainer's host loop (trainer.Run.train_and_evaluate): metrics stay on device and are
  # read, and checked for NaN, once per log interval.
  log_every = args.log_every or config.log_every_steps

  def loop(n):
    nonlocal state
    pending = []
    for i in range(n):
      state, metrics = full_step(state, data)
      pending.append(metrics)
      if (i + 1) % log_every == 0 or i + 1 == n:
        values = jax.device_get(pending)
        losses = [float(v["train_loss"]) for v in values]
        if not all(math.isfinite(loss) for loss in losses):
          raise FloatingPointError(f"non-finite loss in the host loop: {losses}")
        pending = []

  out["loop_seconds_per_step"] = median_seconds_per_step(loop, args.steps, args.repeats)
  out["log_every"] = log_every
  out["formula_flops_per_image"] = flops.train_flops_per_image(model, image_shape)
  stats = jax.local_devices()[0].memory_stats()
  out["peak_memory_bytes"] = stats.get("peak_bytes_in_use") if stats else None
  device = jax.devices()[0]
  out["device"] = f"{device.platform}: {device.device_kind} x{jax.device_count()}"
  out["device_kind"], out["platform"] = device.device_kind, device.platform
  out["matmul_precision"] = jax.config.jax_default_matmul_precision
  out["jax_version"] = jax.__version__
  return out


def peak_flops(args, jax_out: dict) -> tuple[float | None, str]:
  if args.peak_flops:
    return args.peak_flops, "--peak_flops"
  if jax_out["platform"] != "gpu":
    return None, f"no peak known for {jax_out['device_kind']}: pass --peak_flops"
  for name, (bf16, tf32, fp32) in PEAK_FLOPS:
    if name in jax_out["device_kind"]:
      if args.precision == "bf16":
        return bf16, f"{name} dense bf16 tensor-core peak"
      if (jax_out["matmul_precision"] or "").lower() in FULL_FP32:
        return fp32, f"{name} fp32 peak without tensor cores (matmul precision highest)"
      # JAX's DEFAULT precision and cuDNN (torch.backends.cudnn.allow_tf32) both run
      # float32 convolutions on TF32 tensor cores.
      return tf32, f"{name} dense TF32 tensor-core peak (fp32 convolutions run as TF32)"
  return None, f"no peak known for {jax_out['device_kind']}: pass --peak_flops"


# PyTorch (in a child process) ----------------------------------------------


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


def torch_variants(args, cuda: bool) -> list[tuple[str, bool, bool, bool]]:
  """(name, channels_last, bf16 autocast, torch.compile); run in this order, compile last."""
  amp = args.precision == "bf16"
  suffix = "_amp_bf16" if amp else ""
  variants = [(f"eager{suffix}", False, amp, False), (f"channels_last{suffix}", True, amp, False)]
  if cuda and not amp:  # Reported, but not counted: not the precision JAX ran.
    variants.append(("channels_last_amp_bf16", True, True, False))
  if args.torch_compile if args.torch_compile is not None else cuda:
    variants.append((f"compile_channels_last{suffix}", True, amp, True))
  return variants


def run_torch_worker(args) -> None:
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


def run_torch(args, argv) -> tuple[dict, dict, str | None]:
  """Runs the PyTorch variants in a child process; returns (variants, facts, skip reason)."""
  import importlib.util
  if args.no_torch:
    return {}, {}, "--no_torch"
  if importlib.util.find_spec("torch") is None:
    return {}, {}, "torch is not installed"
  child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--torch_worker"],
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


# Report --------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
  """A plain-text table; a row with an error carries it after the table's columns."""

  def num(value, fmt, unit=""):
    return "n/a" if value is None else format(value, fmt) + unit

  def cells(r):
    if "error" in r:
      return [r["name"], "-", "", "", "", "", ""]
    memory, flops, mfu = r.get("peak_memory_bytes"), r.get("flops_per_image"), r.get("mfu")
    return [r["name"], num(r.get("images_per_second"), ".1f"), num(r.get("step_ms"), ".2f"),
            num(r.get("compile_seconds"), ".1f"), num(memory and memory / 2**30, ".2f", " GiB"),
            num(flops and flops / 1e9, ".4g"), num(None if mfu is None else 100 * mfu, ".1f", "%")]

  header = ["variant", "images/s", "step ms", "compile s", "peak mem", "GFLOP/img", "MFU"]
  lines = [cells(r) for r in rows]
  widths = [max(len(x) for x in column) for column in zip(header, *lines)]
  fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  body = [fmt(line) + (f"  ({r['error']})" if "error" in r else "") for line, r in zip(lines, rows)]
  return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *body])


def summarize(args, jax_out: dict, torch_results: dict, torch_facts: dict,
              torch_skipped: str | None) -> tuple[list[dict], str, dict]:
  """The table rows, the notes under the table, and the JSON result."""
  batch_size = args.batch_size
  full, bare, loop = (batch_size / jax_out[f"{k}_seconds_per_step"] for k in ("full", "bare", "loop"))
  # The formula's count: XLA's GPU cost analysis does not see inside cuDNN convolutions.
  flops_per_image = jax_out["formula_flops_per_image"] or None
  peak, peak_source = peak_flops(args, jax_out)
  mfu = lambda images_per_second, per_image: (per_image * images_per_second / peak
                                              if peak and per_image and images_per_second else None)
  jax_row = lambda name, kind, images_per_second: dict(
      name=name, images_per_second=images_per_second,
      step_ms=1e3 * jax_out[f"{kind}_seconds_per_step"],
      compile_seconds=jax_out.get(f"{kind}_compile_seconds"),
      peak_memory_bytes=jax_out["peak_memory_bytes"], flops_per_image=flops_per_image,
      mfu=mfu(images_per_second, flops_per_image))
  rows = [jax_row("jax full step (gather+augment+train)", "full", full),
          jax_row("jax bare train_step", "bare", bare),
          jax_row(f"jax training loop (log every {jax_out['log_every']})", "loop", loop)]
  counted = {}
  for name, result in torch_results.items():
    result["counted"] = result["precision"] == args.precision and "error" not in result
    if result["counted"]:
      counted[name] = result["images_per_second"]
    rows.append(dict(name=f"torch {name}" + ("" if result["counted"] or "error" in result
                                             else " (not counted)"),
                     flops_per_image=flops_per_image,
                     mfu=mfu(result.get("images_per_second"), flops_per_image), **result))
  best = max(counted, key=counted.get) if counted else None
  torch_ips = counted[best] if best else None
  if torch_results and not counted and torch_skipped is None:
    torch_skipped = "no PyTorch variant at this precision ran"

  xla = jax_out["bare_flops"] / batch_size
  notes = (f"FLOPs/img: by formula (resnet_jax/flops.py: 2 per multiply-add of convolutions and "
           f"dense layers, training = 3x forward), the same for every row; XLA's cost analysis of "
           f"the bare step says {xla / 1e9:.4g} GFLOP/img (on GPU it misses cuDNN convolutions). "
           f"MFU peak: {f'{peak:.3g} FLOP/s, ' if peak else ''}{peak_source}. "
           f"JAX peak mem is the process peak over all JAX rows (memory_stats; n/a on CPU). "
           f"Torch compile s = first step.")
  if torch_skipped:
    notes += f"\nPyTorch: {torch_skipped}"
  result = {
      "jax_images_per_second": full, "torch_images_per_second": torch_ips,
      "ratio": full / torch_ips if torch_ips else None, "torch_best_variant": best,
      "device": jax_out["device"], "torch_device": torch_facts.get("torch_device"),
      "model": args.model, "width": args.width, "stem": args.stem, "image_size": args.image_size,
      "batch_size": batch_size, "steps": args.steps, "repeats": args.repeats,
      "precision": args.precision, "matmul_precision": jax_out["matmul_precision"],
      "flops_per_image": flops_per_image, "flops_source": "formula (resnet_jax.flops)",
      "xla_cost_flops_per_image": {k: jax_out[f"{k}_flops"] / batch_size for k in ("full", "bare")},
      "peak_flops": peak, "peak_flops_source": peak_source, "mfu": mfu(full, flops_per_image),
      "bare_step_images_per_second": bare, "full_to_bare_ratio": full / bare,
      "loop_images_per_second": loop, "loop_to_bare_ratio": loop / bare,
      "loop_to_full_ratio": loop / full, "log_every": jax_out["log_every"],
      "compile_seconds": jax_out["full_compile_seconds"],
      "bare_compile_seconds": jax_out["bare_compile_seconds"],
      "init_seconds": jax_out["init_seconds"], "init": args.init,
      "peak_memory_bytes": jax_out["peak_memory_bytes"],
      "compiled_memory_bytes": jax_out.get("compiled_memory_bytes"),
      "torch_variants": torch_results, "torch_skipped_reason": torch_skipped,
      "jax_version": jax_out["jax_version"], "torch_version": torch_facts.get("torch_version"),
      "torch_tf32": torch_facts.get("torch_tf32"),
      "imported_tensorflow": imported_tensorflow() or bool(torch_facts.get("imported_tensorflow")),
  }
  return rows, notes, result


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.torch_worker:
    run_torch_worker(args)
    return
  # PyTorch first: JAX has not yet initialised (and preallocated) the device.
  torch_results, torch_facts, torch_skipped = run_torch(args, argv)
  jax_out = run_jax(args)
  rows, notes, result = summarize(args, jax_out, torch_results, torch_facts, torch_skipped)
  print(f"device: {jax_out['device']}; torch: {torch_facts.get('torch_device', 'n/a')}; "
        f"{args.model} width {args.width} {args.stem} stem {args.image_size}px, "
        f"batch {args.batch_size}, {args.precision}; median of {args.repeats} x {args.steps} steps")
  print(format_table(rows))
  print(notes)
  print(json.dumps(result), flush=True)  # Last line: the machine-readable result.


if __name__ == "__main__":
  main()
