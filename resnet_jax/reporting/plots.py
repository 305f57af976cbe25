r"""Training curves, a confusion matrix and a reliability diagram as PNG files.

  python -m resnet_jax.plot --workdir=runs/a [--workdir=runs/b ...] --output=curves.png \
      [--labels=a,b] [--confusion=confusion.png] [--normalize]
  python -m resnet_jax.plot --calibration=runs/a/eval.json [--calibration_output=PNG]

The curves show loss, accuracy and learning rate against epoch, one colour
per run (solid: train, dashed with dots: eval). The confusion matrix comes
from the first workdir's eval.json (`python -m resnet_jax.main --mode=eval`);
the reliability diagram from the calibration bins of an eval.json.
Draws without a display (Agg).
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from resnet_jax.reporting import metrics_file
from resnet_jax.errors import UserError

# Cells carry numbers only while they stay legible.
MAX_ANNOTATED_CLASSES = 30


def run_labels(workdirs: Sequence[str], labels: Sequence[str] | None) -> list[str]:
  """The legend name of each run: --labels where given, else the workdir's basename."""
  if labels:
    if len(labels) != len(workdirs):
      raise UserError(f"--labels has {len(labels)} names for {len(workdirs)} workdirs: "
                      "give one name per --workdir, in the same order")
    return list(labels)
  return [os.path.basename(os.path.normpath(w)) or w for w in workdirs]


def _xy(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
  """Epochs and values of one metric, one point per step."""
  points = metrics_file.series(records, key)
  return [float(r["epoch"]) for r in points], [float(r[key]) for r in points]


def curves_figure(workdirs: Sequence[str], labels: Sequence[str]) -> Figure:
  """Loss, accuracy and learning rate against epoch for each run."""
  runs = []
  for workdir in workdirs:
    records = metrics_file.read_metrics(workdir)
    if not records:
      raise UserError(f"{os.path.join(workdir, metrics_file.METRICS_FILE)} holds no metrics yet: "
                      "plot it once the run has logged a step")
    runs.append(records)
  figure = Figure(figsize=(15, 4.5), layout="constrained")
  loss_axes, accuracy_axes, lr_axes = figure.subplots(1, 3)
  panels = ((loss_axes, "loss", "train_loss", "eval_loss"),
            (accuracy_axes, "accuracy", "train_accuracy", "eval_accuracy"))
  for index, records in enumerate(runs):
    color = f"C{index % 10}"
    for axes, _, train_key, eval_key in panels:
      axes.plot(*_xy(records, train_key), color=color, linewidth=1.2)
      axes.plot(*_xy(records, eval_key), color=color, linestyle="--", marker="o", markersize=3)
    lr_axes.plot(*_xy(records, "learning_rate"), color=color, linewidth=1.2)
  for axes, title in ((loss_axes, "loss"), (accuracy_axes, "accuracy"), (lr_axes, "learning rate")):
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.grid(alpha=0.3)
  accuracy_axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
  handles = [Line2D([], [], color=f"C{i % 10}", label=label) for i, label in enumerate(labels)]
  handles += [Line2D([], [], color="0.3", label="train"),
              Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=3, label="eval")]
  loss_axes.legend(handles=handles, loc="best", fontsize="small")
  return figure


