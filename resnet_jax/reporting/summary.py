"""What a finished run amounts to: its facts from metrics.jsonl and config.json, as a table.

`summarize_run` gathers them; `format_summary` is the table the trainer
prints at the end of a run, followed by the commands that evaluate and
fine-tune it.
"""

import json
import math
import os
import shlex
from collections.abc import Mapping
from typing import Any

from absl import logging

from resnet_jax.reporting import metrics_file, timing


def _read_config(workdir: str) -> dict[str, Any]:
  """The run's config.json, or {} where it is missing or unreadable (the summary goes on)."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, json.JSONDecodeError) as e:
    logging.warning("%s cannot be read (%s): summary without model and dataset", path, e)
    return {}
  return config if isinstance(config, dict) else {}


def summarize_run(workdir: str, final_step: int | None = None,
                  best_step: int | None = None) -> dict[str, Any]:
  """The facts of a run from its metrics.jsonl and config.json; absent facts are None.

  Given the run's final step and its best checkpoint's step (what the
  trainer ends with), the final and best evals are those of these steps,
  so that the summary agrees with the checkpoints; evals logged past the
  final step (by a longer run that a resume cut back) do not count.

  Keys: workdir, model, dataset, num_epochs, steps_completed,
  epochs_completed, num_evals, final_eval_step, final_eval_accuracy,
  final_eval_loss, best_eval_step, best_eval_accuracy, wall_time_s,
  mean_images_per_second, compile_time_s, train_time_s (compile, eval and
  saves excluded; it and wall_time_s are the last written, each the run's
  total so far, see timing.py) and time_to ({target: (train seconds, step)} for each of the
  config's target_accuracies reached). Accuracies are fractions in [0, 1];
  the best is the earliest step with the highest eval accuracy.
  """
  records = metrics_file.read_metrics(workdir)
  config = _read_config(workdir)
  evals = [r for r in metrics_file.series(records, "eval_accuracy")
           if math.isfinite(float(r["eval_accuracy"]))]
  if final_step is not None:
    evals = [r for r in evals if int(r["step"]) <= final_step]
  final = evals[-1] if evals else None
  best = max(evals, key=lambda r: float(r["eval_accuracy"])) if evals else None
  at_best = [r for r in evals if int(r["step"]) == best_step]
  best = at_best[0] if at_best else best
  speeds = [float(r["images_per_second"])
            for r in metrics_file.series(records, "images_per_second")
            if math.isfinite(float(r["images_per_second"]))]
  return {
      "workdir": workdir,
      "model": config.get("model"),
      "dataset": config.get("dataset"),
      "num_epochs": config.get("num_epochs"),
      "steps_completed": max((int(r["step"]) for r in records), default=0),
      "epochs_completed": max((float(r.get("epoch", 0.0)) for r in records), default=0.0),
      "num_evals": len(evals),
      "final_eval_step": int(final["step"]) if final else None,
      "final_eval_accuracy": float(final["eval_accuracy"]) if final else None,
      "final_eval_loss": float(final["eval_loss"]) if final and "eval_loss" in final else None,
      "best_eval_step": int(best["step"]) if best else None,
      "best_eval_accuracy": float(best["eval_accuracy"]) if best else None,
      "wall_time_s": timing.total_wall_time(records),
      "mean_images_per_second": sum(speeds) / len(speeds) if speeds else None,
      "compile_time_s": timing.total_compile_time(records),
      "train_time_s": timing.total_train_time(records),
      "targets": [float(t) for t in config.get("target_accuracies") or ()],
      "time_to": timing.first_reached(records, config.get("target_accuracies") or ()),
  }


def format_duration(seconds: float) -> str:
  """`3723.4` -> `1h 02m 03s`; under a minute, `12.3s`."""
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def format_summary(summary: Mapping[str, Any], best_checkpoint_path: str | None,
                   workdir: str) -> str:
  """The end-of-run table, then how to evaluate the run and how to fine-tune from it.

  Args:
    summary: what `summarize_run` returned.
    best_checkpoint_path: the best checkpoint's directory; None, "" or
      "none" where the run saved none.
    workdir: the run directory, as the user should type it in the hints.
  """
  what = " on ".join(str(summary[k]) for k in ("model", "dataset") if summary.get(k))
  title = f"Run summary: {what} ({workdir})" if what else f"Run summary ({workdir})"
  epochs = f"{summary['epochs_completed']:.2f}"
  if summary.get("num_epochs"):
    epochs += f" of {summary['num_epochs']:g}"
  if summary.get("final_eval_accuracy") is None:
    final_row = best_row = "- (no evaluation in metrics.jsonl)"
  else:
    loss = summary.get("final_eval_loss")
    final_row = (f"{100 * summary['final_eval_accuracy']:.2f}%  "
                 f"(step {summary['final_eval_step']:,}"
                 + (f", loss {loss:.4f})" if loss is not None else ")"))
    best_row = f"{100 * summary['best_eval_accuracy']:.2f}%  (step {summary['best_eval_step']:,})"
  has_checkpoint = best_checkpoint_path and best_checkpoint_path != "none"
  wall_time, speed = summary.get("wall_time_s"), summary.get("mean_images_per_second")
  rows = [
      ("epochs completed", epochs),
      ("steps", f"{summary['steps_completed']:,}"),
      ("final eval accuracy", final_row),
      ("best eval accuracy", best_row),
      ("best checkpoint", best_checkpoint_path if has_checkpoint else "- (none saved)"),
      ("wall time", format_duration(wall_time) if wall_time is not None else "- (not logged)"),
      ("mean images/s", f"{speed:,.0f}" if speed is not None else "- (no train lines)"),
  ]
  if summary.get("train_time_s") is not None:
    compile_s = summary.get("compile_time_s")
    rows.append(("training time", format_duration(summary["train_time_s"])
                 + "  (compile, eval and saves excluded"
                 + (f"; compile {format_duration(compile_s)})" if compile_s is not None else ")")))
  for target in summary.get("targets") or ():
    reached = (summary.get("time_to") or {}).get(target)
    rows.append((f"time to {100 * target:g}%",
                 f"{format_duration(reached[0])}  (step {reached[1]:,})" if reached
                 else "- (not reached)"))
  width = max(len(label) for label, _ in rows)
  lines = [title] + [f"  {label:<{width}}  {value}" for label, value in rows]
  quoted = shlex.quote(workdir)
  lines.append(f"Evaluate:  python -m resnet_jax.main --workdir={quoted} --mode=eval")
  lines.append(f"Fine-tune: python -m resnet_jax.main --config=configs/finetune.py "
               f"--config.init_checkpoint={quoted} --workdir=NEW_WORKDIR")
  return "\n".join(lines)
