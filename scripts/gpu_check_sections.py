"""The sections of scripts/gpu_check.py: one small function each, registered in run order.

A section gets a `Context` (its row of gpu_check.SIZES, a scratch folder, the
time it has left) and puts figures into it as it measures them; every `put`
rewrites the section's result file, so a section stopped at its time limit
keeps what it had. `Skip` says why a section cannot run here (a missing
package or file). To add one (an ONNX or LiteRT exporter's file, say), write
a function, decorate it with `@section(name, title)` and give it a row in
gpu_check.SIZES. Heavy work runs the project's own programs as subprocesses
(`python -m resnet_jax.main`, scripts/benchmark.py), so today's code is what
gets measured.
"""

import dataclasses
import importlib.util
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable

from gpu_check_processes import run

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
SECTIONS: dict[str, Callable[["Context"], None]] = {}
TITLES: dict[str, str] = {}


class Skip(Exception):
  """This section cannot run on this machine; the message says what is missing and the fix."""


def section(name: str, title: str) -> Callable:
  """Registers a section function under `name`; sections run in registration order."""

  def register(function: Callable[["Context"], None]) -> Callable[["Context"], None]:
    SECTIONS[name], TITLES[name] = function, title
    return function

  return register


@dataclasses.dataclass
class Context:
  """What a section knows and where its figures go."""
  name: str
  sizes: dict
  dry: bool
  work: str  # Scratch folder of this section.
  data_dir: str  # Holds resnet_jax_cache/fashion_mnist/ (see gpu_check.py --prepare).
  result_path: str
  deadline: float  # time.monotonic() by which the section must be done.
  figures: dict = dataclasses.field(default_factory=dict)
  rows: list = dataclasses.field(default_factory=list)

  def left(self) -> float:
    return max(self.deadline - time.monotonic(), 0.0)

  def put(self, key: str, value) -> None:
    self.figures[key] = value
    self.save()

  def row(self, what: str, result: str) -> None:
    """One line of the Markdown table: what was measured, and the outcome."""
    self.rows.append([what, result])
    self.save()

  def save(self, **status) -> None:
    tmp = f"{self.result_path}.tmp"
    with open(tmp, "w") as f:
      json.dump({"figures": self.figures, "rows": self.rows, **status}, f, indent=1)
    os.replace(tmp, self.result_path)  # The parent may read it at any moment.


def main_command(config: str, workdir: str, flags: dict) -> list[str]:
  """`python -m resnet_jax.main` with --config.FIELD=VALUE overrides."""
  return [sys.executable, "-m", "resnet_jax.main", f"--config={config}", f"--workdir={workdir}",
          "--quiet", *(f"--config.{k}={v}" for k, v in flags.items())]


def minutes(seconds: float) -> str:
  return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


# Sections ------------------------------------------------------------------


@section("environment", "device, driver, CUDA and cuDNN")
def environment(ctx: Context) -> None:
  import jax
  device = jax.devices()[0]
  ctx.put("platform", device.platform)
  ctx.put("device_kind", device.device_kind)
  ctx.put("device_count", jax.device_count())
  ctx.put("cpu_count", os.cpu_count())
  ctx.put("load_average", list(os.getloadavg()))
  try:  # Private, but jax has no public call for the CUDA libraries it loaded.
    from jax._src.lib import cuda_versions
  except ImportError:
    cuda_versions = None
  for name in sorted(dir(cuda_versions) if cuda_versions else ()):
    if name.endswith("_get_version"):
      try:
        ctx.put(f"jax_{name[:-len('_get_version')]}", getattr(cuda_versions, name)())
      except Exception:  # Some need arguments or a library that is not there.
        continue
  ctx.put("jax_environment", jax.print_environment_info(return_string=True))
  if importlib.util.find_spec("torch") is not None:
    import torch
    ctx.put("torch_cuda", torch.version.cuda)
    ctx.put("torch_cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    ctx.put("torch_device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
  if shutil.which("nvidia-smi"):
    query = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                 "--format=csv,noheader"], 30)
    ctx.put("nvidia_smi", query.stdout.strip())
  cuda = ", ".join(f"{k[len('jax_'):] if k.startswith('jax_') else k} {ctx.figures[k]}"
                   for k in ("jax_cuda_runtime", "jax_cudnn", "torch_cuda", "torch_cudnn")
                   if ctx.figures.get(k))
  ctx.row(f"{ctx.figures['device_count']} x {device.device_kind} ({device.platform}), "
          f"{os.cpu_count()} CPUs", cuda or "no CUDA reported")


