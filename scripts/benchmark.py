r"""Training-step throughput: resnet_jax's compiled step against the same ResNet in PyTorch.

  python scripts/benchmark.py --model=resnet18 --width=64 --batch_size=128 --steps=100

Data are synthetic uint8 images held on the device, augmented there in both
frameworks (gather, pad-and-crop, flip, normalise), so the comparison is like
for like. JAX rows (on CPU compiled with the options of resnet_jax/xla_cpu.py
unless --no-xla_cpu_tuning): the full compiled step of `steps.compile_train_step`; the
bare `steps.train_step` on a preprocessed batch; and the trainer's host loop
(metrics kept in a `metrics_buffer.MetricsBuffer`, read every `--log_every` steps;
use --steps well above it). PyTorch rows come from scripts/torch_baselines.py,
run in a child process before JAX touches the device (see its docstring).
Prints a table, then one JSON line, last. Measured: docs/benchmarks.md
(H100), docs/benchmark_notes.md (CPU).
"""

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# For torch_baselines, also when this file is loaded by path (tests) rather than run.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_baselines import (FULL_FP32, MEAN, NUM_CLASSES, STD, imported_tensorflow,
                             median_seconds_per_step, run_torch, synthetic_data)

# Dense peak FLOP/s per GPU from NVIDIA's data sheets: (bf16, tf32, fp32 without tensor cores).
# More specific names first: device_kind is e.g. "NVIDIA H100 80GB HBM3" for the SXM part.
PEAK_FLOPS = (("H100 PCIe", (756e12, 378e12, 51e12)), ("H100 NVL", (835e12, 418e12, 60e12)),
              ("H100", (989e12, 495e12, 67e12)), ("H200", (989e12, 495e12, 67e12)),
              ("A100", (312e12, 156e12, 19.5e12)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
  p.add_argument("--xla_cpu_tuning", action=argparse.BooleanOptionalAction, default=True,
                 help="on CPU, compile the JAX steps with resnet_jax/xla_cpu.py's options "
                      "(--no-xla_cpu_tuning: XLA's defaults)")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=None,
                 help="run the torch.compile variant (default: on CUDA only)")
  p.add_argument("--torch_timeout", type=float, default=1200.0,
                 help="seconds for all PyTorch variants; those done by then are kept")
  args = p.parse_args(argv)
  args.num_examples = args.num_examples or max(4 * args.batch_size, 1024)
  if args.num_examples < args.batch_size:
    p.error(f"--num_examples {args.num_examples} is smaller than --batch_size {args.batch_size}")
  return args


# JAX ---------------------------------------------------------------------


def jax_config(args: argparse.Namespace):
  """The resolved config, as if the synthetic data had been loaded by the trainer."""
  from resnet_jax.config import configuration, default_config
  config = default_config.get_config()
  config.model, config.width, config.stem = args.model, args.width, args.stem
  config.batch_size = args.batch_size
  config.half_precision = args.precision == "bf16"
  # Enough that the schedule never ends inside the benchmark.
  config.num_train_steps = (args.warmup + 3 * args.repeats * args.steps) * 2 + 10
  return configuration.resolve(config, {
      "num_classes": NUM_CLASSES, "class_names": [f"class_{i}" for i in range(NUM_CLASSES)],
      "mean": MEAN, "std": STD, "input_shape": (args.image_size, args.image_size, 3),
      "num_train_examples": args.num_examples})


def host_init_variables(config, model, seed: int = 0) -> dict:
  """Kaiming-normal (fan_out) convolutions, unit BN, zero biases: shapes from eval_shape."""
  import jax
  from resnet_jax.train import steps
  shapes = jax.eval_shape(steps.init_variables_fn(config, model))
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


def run_jax(args: argparse.Namespace) -> dict:
  import jax
  from resnet_jax.data import augment
  from resnet_jax.models import flops
  from resnet_jax.reporting import metrics_buffer
  from resnet_jax import sharding
  from resnet_jax.models import build
  from resnet_jax.train import steps, xla_cpu
  if args.matmul_precision:
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
  config = jax_config(args)
  batch_size, dtype = config.batch_size, build.compute_dtype(config)
  mesh = sharding.create_mesh()
  schedule = steps.learning_rate_schedule(config, config.num_train_examples // batch_size,
                                          config.num_train_steps)
  model = build.create_model(config)
  init_variables = host_init_variables(config, model) if args.init == "host" else None
  start = time.perf_counter()
  state = jax.block_until_ready(
      steps.create_train_state(config, model, schedule, mesh, init_variables))
  init_seconds = time.perf_counter() - start
  images, labels = synthetic_data(args)
  data = {"image": sharding.put_replicated(images, mesh), "label": sharding.put_replicated(labels, mesh)}
  out = {"init_seconds": init_seconds}
  tune = xla_cpu.tuned_for_cpu if args.xla_cpu_tuning else (lambda jitted: jitted)
  out["xla_cpu_options"] = xla_cpu.train_step_options() if args.xla_cpu_tuning else {}

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
  full_step = steps.compile_train_step(config, mesh, schedule, cpu_tuning=args.xla_cpu_tuning)
  timed(full_step, data, "full")
  memory = full_step.lower(state, data).compile().memory_analysis()
  if memory is not None:
    out["compiled_memory_bytes"] = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                       + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

  # The bare step: the same train_step on a batch already preprocessed.
  make_batch = jax.jit(lambda d: {
      "image": augment.preprocess(d["image"][:batch_size], config.mean, config.std,
                                  config.image_size, dtype),
      "target": build.smoothed_targets(d["label"][:batch_size], config.num_classes,
                                       config.label_smoothing)},
      out_shardings=sharding.batch_sharded(mesh))
  batch = jax.block_until_ready(make_batch(data))
  bare_step = tune(jax.jit(
      functools.partial(steps.train_step, schedule=schedule,
                        dropout_key=jax.random.key(config.seed), grad_accum_steps=1,
                        ema_decay=config.ema_decay),
      donate_argnums=0, out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh))))
  timed(bare_step, batch, "bare")

  # The trainer's host loop (trainer.Trainer.train): metrics stay on device in the trainer's
  # own buffer and are read, and checked for NaN, once per log interval and after the last step.
  log_every = args.log_every or config.log_every_steps

  def loop(n):
    nonlocal state
    metrics = metrics_buffer.MetricsBuffer(batch_size, start_step=0)
    for step in range(1, n + 1):
      state, step_metrics = full_step(state, data)
      metrics.append(step_metrics)
      if step % log_every == 0 or step == n:
        metrics.read(step)

  out["loop_seconds_per_step"] = median_seconds_per_step(loop, args.steps, args.repeats)
  out["log_every"] = log_every
  out["formula_flops_per_image"] = flops.train_flops_per_image(model,
                                                               build.model_input_shape(config))
  stats = jax.local_devices()[0].memory_stats()
  out["peak_memory_bytes"] = stats.get("peak_bytes_in_use") if stats else None
  device = jax.devices()[0]
  out["device"] = f"{device.platform}: {device.device_kind} x{jax.device_count()}"
  out["device_kind"], out["platform"] = device.device_kind, device.platform
  out["matmul_precision"] = jax.config.jax_default_matmul_precision
  out["jax_version"] = jax.__version__
  return out


