"""Runs on a CSV and on a folder with a holdout: train, resume exactly, evaluate, predict; bad input."""

import concurrent.futures
import json
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import holdout, sources
from resnet_jax.evaluation import evaluator, prediction
from resnet_jax.train import trainer
from tests.cli.test_bad_input import assert_clean_error, command
from tests.conftest import assert_resume_is_exact, tiny_config, tiny_flags

LABELS = ("cat", "10", "2")  # Sorted as strings: 10, 2, cat.


def write_pictures(root, per_label: int, seed: int = 0) -> list[tuple[str, str]]:
  """16x16 PNGs (grey, RGB, palette) under root/pics, each label a distinct brightness."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "pics", exist_ok=True)
  written = []
  for k, label in enumerate(LABELS):
    for i in range(per_label):
      pixels = np.clip(60 * k + rng.integers(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
      image = Image.fromarray(pixels).convert(("RGB", "L", "P")[i % 3])
      path = root / "pics" / f"{label}_{seed}_{i}.png"
      image.save(path)
      written.append((str(path), label))
  return written


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory):
  """labels.csv: 24 train rows (relative paths) and 6 test rows (absolute paths)."""
  root = tmp_path_factory.mktemp("csv")
  rows = [(os.path.relpath(p, root), label, "train") for p, label in write_pictures(root, 8)]
  rows += [(p, label, "test") for p, label in write_pictures(root, 2, seed=1)]
  lines = ["file,label,split"] + [",".join(row) for row in rows]
  (root / "labels.csv").write_text("\n".join(lines) + "\n")
  return root / "labels.csv"


def csv_config(csv_path, **overrides):
  return tiny_config(**{"dataset": f"csv:{csv_path}", "batch_size": 8, "num_train_steps": 3,
                        "image_size": 16, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("input_pipeline", ["memory", "stream"])
def test_csv_trains_evaluates_and_predicts_with_its_class_names(csv_dataset, tmp_path,
                                                               input_pipeline):
  workdir = str(tmp_path / "run")
  config = csv_config(csv_dataset, input_pipeline=input_pipeline,
                      data_workers=1 if input_pipeline == "stream" else 0)
  result = trainer.train_and_evaluate(config, workdir, quiet=True)
  assert result["eval"]["eval_count"] == 6
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert saved["input_pipeline"] == input_pipeline and saved["dataset"] == f"csv:{csv_dataset}"
  assert saved["class_names"] == ["10", "2", "cat"] and saved["num_classes"] == 3
  report = evaluator.evaluate_workdir(workdir, None)
  assert report["eval_count"] == 6 and report["class_names"] == ["10", "2", "cat"]
  predictor = prediction.load_predictor(workdir)
  tests = sources.open_split(f"csv:{csv_dataset}", "test").paths
  found = prediction.classify(predictor, tests, top_k=3)
  assert {p["class"] for r in found for p in r["predictions"]} == {"10", "2", "cat"}


@pytest.mark.slow
def test_holdout_run_evaluates_the_same_pictures_in_eval_mode(tmp_path):
  root = tmp_path / "images"
  for path, label in write_pictures(tmp_path, 8):  # A folder with no validation split.
    os.makedirs(root / "train" / label, exist_ok=True)
    os.rename(path, root / "train" / label / os.path.basename(path))
  workdir = str(tmp_path / "run")
  config = tiny_config(dataset=f"folder:{root}", eval_split="holdout:0.25", batch_size=8,
                       num_train_steps=3, input_pipeline="memory")
  result = trainer.train_and_evaluate(config, workdir, quiet=True)
  held = 3 * holdout.held_out_count(8, 0.25)
  assert result["eval"]["eval_count"] == held
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert saved["eval_split"] == "holdout:0.25" and saved["num_train_examples"] == 24 - held
  report = evaluator.evaluate_workdir(workdir, None)  # Re-derived from config.json alone.
  assert report["eval_count"] == held and report["eval_split"] == "holdout:0.25"


@pytest.mark.slow
def test_streamed_csv_run_with_a_holdout_resumes_exactly(csv_dataset, tmp_path, monkeypatch):
  config = csv_config(csv_dataset, eval_split="holdout:0.25", input_pipeline="stream",
                      num_train_steps=0, num_epochs=3.0, checkpoint_every_epochs=1.0)
  # 24 train rows less 6 held out: 2 steps per epoch; call 3 is mid-epoch 2.
  assert_resume_is_exact(config, tmp_path, monkeypatch, stop_at_call=3, num_steps=6)


# Bad input through the real command ----------------------------------------------------

BAD_CASES = {
    "missing_file": (("gone.png,cat,train",), {}, ["row 32", "gone.png does not exist"]),
    "no_such_column": ((), {"csv_label_column": "class"},
                       ["no column 'class' (its columns: file, label, split)"]),
    "label_only_in_eval": (("pics/dog.png,dog,test",), {},
                           ["row 32", "label 'dog' of split 'test'", "training split"]),
    "fraction_outside": ((), {"eval_split": "holdout:1.5"}, ["'holdout:1.5'", "between 0 and 1"]),
    "empty_csv": (None, {}, ["is empty", "file,label,split"]),
    "holdout_on_tfds": ((), {"dataset": "cifar10", "eval_split": "holdout:0.1"},
                        ["cifar10 is a TFDS dataset", "train[90%:]"]),
    "missing_split": ((), {"eval_split": "valid"}, ["no rows of split 'valid'", "holdout:0.1"]),
}


@pytest.fixture(scope="module")
def bad_results(csv_dataset, tmp_path_factory):
  """The command run for each case of BAD_CASES on a spoilt copy of the CSV, a few at a time."""
  base = tmp_path_factory.mktemp("bad_csv")
  good = csv_dataset.read_text()
  runs = {}
  for case, (extra_rows, overrides, _) in BAD_CASES.items():
    csv_path = csv_dataset.parent / f"{case}.csv"  # Beside the pictures: relative paths hold.
    csv_path.write_text("" if extra_rows is None else good + "".join(f"{r}\n" for r in extra_rows))
    flags = tiny_flags(base / case, base / "tfds", **{"dataset": f"csv:{csv_path}",
                                                      "image_size": 16, **overrides})
    runs[case] = flags
  with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
    futures = {case: pool.submit(command, flags) for case, flags in runs.items()}
  return base, {case: future.result() for case, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_csv_or_holdout_is_one_error_line_and_writes_nothing(bad_results, case):
  base, results = bad_results
  assert_clean_error(results[case], *BAD_CASES[case][2])
  assert not (base / case).exists()