def write_stand_in_cache(data_dir: str, train: int, test: int) -> None:
  """Random 28x28x1 images in memory.py's cache format, standing in for Fashion-MNIST (--dry)."""
  import numpy as np
  from resnet_jax.data import memory
  rng = np.random.default_rng(0)
  names = [f"class_{i}" for i in range(10)]
  for split, count in (("train", train), ("test", test)):
    images = rng.integers(0, 256, (count, 28, 28, 1), np.uint8)
    labels = np.arange(count, dtype=np.int32) % 10
    meta = {"dataset": "fashion_mnist", "split": split, "version": "stand-in",
            "num_classes": 10, "class_names": names}
    memory._write_cache(memory._cache_path(data_dir, "fashion_mnist", split),
                        memory.Split(images, labels), meta)


@section("fashion_mnist", "ResNet-18 trained on Fashion-MNIST to its accuracy")
def fashion_mnist(ctx: Context) -> None:
  from resnet_jax.data import memory
  s, data_dir = ctx.sizes, ctx.data_dir
  if ctx.dry:
    data_dir = os.path.join(ctx.work, "data")
    write_stand_in_cache(data_dir, *s["stand_in_examples"])
  for split in ("train", "test"):
    if memory.cached_shape("fashion_mnist", split, data_dir) is None:
      raise Skip(f"no decoded Fashion-MNIST {split} split in {data_dir}/resnet_jax_cache/ (TFDS "
                 "is not here to make one): run `python scripts/gpu_check.py --prepare` on a "
                 "machine with TFDS and carry .carry")
  workdir = os.path.join(ctx.work, "run")
  flags = {"dataset": "fashion_mnist", "data_dir": data_dir, "input_pipeline": "memory",
           **s["flags"]}
  ctx.put("command", main_command(s["config"], "W", flags)[1:])
  finished = run(main_command(s["config"], workdir, flags), ctx.left())
  ctx.put("process_seconds", finished.seconds)
  records = read_records(workdir)
  if records and os.path.exists(os.path.join(workdir, "config.json")):
    training_figures(ctx, workdir, records)  # Also when stopped at its limit: as far as it got.
  finished.check("the training run")


def read_records(workdir: str) -> list[dict]:
  """The run's metrics.jsonl, one JSON object a line (its file format, not the reporting
  modules, is the interface); a torn last line is skipped."""
  records = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          continue
  return [r for r in records if isinstance(r, dict) and "step" in r]


def training_figures(ctx: Context, workdir: str, records: list[dict]) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  evals = [r for r in records if r.get("eval_accuracy") is not None]
  final = evals[-1] if evals else {}
  best = max(evals, key=lambda r: r["eval_accuracy"]) if evals else {}
  speeds = [r["images_per_second"] for r in records if r.get("images_per_second") is not None]
  field = lambda key: max((r[key] for r in records if r.get(key) is not None), default=None)
  figures = {"final_eval_accuracy": final.get("eval_accuracy"),
             "final_eval_step": final.get("step"), "best_eval_accuracy": best.get("eval_accuracy"),
             "best_eval_step": best.get("step"),
             "steps_completed": field("step"), "epochs_completed": field("epoch"),
             "wall_time_s": field("wall_time_s"), "train_time_s": field("train_time_s"),
             "compile_time_s": field("compile_time_s"),
             "median_images_per_second": statistics.median(speeds) if speeds else None,
             **{key: config.get(key) for key in ("model", "width", "stem", "batch_size",
                                                 "half_precision", "num_train_examples")}}
  for key, value in figures.items():
    ctx.put(key, value)
  number = lambda value, spec: "n/a" if value is None else format(value, spec)
  ctx.row(f"{config['model']} width {config['width']}, {config['stem']} stem, "
          f"{'bf16' if config['half_precision'] else 'fp32'}, {figures['steps_completed']} steps "
          f"of {config['batch_size']} ({number(figures['epochs_completed'], 'g')} epochs), "
          "memory pipeline",
          f"**{number(figures['final_eval_accuracy'], '.2%')}** final eval accuracy (best "
          f"{number(figures['best_eval_accuracy'], '.2%')}); "
          f"{minutes(figures['wall_time_s'] or 0)} wall (compile, evals, checkpoints in); "
          f"{number(figures['median_images_per_second'], ',.0f')} img/s (median of the log "
          "intervals)")


