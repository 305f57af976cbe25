"""Tests for resnet_jax.plot: curve, confusion-matrix and reliability-diagram PNGs, the command
line and its errors."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from PIL import Image

from resnet_jax.reporting import metrics_file, plots
from tests.conftest import REPO
from resnet_jax.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = ["cat", "dog", "frog"]
CONFUSION = [[8, 1, 1], [2, 7, 1], [0, 0, 10]]


def make_run(workdir: str, num_epochs: int = 3, final_accuracy: float = 0.8) -> str:
  """A workdir with train lines every half epoch and an eval line every epoch."""
  records = []
  for half in range(1, 2 * num_epochs + 1):
    step, epoch = half * 50, half / 2
    records.append({"step": step, "epoch": epoch, "train_loss": 2.0 / epoch,
                    "train_accuracy": 0.3 + 0.1 * epoch, "images_per_second": 1000.0,
                    "learning_rate": 0.1 * (1 - epoch / (num_epochs + 1))})
    if half % 2 == 0:
      records.append({"step": step, "epoch": epoch, "eval_loss": 2.2 / epoch,
                      "eval_accuracy": final_accuracy * epoch / num_epochs})
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, metrics_file.METRICS_FILE), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return workdir


def write_eval(workdir: str) -> None:
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({"step": 300, "eval_loss": 0.5, "eval_accuracy": 0.8333,
               "per_class_accuracy": [0.8, 0.7, 1.0], "confusion_matrix": CONFUSION,
               "class_names": CLASS_NAMES}, f)


# Five of 15 bins hold examples; the rest are empty (None), as eval.json writes them.
BIN_COUNT = [0] * 9 + [3, 0, 6, 10, 0, 21]
BIN_ACCURACY = [None] * 9 + [0.3333, None, 0.5, 0.8, None, 0.9524]
BIN_CONFIDENCE = [None] * 9 + [0.62, None, 0.77, 0.84, None, 0.97]


def write_calibrated_eval(workdir: str) -> str:
  """An eval.json as --mode=eval writes it today, calibration bins included; returns its path."""
  path = os.path.join(workdir, "eval.json")
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"step": 300, "eval_accuracy": 0.825, "eval_ece": 0.0456,
               "confusion_matrix": CONFUSION, "class_names": CLASS_NAMES,
               "calibration": {"bin_edges": [i / 15 for i in range(16)], "count": BIN_COUNT,
                               "accuracy": BIN_ACCURACY, "confidence": BIN_CONFIDENCE}}, f)
  return path


def assert_png(path: str, min_width: int, min_height: int) -> None:
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.width >= min_width and image.height >= min_height


def legend_texts(figure) -> list[str]:
  return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_curves_png_for_one_run(tmp_path):
  workdir = make_run(str(tmp_path / "resnet18"))
  output = str(tmp_path / "out" / "curves.png")
  plots.plot([workdir], output)
  assert_png(output, 1200, 350)


def test_curves_figure_has_three_panels_and_every_point(tmp_path):
  workdir = make_run(str(tmp_path / "run"), num_epochs=3)
  figure = plots.curves_figure([workdir], ["run"])
  titles = [axes.get_title() for axes in figure.axes]
  assert titles == ["loss", "accuracy", "learning rate"]
  loss_axes = figure.axes[0]
  train_line, eval_line = loss_axes.get_lines()
  assert list(train_line.get_xdata()) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
  assert list(eval_line.get_xdata()) == [1.0, 2.0, 3.0]
  assert list(eval_line.get_ydata()) == pytest.approx([2.2, 1.1, 2.2 / 3])
  assert (train_line.get_linestyle(), eval_line.get_linestyle()) == ("-", "--")
  assert len(figure.axes[2].get_lines()) == 1
  assert legend_texts(figure) == ["run", "train", "eval"]


def test_two_runs_get_their_own_colours_and_labels(tmp_path):
  first = make_run(str(tmp_path / "a"))
  second = make_run(str(tmp_path / "b"), num_epochs=2, final_accuracy=0.6)
  figure = plots.curves_figure([first, second], plots.run_labels([first, second], ["base", "wide"]))
  assert legend_texts(figure) == ["base", "wide", "train", "eval"]
  colours = {line.get_color() for line in figure.axes[1].get_lines()}
  assert colours == {"C0", "C1"}


def test_labels_default_to_basenames_and_must_match_in_number(tmp_path):
  assert plots.run_labels(["runs/a/", "x/b"], None) == ["a", "b"]
  with pytest.raises(UserError, match="2 workdirs"):
    plots.run_labels(["runs/a", "runs/b"], ["only_one"])


def test_confusion_png_with_counts_and_class_names(tmp_path):
  workdir = make_run(str(tmp_path / "run"))
  write_eval(workdir)
  result = plots.read_eval(workdir)
  figure = plots.confusion_figure(result, "run")
  axes = figure.axes[0]
  assert [t.get_text() for t in axes.get_xticklabels()] == CLASS_NAMES
  assert [t.get_text() for t in axes.get_yticklabels()] == CLASS_NAMES
  cells = [t.get_text() for t in axes.texts]
  assert cells == [str(v) for row in CONFUSION for v in row]
  normalized = [t.get_text() for t in plots.confusion_figure(result, "run", normalize=True).axes[0].texts]
  assert normalized[:3] == ["0.80", "0.10", "0.10"] and normalized[-1] == "1.00"


def test_confusion_needs_eval_json(tmp_path):
  workdir = make_run(str(tmp_path / "run"))
  with pytest.raises(UserError, match="has no eval.json.*--mode=eval"):
    plots.plot([workdir], str(tmp_path / "curves.png"), confusion=str(tmp_path / "confusion.png"))
  assert not (tmp_path / "curves.png").exists()  # Inputs are checked before anything is written.


def test_reliability_diagram_shows_each_filled_bin_the_diagonal_and_the_counts(tmp_path):
  path = write_calibrated_eval(str(tmp_path / "run"))
  file, result = plots.read_calibration(str(tmp_path / "run"))
  assert file == path  # A workdir stands for its eval.json.
  figure = plots.calibration_figure(result, plots._calibration_title("run", result))
  reliability, histogram = figure.axes
  filled = [i for i, count in enumerate(BIN_COUNT) if count]
  bars = reliability.patches
  assert [b.get_height() for b in bars] == pytest.approx([BIN_ACCURACY[i] for i in filled])
  assert [b.get_x() for b in bars] == pytest.approx([i / 15 for i in filled])
  assert [b.get_width() for b in bars] == pytest.approx([1 / 15] * len(filled))
  diagonal, points = reliability.get_lines()
  assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]
  assert list(points.get_xdata()) == pytest.approx([BIN_CONFIDENCE[i] for i in filled])
  assert list(points.get_ydata()) == pytest.approx([BIN_ACCURACY[i] for i in filled])
  assert [b.get_height() for b in histogram.patches] == BIN_COUNT
  assert reliability.get_title() == "run, step 300, accuracy 82.50%, ECE 4.56%"


def test_command_line_draws_the_reliability_diagram_of_a_file_or_a_workdir(tmp_path):
  path = write_calibrated_eval(str(tmp_path / "run"))
  chosen = tmp_path / "out" / "reliability.png"
  for flags_given, written in (([f"--calibration={tmp_path / 'run'}"],
                                tmp_path / "run" / "calibration.png"),
                               ([f"--calibration={path}", f"--calibration_output={chosen}"],
                                chosen)):
    completed = subprocess.run([sys.executable, "-m", "resnet_jax.plot", *flags_given],
                               cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"wrote {written}"
    assert_png(str(written), 400, 500)


@pytest.mark.parametrize("case", ["missing", "older eval.json"])
def test_calibration_of_bad_input_is_one_error_line(tmp_path, case):
  workdir = make_run(str(tmp_path / "run"))
  if case == "missing":
    target, message = str(tmp_path / "nowhere.json"), (
        f"error: --calibration={tmp_path / 'nowhere.json'}: no such file: pass an eval.json")
  else:
    write_eval(workdir)  # Written before calibration bins existed.
    target, message = workdir, f"error: {workdir}/eval.json holds no calibration bins (KeyError"
  completed = subprocess.run(
      [sys.executable, "-m", "resnet_jax.plot", f"--calibration={target}"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert completed.returncode == 2
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), completed.stderr
  assert "--mode=eval" in lines[0]
  assert not (tmp_path / "run" / "calibration.png").exists()


def test_command_line_draws_both_pngs(tmp_path):
  first, second = make_run(str(tmp_path / "a")), make_run(str(tmp_path / "b"))
  write_eval(first)
  curves, confusion = tmp_path / "curves.png", tmp_path / "confusion.png"
  completed = subprocess.run(
      [sys.executable, "-m", "resnet_jax.plot", f"--workdir={first}", f"--workdir={second}",
       f"--output={curves}", f"--confusion={confusion}", "--labels=one,two"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert completed.returncode == 0, completed.stderr
  assert_png(str(curves), 1200, 350)
  assert_png(str(confusion), 400, 400)


def test_command_line_error_exits_2_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  output = tmp_path / "out.png"
  completed = subprocess.run(
      [sys.executable, "-m", "resnet_jax.plot", f"--workdir={workdir}", f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert completed.returncode == 2
  assert "Traceback" not in completed.stderr
  assert completed.stderr.strip().splitlines() == [
      f"error: {workdir} has no metrics.jsonl: pass the --workdir of a training run"]
  assert not output.exists()


def test_importing_plot_defines_no_flags():
  # resnet_jax.main defines --workdir too; both modules must import into one process.
  import resnet_jax.main  # noqa: F401
  assert "workdir" in flags.FLAGS
  assert "output" not in flags.FLAGS and "confusion" not in flags.FLAGS
  assert "calibration" not in flags.FLAGS


def test_calibration_or_confusion_of_a_multi_label_eval_says_it_has_none(tmp_path):
  path = tmp_path / "eval.json"
  path.write_text(json.dumps({"eval_map": 0.5, "eval_count": 4, "eval_loss": 0.3}))
  with pytest.raises(UserError, match="is a multi-label eval: .* no calibration bins"):
    plots.read_calibration(str(path))
  with pytest.raises(UserError, match="is a multi-label eval: .* no confusion matrix"):
    plots.read_eval(str(tmp_path))
