"""Runs with imbalanced classes and multi-label CSVs: train, resume exactly, evaluate in eval
mode, predict the labels above the threshold; bad multi-label input through the command."""

import concurrent.futures
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax.evaluation import evaluator, prediction
from resnet_jax.train import trainer
from tests.cli.test_bad_input import assert_clean_error, command
from tests.conftest import REPO, assert_resume_is_exact, tiny_config, tiny_flags
from tests.data.test_file_dataset_runs import csv_dataset, csv_config  # noqa: F401 (fixture)
from tests.data.test_multi_label_csv import TEST, TRAIN, write_multi_label

MULTI_TRAIN = TRAIN * 2  # 16 pictures: two steps of 8.


@pytest.fixture(scope="module")
def multi_label_csv(tmp_path_factory):
  return write_multi_label(tmp_path_factory.mktemp("multi"), train=MULTI_TRAIN, test=TEST * 3)


@pytest.mark.slow
@pytest.mark.parametrize("input_pipeline", ["memory", "stream"])
def test_multi_label_run_evaluates_map_and_predicts_labels_above_the_threshold(
    multi_label_csv, tmp_path, input_pipeline):
  workdir = str(tmp_path / "run")
  config = tiny_config(dataset=f"csv:{multi_label_csv}", csv_label_separator=";",
                       batch_size=8, num_train_steps=3, image_size=16, mixup_alpha=0.2,
                       label_smoothing=0.1, input_pipeline=input_pipeline)
  result = trainer.train_and_evaluate(config, workdir, quiet=True)
  assert result["eval"]["eval_count"] == 6 and 0 <= result["eval"]["eval_map"] <= 1
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert saved["multi_label"] is True and saved["class_names"] == ["car", "cat", "dog"]
  assert saved["train_class_counts"] == [8, 8, 8]  # Positives of car, cat, dog.
  report = evaluator.evaluate_workdir(workdir, None)
  written = json.loads(open(os.path.join(workdir, "eval.json")).read())
  assert written["eval_map"] == report["eval_map"] == pytest.approx(result["eval"]["eval_map"])
  assert len(written["per_class_ap"]) == 3 and written["multi_label_threshold"] == 0.5
  # Predict: every class above the threshold, most probable first, through the command.
  pictures = os.path.join(os.path.dirname(multi_label_csv), "pics")
  predictor = prediction.load_predictor(workdir)
  files = prediction.expand_paths([pictures])
  probabilities = predictor.probabilities(np.stack([
      prediction.read_image(f, predictor.input_shape) for f in files]))
  threshold = float(np.median(probabilities))  # Some classes above it, some below.
  out = subprocess.run([sys.executable, "-m", "resnet_jax.predict", f"--workdir={workdir}",
                        f"--threshold={threshold}", pictures], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  listed = _parse_predictions(out.stdout)
  assert set(listed) == set(files)
  for file, row in zip(files, probabilities):
    above = [predictor.class_names[c] for c in np.argsort(-row, kind="stable")
             if row[c] > threshold]
    assert [name for name, _ in listed[file]] == above
    assert all(abs(p - row[predictor.class_names.index(n)]) < 1e-4 for n, p in listed[file])
  assert 0 < sum(len(labels) for labels in listed.values()) < probabilities.size


def _parse_predictions(stdout: str) -> dict[str, list[tuple[str, float]]]:
  """predict's printout: a file line, then '  probability  class' lines (or a none line)."""
  found, current = {}, None
  for line in stdout.splitlines():
    if not line.startswith("  "):
      current = found.setdefault(line.strip(), [])
    elif not line.strip().startswith("(no class above"):
      probability, name = line.split(None, 1)
      current.append((name.strip(), float(probability)))
  return found


@pytest.mark.slow
@pytest.mark.parametrize("input_pipeline", ["memory", "stream"])
def test_class_balanced_sampling_resumes_exactly(csv_dataset, tmp_path, monkeypatch,  # noqa: F811
                                                 input_pipeline):
  config = csv_config(csv_dataset, class_balance="sample", input_pipeline=input_pipeline,
                      num_train_steps=0, num_epochs=2.0, checkpoint_every_epochs=1.0)
  # 24 train rows: 3 steps per epoch; call 4 is the first of epoch 2.
  assert_resume_is_exact(config, tmp_path, monkeypatch, stop_at_call=4, num_steps=6)


# Bad multi-label input through the real command ---------------------------------------

BAD_CASES = {
    "unknown_class": ({"csv_label_separator": ";"}, "pics/test_1.png,test,dog;bird",
                      ["label 'bird' of split 'test'", "no class for it"]),
    "not_zero_or_one": ({"csv_label_columns": "*"}, "pics/test_1.png,test,1,2,0",
                        ["column 'dog' holds '2', not 0 or 1"]),
    "balanced_multi_label": ({"csv_label_separator": ";", "class_balance": "sample"}, None,
                             ["class_balance='sample' is for single-label data"]),
}


@pytest.fixture(scope="module")
def bad_results(tmp_path_factory):
  base = tmp_path_factory.mktemp("bad_multi")
  runs = {}
  for case, (fields, last_row, _) in BAD_CASES.items():
    folder = base / case
    path = write_multi_label(folder, columns="csv_label_columns" in fields)
    if last_row is not None:
      lines = open(path).read().splitlines()
      open(path, "w").write("\n".join(lines[:-1] + [last_row]) + "\n")
    runs[case] = tiny_flags(folder / "run", base / "tfds", **{"dataset": f"csv:{path}",
                                                              "image_size": 16, **fields})
  with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
    futures = {case: pool.submit(command, flags) for case, flags in runs.items()}
  return base, {case: future.result() for case, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_multi_label_input_is_one_error_line_and_writes_nothing(bad_results, case):
  base, results = bad_results
  assert_clean_error(results[case], *BAD_CASES[case][2])
  assert not (base / case / "run").exists()