def step_comparison(ctx: Context) -> None:
  """scripts/benchmark.py at each batch size: resnet_jax's step against PyTorch's best variant."""
  s, failures = ctx.sizes, []
  for i, batch in enumerate(s["batches"]):
    share = ctx.left() / (len(s["batches"]) - i)
    command = [sys.executable, os.path.join(SCRIPTS, "benchmark.py"), f"--batch_size={batch}",
               f"--torch_timeout={max(share * s['torch_share'], 1):.0f}",
               *(f"--{k}={v}" for k, v in s["flags"].items())]
    finished = run(command, share)
    flags = s["flags"]
    what = (f"{flags['model']} width {flags['width']}, {flags['stem']} stem, "
            f"{flags['image_size']} px, {flags['precision']}, batch {batch}")
    try:
      finished.check("scripts/benchmark.py")
      out = json.loads(finished.stdout.strip().splitlines()[-1])
    except (RuntimeError, TimeoutError, ValueError, IndexError) as e:
      failures.append(f"batch {batch}: {e}")
      ctx.put(f"batch_{batch}", {"error": str(e)})
      ctx.row(what, f"failed: {e}")
      continue
    ctx.put(f"batch_{batch}", out)
    ours = (f"resnet_jax {out['jax_images_per_second']:,.0f} img/s"
            + (f" ({out['mfu']:.1%} MFU)" if out.get("mfu") else ""))
    if out.get("torch_images_per_second"):
      theirs = (f"PyTorch {out['torch_images_per_second']:,.0f} ({out['torch_best_variant']}): "
                f"**{out['ratio']:.2f}x**")
    else:
      theirs = "PyTorch: none ran"
    if out.get("torch_skipped_reason"):
      theirs += f" (PyTorch: {out['torch_skipped_reason']})"
    ctx.row(what, f"{ours}; {theirs}")
  if len(failures) == len(s["batches"]):
    raise RuntimeError("; ".join(failures))


section("resnet18_step", "ResNet-18 CIFAR-shape training step against PyTorch")(step_comparison)
section("resnet50_step", "ResNet-50 224 px bf16 training step against PyTorch")(step_comparison)


def _write_chunk(job: tuple[str, str, int, int, int]) -> None:
  import input_benchmark  # scripts/: the photo-like JPEGs its own benchmark reads.
  root, split, count, classes, seed = job
  input_benchmark.write_synthetic_jpegs(root, split, count, classes, seed=seed)


