r"""One config over several seeds, one after another: mean +- std of accuracy and time.

  python scripts/seeds.py --config=configs/resnet18_94.py --seeds=5 --workdir=runs/r18_94 \
      [--first_seed=0] [--device="1x A100"] [--config.FIELD=VALUE ...]

Each seed S runs the real command, `python -m resnet_jax.main --config=CONFIG
--config.seed=S --workdir=WORKDIR/seed_S --quiet` plus every `--config.*` flag
given here, and is read back from its metrics.jsonl: final eval accuracy,
training time (compile, eval and saves excluded), wall time, and the time to
each of the config's target_accuracies. Rerunning resumes unfinished seeds.
Prints a table per seed, then the aggregate as a row of README.md's results
table (dataset | config | test accuracy | wall time | device | command).
Exits 1 when a seed's run failed (the others are still reported).
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# After the path, for runs from a checkout.
from resnet_jax.reporting import summary as run_summary  # noqa: E402


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """The script's own flags, and the --config.* flags passed through to every run."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file, e.g. configs/resnet18_94.py")
  p.add_argument("--workdir", required=True, help="base folder; seed S runs in WORKDIR/seed_S")
  p.add_argument("--seeds", type=int, default=3, help="number of seeds")
  p.add_argument("--first_seed", type=int, default=0)
  p.add_argument("--device", default="", help="device column text; default: asked of JAX")
  args, rest = p.parse_known_args(argv)
  if args.seeds < 1:
    p.error("--seeds must be at least 1")
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    p.error(f"unrecognized arguments {' '.join(unknown)}: only --config.FIELD=VALUE flags "
            "pass through to the runs")
  return args, rest


def command_for_seed(config: str, seed: int, workdir: str, extra: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "resnet_jax.main", f"--config={config}", f"--config.seed={seed}",
          f"--workdir={os.path.join(workdir, f'seed_{seed}')}", "--quiet", *extra]


def spread(values: Sequence[float]) -> dict[str, float] | None:
  """mean, std (sample; 0 for one value), min, max and n; None without values."""
  if not values:
    return None
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "min": min(values), "max": max(values), "n": len(values)}


def aggregate(summaries: Sequence[dict]) -> dict[str, dict | None]:
  """Spreads of final accuracy, training time, wall time and each time to target over runs."""
  pick = lambda key: [s[key] for s in summaries if s.get(key) is not None]
  result = {"final_eval_accuracy": spread(pick("final_eval_accuracy")),
            "train_time_s": spread(pick("train_time_s")),
            "wall_time_s": spread(pick("wall_time_s"))}
  targets = (summaries[0].get("targets") or ()) if summaries else ()
  for target in targets:
    times = [s["time_to"][target][0] for s in summaries if target in (s.get("time_to") or {})]
    result[f"time_to_{target:g}"] = spread(times)
  return result


def _percent(s: dict) -> str:
  return (f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f} (min {100 * s['min']:.2f}, "
          f"max {100 * s['max']:.2f}; n={s['n']})")


def _seconds(s: dict) -> str:
  return (f"{run_summary.format_duration(s['mean'])} ± {s['std']:.1f}s "
          f"(min {run_summary.format_duration(s['min'])}, "
          f"max {run_summary.format_duration(s['max'])})")


def markdown_row(dataset: str, config_text: str, stats: dict, device: str, command: str,
                 num_runs: int) -> str:
  """The aggregate as a row of README.md's results table."""
  accuracy = _percent(stats["final_eval_accuracy"]) if stats["final_eval_accuracy"] else "-"
  times = []
  if stats["wall_time_s"]:
    times.append(_seconds(stats["wall_time_s"]))
  if stats["train_time_s"]:
    times.append(f"training alone {_seconds(stats['train_time_s'])}")
  for key, value in stats.items():
    if key.startswith("time_to_"):
      target = float(key[len("time_to_"):])
      times.append(f"to {100 * target:g}%: " + (f"{_seconds(value)}, {value['n']}/{num_runs} runs"
                                                if value else f"0/{num_runs} runs"))
  cells = [dataset, config_text, accuracy, "; ".join(times) or "-", device, f"`{command}`"]
  return f"| {' | '.join(cells)} |"


def probe_device() -> str:
  """'N x device kind', asked of JAX in a child process (this one stays off the accelerator)."""
  code = "import jax; d = jax.devices(); print(f'{len(d)}x {d[0].device_kind}')"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  return result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout else "?"


def main(argv: Sequence[str]) -> int:
  args, extra = parse_args(argv)
  seeds = range(args.first_seed, args.first_seed + args.seeds)
  summaries, failed = [], []
  for seed in seeds:
    command = command_for_seed(args.config, seed, args.workdir, extra)
    print(f"seed {seed}: {shlex.join(command[1:])}", flush=True)
    if subprocess.run(command).returncode != 0:
      failed.append(seed)
      continue
    summary = run_summary.summarize_run(os.path.join(args.workdir, f"seed_{seed}"))
    summaries.append(summary)
    accuracy, train = summary["final_eval_accuracy"], summary["train_time_s"]
    print(f"seed {seed}: final eval accuracy "
          f"{'-' if accuracy is None else f'{100 * accuracy:.2f}%'}, training time "
          f"{'-' if train is None else run_summary.format_duration(train)}", flush=True)
  if failed:
    print(f"error: the runs of seed(s) {', '.join(map(str, failed))} failed: see their output "
          "above; rerun to resume them", file=sys.stderr)
  if not summaries:
    return 1
  stats = aggregate(summaries)
  config_text = " ".join([os.path.splitext(os.path.basename(args.config))[0], *extra])
  this = shlex.join(["python", "scripts/seeds.py", *argv])
  print(markdown_row(summaries[0].get("dataset") or "?", config_text, stats,
                     args.device or probe_device(), this, args.seeds))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