def peak_flops(args: argparse.Namespace, jax_out: dict) -> tuple[float | None, str]:
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


def summarize(args: argparse.Namespace, jax_out: dict, torch_results: dict, torch_facts: dict,
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
  if jax_out.get("xla_cpu_options"):
    notes += (f"\nJAX steps compiled with the XLA:CPU options of resnet_jax/xla_cpu.py: "
              f"{jax_out['xla_cpu_options']}.")
  loads = [getattr(args, name, None) for name in ("load_before", "load_after")]
  if None not in loads:  # A shared machine's load changes a CPU ratio: say it.
    notes += (f"\nLoad average (1 min) before PyTorch {loads[0]:.2f}, after JAX {loads[1]:.2f}, "
              f"on {os.cpu_count()} CPUs.")
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
      "xla_cpu_options": jax_out.get("xla_cpu_options"),
      "load_average": loads, "cpu_count": os.cpu_count(),
      "jax_version": jax_out["jax_version"], "torch_version": torch_facts.get("torch_version"),
      "torch_tf32": torch_facts.get("torch_tf32"),
      "imported_tensorflow": imported_tensorflow() or bool(torch_facts.get("imported_tensorflow")),
  }
  return rows, notes, result


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  args.load_before = os.getloadavg()[0]
  # PyTorch first: JAX has not yet initialised (and preallocated) the device.
  torch_results, torch_facts, torch_skipped = run_torch(args)
  jax_out = run_jax(args)
  args.load_after = os.getloadavg()[0]
  rows, notes, result = summarize(args, jax_out, torch_results, torch_facts, torch_skipped)
  print(f"device: {jax_out['device']}; torch: {torch_facts.get('torch_device', 'n/a')}; "
        f"{args.model} width {args.width} {args.stem} stem {args.image_size}px, "
        f"batch {args.batch_size}, {args.precision}; median of {args.repeats} x {args.steps} steps")
  print(format_table(rows))
  print(notes)
  print(json.dumps(result), flush=True)  # Last line: the machine-readable result.


if __name__ == "__main__":
  main()
