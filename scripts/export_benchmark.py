r"""Exported files against the checkpoint: accuracy on the eval split, file size, latency.

  taskset -c 0 python scripts/export_benchmark.py --workdir=runs/fm_r18w16 --out_dir=exports

Exports the run's checkpoint as float32 and int8 ONNX and LiteRT files (and
StableHLO) into --out_dir through `resnet_jax.cli.export.export_file` (what
`python -m resnet_jax.export` runs), unless they are there already; then, for
each file and for the checkpoint itself (`resnet_jax.predict`'s model call,
`load_predictor(...).probabilities`), the accuracy and loss on the run's whole
eval split (`--evaluate`'s code; the checkpoint's through the same JAX function
the files are made of, which tests/evaluation/test_deployment.py checks equals
`--mode=eval`), and the median latency of one call at batch 1 and 32 after warm-up.
Every runtime gets one thread (onnxruntime intra_op_num_threads=1, LiteRT
num_threads=1, XLA single-threaded by the flags set below before JAX loads);
run it under `taskset -c 0` so that all of them share one core. Prints a
Markdown table, then one JSON line, last, with `uptime` before and after.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# One thread for XLA's CPU client, before JAX is imported (by resnet_jax below).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                           " intra_op_parallelism_threads=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

# (label, --format, --quantize, file name)
ARTIFACTS = (("ONNX fp32", "onnx", "", "model.onnx"),
             ("ONNX int8", "onnx", "int8", "model_int8.onnx"),
             ("LiteRT fp32", "tflite", "", "model.tflite"),
             ("LiteRT int8", "tflite", "int8", "model_int8.tflite"),
             ("StableHLO fp32", "stablehlo", "", "model.stablehlo"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="the trained run")
  p.add_argument("--out_dir", required=True, help="where the exported files go (or are)")
  p.add_argument("--calibration_images", type=int, default=256)
  p.add_argument("--batch_sizes", default="1,32")
  p.add_argument("--calls", type=int, default=50, help="timed calls per batch size")
  p.add_argument("--warmup", type=int, default=5, help="untimed calls first")
  p.add_argument("--skip_accuracy", action="store_true")
  return p.parse_args(argv)


def uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def median_ms(call, batch: np.ndarray, calls: int, warmup: int) -> float:
  for _ in range(warmup):
    call(batch)
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    call(batch)
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  from resnet_jax.cli import export as cli
  from resnet_jax.evaluation import deployment, evaluator, prediction
  from resnet_jax.checkpoints.restore import load_model
  from resnet_jax.interop import runtimes
  load_before = uptime()
  cpus = sorted(os.sched_getaffinity(0))
  os.makedirs(args.out_dir, exist_ok=True)
  for label, name, quantize, file in ARTIFACTS:
    path = os.path.join(args.out_dir, file)
    if not os.path.exists(path):
      start = time.perf_counter()
      cli.export_file(args.workdir, name, path, quantize, args.calibration_images)
      print(f"exported {label} in {time.perf_counter() - start:.1f} s")
  loaded = load_model(args.workdir, dtype=None)
  config = cli.run_config(args.workdir, loaded.restored.config)
  predictor = prediction.load_predictor(args.workdir, tta="none")
  jax_logits = deployment.logits_function(loaded.model, loaded.variables, loaded.config)
  # (label, logits for accuracy, the call timed, file)
  rows = [("JAX checkpoint (predict)", lambda x: np.asarray(jax_logits(x)),
           predictor.probabilities, None)]
  for label, _, _, file in ARTIFACTS:
    path = os.path.join(args.out_dir, file)
    run = runtimes.load_runner(path, threads=1)
    rows.append((label, run, run, path))
  side = tuple(int(d) for d in config.input_shape)
  rng = np.random.default_rng(0)
  results = []
  for label, logits_of, timed, path in rows:
    result = {"artifact": label, "file": os.path.basename(path) if path else "checkpoints/",
              "size_mib": (os.path.getsize(path) if path else _checkpoint_bytes(args.workdir))
              / 2**20}
    if not args.skip_accuracy:
      summary = evaluator.summarize(deployment.evaluate_logits(config, logits_of, 256))
      result.update(accuracy=summary["eval_accuracy"], loss=summary["eval_loss"],
                    count=summary["eval_count"])
    for batch in (int(b) for b in args.batch_sizes.split(",")):
      pictures = rng.integers(0, 256, (batch, *side), np.uint8)
      result[f"ms_batch_{batch}"] = median_ms(timed, pictures, args.calls, args.warmup)
    print(json.dumps(result))
    results.append(result)
  report = {"workdir": os.path.abspath(args.workdir), "cpus": cpus, "uptime_before": load_before,
            "uptime_after": uptime(), "results": results}
  print_table(report, [int(b) for b in args.batch_sizes.split(",")])
  print(json.dumps(report))
  return report


def _checkpoint_bytes(workdir: str) -> int:
  """The best checkpoint's state on disk (what --mode=eval reads)."""
  from resnet_jax.checkpoints.restore import load_variables
  step = load_variables(workdir).step
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def print_table(report: dict, batches: list[int]) -> None:
  print(f"\nuptime before: {report['uptime_before']}\nuptime after:  {report['uptime_after']}"
        f"\nCPUs: {report['cpus']}\n")
  header = ["artifact", "accuracy", "loss", "size (MiB)"] + [f"ms, batch {b}" for b in batches]
  print("| " + " | ".join(header) + " |")
  print("|" + " --- |" * len(header))
  for r in report["results"]:
    accuracy = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "-"
    loss = f"{r['loss']:.4f}" if "loss" in r else "-"
    cells = [r["artifact"], accuracy, loss, f"{r['size_mib']:.2f}"] + [
        f"{r[f'ms_batch_{b}']:.2f}" for b in batches]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