def write_jpeg_folder(root: str, counts: dict[str, int], classes: int) -> None:
  """ROOT/<split>/<class>/*.jpg, written by every core; each chunk holds every class."""
  jobs = []
  for split, count in counts.items():
    chunks = max(1, min(os.cpu_count() or 1, count // classes))
    jobs += [(os.path.join(root, f"part{len(jobs) + k}"), split, count // chunks
              + (k < count % chunks), classes, len(jobs) + k) for k in range(chunks)]
  if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)
  with multiprocessing.get_context("fork").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
    pool.map(_write_chunk, jobs)
  for part, split, *_ in jobs:  # One folder tree: each part's files renamed into it.
    for class_name in os.listdir(os.path.join(part, split)):
      os.makedirs(os.path.join(root, split, class_name), exist_ok=True)
      for name in os.listdir(os.path.join(part, split, class_name)):
        os.rename(os.path.join(part, split, class_name, name),
                  os.path.join(root, split, class_name, f"{os.path.basename(part)}_{name}"))
    shutil.rmtree(part)


@section("streamed_resnet50", "ResNet-50 streamed from a JPEG folder, every core decoding")
def streamed_resnet50(ctx: Context) -> None:
  s = ctx.sizes
  root, start = os.path.join(ctx.work, "jpegs"), time.monotonic()
  write_jpeg_folder(root, {"train": s["train_images"], "val": s["val_images"]}, s["classes"])
  ctx.put("jpeg_write_seconds", time.monotonic() - start)
  workers = os.cpu_count() if s["workers"] == "all" else int(s["workers"])
  epochs = s["flags"]["num_epochs"]
  flags = {"dataset": f"folder:{root}", "eval_split": "val", "input_pipeline": "stream",
           "data_workers": workers, "eval_every_epochs": epochs,
           "checkpoint_every_epochs": epochs, **s["flags"]}
  workdir = os.path.join(ctx.work, "run")
  ctx.put("command", main_command(s["config"], "W", flags)[1:])
  finished = run(main_command(s["config"], workdir, flags), ctx.left())
  ctx.put("process_seconds", finished.seconds)
  records = [r for r in read_records(workdir) if "data_wait_fraction" in r]
  if records:  # Also when stopped at its limit.
    stream_figures(ctx, records, workers)
  finished.check("the streamed run")
  if not records:
    raise RuntimeError(f"the streamed run wrote no data_wait_fraction to {workdir}/metrics.jsonl")


def stream_figures(ctx: Context, records: list[dict], workers: int) -> None:
  s = ctx.sizes
  steady = records[1:] or records  # The first interval holds the compile.
  waits = [r["data_wait_fraction"] for r in steady]
  speed = statistics.median(r["images_per_second"] for r in steady)
  for key, value in (("workers", workers), ("train_records", len(records)),
                     ("images_per_second_median", speed),
                     ("data_wait_fraction_median", statistics.median(waits)),
                     ("data_wait_fraction_max", max(waits)),
                     ("data_wait_fraction_first_record", records[0]["data_wait_fraction"])):
    ctx.put(key, value)
  ctx.row(f"{s['flags'].get('model', 'resnet50')}, {s['train_images']:,} synthetic JPEGs "
          f"(400-600 px), {workers} decoding workers, batch {s['flags']['batch_size']}, "
          f"{len(steady)} log intervals after the first",
          f"{speed:,.0f} img/s (median); data_wait_fraction median {statistics.median(waits):.3f},"
          f" max {max(waits):.3f}")


def median_ms(function: Callable, argument, calls: int) -> float:
  """Median milliseconds of function(argument), each call waited for."""
  import jax
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(function(argument))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


@section("stablehlo", "a ResNet-18 through jax.export: serialized, deserialized, timed")
def stablehlo(ctx: Context) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from resnet_jax.models import resnet
  s = ctx.sizes
  model = resnet.create_model(s["model"], s["classes"], stem=s["stem"], width=s["width"])
  shape = (s["image_size"], s["image_size"], 3)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))()
  # The weights are constants of the program, as in a deployed file.
  forward = jax.jit(lambda images: model.apply(variables, images, train=False))
  start = time.perf_counter()
  batch = jax.export.symbolic_shape("b")[0]
  blob = jax.export.export(forward)(jax.ShapeDtypeStruct((batch, *shape), jnp.float32)).serialize()
  ctx.put("export_seconds", time.perf_counter() - start)
  ctx.put("serialized_bytes", len(blob))
  restored = jax.jit(jax.export.deserialize(bytearray(blob)).call)
  rng = np.random.default_rng(0)
  for size in s["batches"]:
    images = jnp.asarray(rng.standard_normal((size, *shape), np.float32))
    start = time.perf_counter()
    served = np.asarray(restored(images))
    first_s = time.perf_counter() - start
    native = np.asarray(forward(images))
    figures = {"first_call_seconds": first_s, "ms": median_ms(restored, images, s["calls"]),
               "native_ms": median_ms(forward, images, s["calls"]),
               "max_relative_difference": float(np.abs(served - native).max()
                                                / max(np.abs(native).max(), 1e-30))}
    ctx.put(f"batch_{size}", figures)
    ctx.row(f"{s['model']} {s['stem']} stem, {s['image_size']} px fp32, batch {size}, "
            f"{len(blob) / 2**20:.1f} MiB serialized",
            f"{figures['ms']:.3f} ms deserialized ({size / figures['ms'] * 1e3:,.0f} img/s), "
            f"{figures['native_ms']:.3f} ms jitted in-process; median of {s['calls']}")