def read_eval(workdir: str) -> dict[str, Any]:
  """The workdir's eval.json, checked for a square confusion matrix."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.isfile(path):
    raise UserError(f"{workdir} has no eval.json: run python -m resnet_jax.main "
                    f"--workdir={workdir} --mode=eval first")
  try:
    with open(path) as f:
      result = json.load(f)
    if "eval_map" in result and "confusion_matrix" not in result:
      raise UserError(f"{path} is a multi-label eval: a picture has several classes, so there "
                      "is no confusion matrix; its per-class AP, precision, recall and F1 are "
                      "in that file")
    matrix = np.asarray(result["confusion_matrix"], dtype=np.float64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} holds no readable confusion_matrix ({e!r}): rerun "
                    "--mode=eval to write it again") from None
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not matrix.size:
    raise UserError(f"{path}: confusion_matrix has shape {matrix.shape}, not classes x classes: "
                    "rerun --mode=eval to write it again")
  return result


def confusion_figure(result: Mapping[str, Any], title: str, normalize: bool = False) -> Figure:
  """The confusion matrix (rows: true class, columns: predicted), counts or row fractions in cells.

  Colour is always the row fraction, so a rare class reads as clearly as a common one.
  """
  counts = np.asarray(result["confusion_matrix"], dtype=np.float64)
  num_classes = counts.shape[0]
  names = list(result.get("class_names") or [])
  if len(names) != num_classes:
    names = [str(i) for i in range(num_classes)]
  row_totals = counts.sum(axis=1, keepdims=True)
  fractions = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
  side = min(max(5.0, 0.55 * num_classes + 2.5), 40.0)
  figure = Figure(figsize=(side + 1.2, side), layout="constrained")
  axes = figure.subplots()
  image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
  ticks = np.arange(num_classes)
  axes.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
  axes.set_yticks(ticks, names)
  axes.set_xlabel("predicted class")
  axes.set_ylabel("true class")
  axes.set_title(title)
  if num_classes <= MAX_ANNOTATED_CLASSES:
    fontsize = 9 if num_classes <= 12 else 7
    for row in range(num_classes):
      for column in range(num_classes):
        text = f"{fractions[row, column]:.2f}" if normalize else f"{counts[row, column]:.0f}"
        axes.text(column, row, text, ha="center", va="center", fontsize=fontsize,
                  color="white" if fractions[row, column] > 0.5 else "black")
  return figure


def _confusion_title(label: str, result: Mapping[str, Any]) -> str:
  """`run, step 7820, accuracy 93.10%`: what the matrix shows."""
  parts = [label]
  if "step" in result:
    parts.append(f"step {result['step']}")
  if result.get("eval_accuracy") is not None:
    parts.append(f"accuracy {100 * float(result['eval_accuracy']):.2f}%")
  return ", ".join(parts)


def read_calibration(path: str) -> tuple[str, dict[str, Any]]:
  """(the eval.json's path, its contents) for an eval.json or a workdir holding one, checked
  for calibration bins."""
  file = os.path.join(path, "eval.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise UserError(f"--calibration={path}: no such file: pass an eval.json written by "
                    "python -m resnet_jax.main --mode=eval, or the workdir holding one")
  try:
    with open(file) as f:
      result = json.load(f)
    if "eval_map" in result and "calibration" not in result:
      raise UserError(f"{file} is a multi-label eval: it has mAP and per-class scores, no "
                      "calibration bins (the reliability diagram is of single-label runs)")
    bins = result["calibration"]
    edges, count = np.asarray(bins["bin_edges"], np.float64), np.asarray(bins["count"], np.float64)
    sizes = {len(edges) - 1, len(count), len(bins["accuracy"]), len(bins["confidence"])}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{file} holds no calibration bins ({type(e).__name__}: {e}; an eval.json "
                    "written before they existed has none): rerun --mode=eval to write "
                    "them") from None
  if len(sizes) != 1 or not count.size:
    raise UserError(f"{file}: its calibration bins disagree in number: rerun --mode=eval to "
                    "write them again")
  return file, result


def calibration_figure(result: Mapping[str, Any], title: str) -> Figure:
  """The reliability diagram: per-bin accuracy against confidence beside the diagonal, and
  the examples in each confidence bin."""
  bins = result["calibration"]
  edges, count = np.asarray(bins["bin_edges"], np.float64), np.asarray(bins["count"], np.float64)
  filled = count > 0
  accuracy = np.array([a if a is not None else np.nan for a in bins["accuracy"]], np.float64)
  confidence = np.array([c if c is not None else np.nan for c in bins["confidence"]], np.float64)
  lefts, widths = edges[:-1], np.diff(edges)
  figure = Figure(figsize=(5.5, 7), layout="constrained")
  reliability, histogram = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  reliability.bar(lefts[filled], accuracy[filled], widths[filled], align="edge", color="C0",
                  alpha=0.35, edgecolor="C0", label="accuracy of the bin")
  reliability.plot([0, 1], [0, 1], color="0.4", linestyle="--", label="perfect calibration")
  reliability.plot(confidence[filled], accuracy[filled], color="C3", marker="o", markersize=4,
                   label="accuracy at mean confidence")
  reliability.set_xlim(0, 1)
  reliability.set_ylim(0, 1)
  reliability.set_ylabel("accuracy")
  reliability.set_title(title)
  reliability.legend(loc="upper left", fontsize="small")
  reliability.grid(alpha=0.3)
  histogram.bar(lefts, count, widths, align="edge", color="0.5", edgecolor="white")
  histogram.set_xlabel("confidence (top softmax probability)")
  histogram.set_ylabel("examples")
  histogram.grid(alpha=0.3)
  return figure


def _calibration_title(label: str, result: Mapping[str, Any]) -> str:
  """`runs/a, step 7820, accuracy 93.10%, ECE 2.31%`: what the diagram shows."""
  title = _confusion_title(label, result)
  if result.get("eval_ece") is not None:
    title += f", ECE {100 * float(result['eval_ece']):.2f}%"
  return title


def save(figure: Figure, path: str) -> None:
  """Writes the figure as a PNG, making its folder where needed."""
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  figure.savefig(path, format="png", dpi=110)
  print(f"wrote {path}")


def plot(workdirs: Sequence[str] | None, output: str | None, confusion: str | None = None,
         labels: Sequence[str] | None = None, normalize: bool = False,
         calibration: str | None = None, calibration_output: str | None = None) -> None:
  """Draws the requested PNGs; every input is checked before anything is written.

  Args:
    workdirs: run directories, each with a metrics.jsonl (needed for curves and confusion).
    output: where the curves PNG goes; None for none.
    confusion: where the confusion-matrix PNG of the first workdir goes; None for none.
    labels: one legend name per workdir; None for the workdirs' basenames.
    normalize: row fractions instead of counts in the confusion matrix's cells.
    calibration: an eval.json, or a workdir holding one, to draw the reliability diagram of;
      None for none.
    calibration_output: where that diagram goes; None for calibration.png beside the eval.json.
  """
  if not output and not confusion and not calibration:
    raise UserError("nothing to draw: pass --output=curves.png, --confusion=confusion.png "
                    "and/or --calibration=eval.json")
  if (output or confusion) and not workdirs:
    raise UserError("pass at least one --workdir=DIR")
  names = run_labels(workdirs, labels) if workdirs else []
  curves = curves_figure(workdirs, names) if output else None
  matrix = diagram = None
  if confusion:
    result = read_eval(workdirs[0])
    matrix = confusion_figure(result, _confusion_title(names[0], result), normalize)
  if calibration:
    file, result = read_calibration(calibration)
    run = os.path.basename(os.path.dirname(os.path.abspath(file)))
    diagram = calibration_figure(result, _calibration_title(run, result))
    calibration_output = calibration_output or os.path.join(os.path.dirname(file),
                                                            "calibration.png")
  if curves is not None:
    save(curves, output)
  if matrix is not None:
    save(matrix, confusion)
  if diagram is not None:
    save(diagram, calibration_output)
