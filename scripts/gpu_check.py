r"""One GPU check: the figures docs/benchmarks.md wants from a lent GPU, in one command.

  python scripts/gpu_check.py --prepare         # here, once: .carry/ (data cache and wheels)
  python3 scripts/gpu_check.py --output=$OUT/gpu_check.json    # on the GPU machine, < 8 min
  python scripts/gpu_check.py --dry --output=/tmp/gpu_check.json     # CPU, tiny: the plumbing

Sections, in order (scripts/gpu_check_sections.py): environment (device, CUDA,
cuDNN); fashion_mnist (ResNet-18, 20 epochs, from the carried decoded cache);
resnet18_step and resnet50_step (scripts/benchmark.py against PyTorch's best
variant); streamed_resnet50 (a synthetic JPEG folder, every core decoding:
images/s and data_wait_fraction); stablehlo (jax.export of a ResNet-18).

Each section runs in a child process of its own, so GPU memory is freed
between sections and a crash or hang ends that section alone: its error, or
the figures it had when its time ran out, go into the JSON and the run goes
on. Sections run in order of priority, each for at most its cap_s and the
time left before the deadline; once less than min_section_s is left, the rest
are recorded as skipped, with the reason (complete figures for the first
sections are worth more than every section cut short). Writes --output (JSON,
rewritten after every section), the same stem with .md (the Markdown table,
also printed last) and .log (every section's output).

The GPU machine has no TensorFlow, TFDS, Grain, ml_collections or simplejpeg.
`--prepare` (on a machine with TFDS; Debian ships the data:
`apt-get install -y dataset-fashion-mnist`) decodes Fashion-MNIST through
`resnet_jax.data.memory.load_split`, the trainer's own cache, compressed into
.carry/gpu_check/resnet_jax_cache/fashion_mnist/, and downloads the missing
wheels for the GPU machine's Python into .carry/wheels/. Then run there with
`carry: [".carry"]`:

  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      .carry/wheels/*.whl && export PYTHONPATH=/tmp/site || exit; \
  PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --output=$OUT/gpu_check.json
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
sys.path.insert(0, REPO)

import gpu_check_processes as processes  # noqa: E402  (needs the paths above)
import gpu_check_sections as sections  # noqa: E402

# Every size the check uses, as (on the GPU, --dry on CPU). cap_s: the most a section may
# take; expected on one H100 (estimates, before any run): environment 10 s, fashion_mnist 85,
# resnet18_step 160-180, resnet50_step 200-230 (torch.compile and two XLA compiles per batch
# size dominate), streamed_resnet50 80, stablehlo 20: past the deadline, so the last
# sections may be skipped; `--sections=` runs them in a second call.
SIZES = {
    "run": {"deadline_s": (450, 900), "min_section_s": (20, 5)},
    "environment": {"cap_s": (30, 60)},
    "fashion_mnist": {
        "cap_s": (150, 150),
        "config": ("configs/resnet18.py", "configs/tiny.py"),
        "flags": ({"num_epochs": 20, "half_precision": True},
                  {"num_train_steps": 2, "batch_size": 16, "half_precision": True}),
        "stand_in_examples": ((0, 0), (64, 32)),  # --dry: random train, test images.
    },
    "resnet18_step": {
        "cap_s": (200, 150),
        "batches": ((512, 2048), (8,)),
        "torch_share": (0.55, 0.5),  # Of each batch's time: the PyTorch variants' timeout.
        "flags": ({"model": "resnet18", "width": 64, "stem": "cifar", "image_size": 32,
                   "precision": "bf16", "steps": 50},
                  {"model": "resnet_tiny", "width": 8, "stem": "cifar", "image_size": 16,
                   "precision": "bf16", "steps": 2, "warmup": 1, "repeats": 1,
                   "num_examples": 32}),
    },
    "resnet50_step": {
        "cap_s": (260, 150),
        "batches": ((128, 256), (8,)),
        "torch_share": (0.55, 0.5),
        "flags": ({"model": "resnet50", "width": 64, "stem": "imagenet", "image_size": 224,
                   "precision": "bf16", "steps": 30},
                  {"model": "resnet_tiny", "width": 8, "stem": "imagenet", "image_size": 16,
                   "precision": "bf16", "steps": 2, "warmup": 1, "repeats": 1,
                   "num_examples": 32}),
    },
    "streamed_resnet50": {
        "cap_s": (150, 150),
        "config": ("configs/imagenet_resnet50.py", "configs/imagenet_resnet50.py"),
        "train_images": (4096, 16),
        "val_images": (512, 8),
        "classes": (10, 2),
        "workers": ("all", 2),
        "flags": ({"batch_size": 256, "learning_rate": 0.1, "warmup_epochs": 1, "num_epochs": 8,
                   "log_every_steps": 8},
                  {"batch_size": 8, "learning_rate": 0.1, "warmup_epochs": 1, "num_epochs": 2,
                   "log_every_steps": 1, "model": "resnet_tiny", "width": 8, "image_size": 16}),
    },
    "stablehlo": {
        "cap_s": (60, 60),
        "model": ("resnet18", "resnet_tiny"), "stem": ("imagenet", "imagenet"),
        "width": (64, 8), "image_size": (224, 16), "classes": (1000, 10),
        "batches": ((1, 32), (1, 2)),
        "calls": (100, 3),  # Timed calls per batch size; the median is reported.
    },
}
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "torch",
            "grain", "ml_collections", "simplejpeg")
# Not on the GPU machine's image (docs/KINDS: its package list): carried as wheels.
CARRIED_WHEELS = ("grain", "array_record", "portpicker", "ml_collections", "simplejpeg")
DEVICE_PYTHON = "3.12"
CARRY = os.path.join(REPO, ".carry")


def sizes_for(dry: bool) -> dict[str, dict]:
  """SIZES with one value per field: the GPU's or the dry run's."""
  return {name: {field: pair[dry] for field, pair in fields.items()}
          for name, fields in SIZES.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output", default="gpu_check.json", help="JSON file; .md and .log beside it")
  p.add_argument("--dry", action="store_true", help="tiny sizes, seconds on a CPU")
  p.add_argument("--sections", default="", help="comma-separated subset, in registry order")
  p.add_argument("--deadline_s", type=float, default=0, help="0: SIZES['run']['deadline_s']")
  p.add_argument("--data_dir", default=os.path.join(CARRY, "gpu_check"),
                 help="folder holding resnet_jax_cache/fashion_mnist/ (made by --prepare)")
  p.add_argument("--prepare", action="store_true",
                 help="write the decoded Fashion-MNIST cache into --data_dir and the wheels "
                      "the GPU machine lacks into .carry/wheels, then stop")
  p.add_argument("--archives", default="", help="--prepare: Fashion-MNIST's original archives; "
                 "empty: rebuilt from Debian's dataset-fashion-mnist")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # Runs one section.
  p.add_argument("--result", default="", help=argparse.SUPPRESS)
  p.add_argument("--work", default="", help=argparse.SUPPRESS)
  p.add_argument("--timeout_s", type=float, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  unknown = set(filter(None, args.sections.split(","))) - set(sections.SECTIONS)
  if unknown:
    p.error(f"unknown --sections {sorted(unknown)}: choose from {list(sections.SECTIONS)}")
  return args


# The parent ------------------------------------------------------------------


def run_all(names: list[str], caps: dict[str, float], deadline_s: float, min_section_s: float,
            runner: Callable[[str, float], dict], on_result: Callable[[dict], None],
            clock: Callable[[], float] = time.monotonic) -> dict[str, dict]:
  """Runs each section for min(its cap, the time left); a failure is recorded, not raised."""
  results, end = {}, clock() + deadline_s
  for name in names:
    start = clock()
    limit = min(caps[name], end - start)
    if limit < min_section_s:
      record = {"status": "skipped", "reason": f"global deadline: {max(end - start, 0):.0f} s "
                f"left of {deadline_s:.0f} s, under the {min_section_s:.0f} s a section needs"}
    else:
      try:
        record = runner(name, limit)
      except Exception as e:  # The runner itself failing must not lose the other sections.
        record = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    results[name] = {"title": sections.TITLES.get(name, name), **record,
                     "seconds": round(clock() - start, 2), "limit_s": round(max(limit, 0), 1)}
    on_result(results)
  return results


def run_child(args: argparse.Namespace, work: str, name: str, timeout_s: float) -> dict:
  """One section in a child process of this script; its figures survive a timeout or crash."""
  folder = os.path.join(work, name)
  os.makedirs(folder)
  result, log = os.path.join(folder, "result.json"), os.path.join(work, f"{name}.log")
  command = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--result={result}",
             f"--work={folder}", f"--data_dir={args.data_dir}", f"--timeout_s={timeout_s}",
             *(["--dry"] if args.dry else [])]
  with open(log, "w") as out:
    child = subprocess.Popen(command, cwd=REPO, env=processes.child_env(), stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
      child.wait(timeout=timeout_s + 10)  # The child stops its own work at timeout_s - 5.
      stopped = False
    except subprocess.TimeoutExpired:
      processes.kill_tree(child.pid)
      child.wait()
      stopped = True
  try:
    with open(result) as f:
      record = json.load(f)
  except (OSError, ValueError):
    record = {"figures": {}, "rows": []}
  if stopped:
    record.update(status="timed_out", error=f"stopped at its limit, {timeout_s:.0f} s")
  elif "status" not in record:  # Died without a word: a signal or a hard crash.
    record.update(status="error", error=f"exit status {child.returncode}: {tail(log)}")
  return record


def tail(path: str, lines: int = 3) -> str:
  with open(path, errors="replace") as f:
    return " | ".join(f.read().strip().splitlines()[-lines:])


def child_main(args: argparse.Namespace) -> None:
  """Runs the section named by --child and writes its status into --result."""
  import traceback
  ctx = sections.Context(args.child, sizes_for(args.dry)[args.child], args.dry, args.work,
                         args.data_dir, args.result, time.monotonic() + args.timeout_s - 5)
  try:
    sections.SECTIONS[args.child](ctx)
  except sections.Skip as e:
    ctx.save(status="skipped", reason=str(e))
  except TimeoutError as e:  # A command it ran reached the section's limit.
    ctx.save(status="timed_out", error=str(e))
  except Exception as e:
    traceback.print_exc()
    ctx.save(status="error", error=f"{type(e).__name__}: {e}")
  else:
    ctx.save(status="ok")


def package_versions() -> dict[str, str | None]:
  found = {}
  for name in VERSIONS:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  plugins = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
             if (d.metadata["Name"] or "").startswith(("jax-cuda", "jax_cuda"))}
  return {**found, **dict(sorted(plugins.items()))}


def markdown(report: dict) -> str:
  """The report as a Markdown heading, a line of versions and one table, for docs/benchmarks.md."""
  env = report["sections"].get("environment", {}).get("figures", {})
  device = report.get("device") or "device unknown"
  versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
  libraries = ", ".join(f"{k} {env[k]}" for k in ("jax_cuda_runtime", "jax_cudnn", "torch_cuda",
                                                    "torch_cudnn") if env.get(k))
  lines = [f"### GPU check, {report['date'][:10]}: {device}", "",
           f"`{report['command']}` ({report['seconds']:.0f} s in all, deadline "
           f"{report['deadline_s']:.0f} s). {versions}" + (f"; {libraries}" if libraries else "")
           + f"; {env.get('cpu_count', os.cpu_count())} CPUs.", "",
           "| section | measured | result | s |", "| --- | --- | --- | --- |"]
  cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
  for name, record in report["sections"].items():
    rows = record.get("rows") or [[record.get("title", ""), ""]]
    status = record.get("status")
    if status != "ok":
      note = f"{status}: {record.get('reason') or record.get('error') or ''}"
      rows = rows + [["", note]] if record.get("rows") else [[rows[0][0], note]]
    for i, (what, result) in enumerate(rows):
      seconds = f"{record['seconds']:.0f}" if i == 0 else ""
      lines.append(f"| {name if i == 0 else ''} | {cell(what)} | {cell(result)} | {seconds} |")
  return "\n".join(lines)


def write_report(report: dict, output: str) -> None:
  tmp = f"{output}.tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, output)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.child:
    return child_main(args)
  if args.prepare:
    import gpu_check_prepare
    return gpu_check_prepare.prepare(args.data_dir, args.archives, CARRIED_WHEELS,
                                     DEVICE_PYTHON, os.path.join(CARRY, "wheels"))
  sizes = sizes_for(args.dry)
  names = [n for n in sections.SECTIONS if not args.sections or n in args.sections.split(",")]
  deadline_s = args.deadline_s or sizes["run"]["deadline_s"]
  output = os.path.abspath(args.output)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  start = time.monotonic()
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
            "dry": args.dry, "host": platform.node(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average_before": list(os.getloadavg()),
            "deadline_s": deadline_s, "device": None, "versions": package_versions(),
            "sizes": sizes, "seconds": 0.0, "sections": {}}

  def on_result(results: dict) -> None:
    env = results.get("environment", {}).get("figures", {})
    if env.get("device_kind"):
      report["device"] = f"{env['device_count']} x {env['device_kind']} ({env['platform']})"
    report.update(sections=results, seconds=time.monotonic() - start)
    write_report(report, output)

  with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
    try:
      run_all(names, {n: sizes[n]["cap_s"] for n in names}, deadline_s,
              sizes["run"]["min_section_s"],
              lambda name, limit: run_child(args, work, name, limit), on_result)
    finally:
      with open(os.path.splitext(output)[0] + ".log", "w") as log:
        for name in names:
          path = os.path.join(work, f"{name}.log")
          if os.path.exists(path):
            with open(path, errors="replace") as f:
              log.write(f"===== {name}\n{f.read()}\n")
  report["load_average_after"] = list(os.getloadavg())
  write_report(report, output)
  table = markdown(report)
  with open(os.path.splitext(output)[0] + ".md", "w") as f:
    f.write(table + "\n")
  print(table, flush=True)


if __name__ == "__main__":
  main()
