"""The data a run reads: image folders and TFDS datasets, held in memory or streamed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax.data import pipeline
from resnet_jax.reporting import metrics_file
from resnet_jax.train import trainer
from resnet_jax.errors import UserError
from resnet_jax import sharding
from tests.conftest import (REPO, assert_resume_is_exact, resolved_config, tiny_config,
                            tiny_flags, write_image_folder)
from tests.data.test_streaming import PidSource

CLASSES = ("zebra", "cat", "dog house")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  """ROOT/train (36 images) and ROOT/val (12) of three classes, mixed sizes, modes and formats."""
  root = tmp_path_factory.mktemp("mixed")
  write_image_folder(root, "train", CLASSES, per_class=12)
  write_image_folder(root, "val", CLASSES, per_class=4, seed=1)
  return root


def run(args, timeout=300, env=None):
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


def folder_flags(workdir, root, **overrides):
  values = {"dataset": f"folder:{root}", "eval_split": "val", "batch_size": 8,
            "image_size": 16, **overrides}
  return tiny_flags(workdir, os.path.join(workdir, "unused_tfds"), **values)


@pytest.mark.slow
def test_folder_streams_trains_evaluates_predicts_and_fine_tunes(mixed_folder, tmp_path):
  workdir = tmp_path / "run"
  # Two worker processes decode the training stream and both evaluations.
  result = run(["-m", "resnet_jax.main", *folder_flags(workdir, mixed_folder, num_epochs=2.0,
                                                       data_workers=2)])
  assert result.returncode == 0, result.stderr[-3000:]
  evals = [r for r in map(json.loads, open(workdir / "metrics.jsonl")) if "eval_count" in r]
  assert len(evals) == 2 and all(r["eval_count"] == 12 for r in evals)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["input_pipeline"] == "stream"  # Auto: the images differ in size.
  assert saved["class_names"] == sorted(CLASSES) and saved["input_shape"] == [16, 16, 3]

  result = run(["-m", "resnet_jax.main", f"--workdir={workdir}", "--mode=eval", "--quiet"])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "eval.json").read_text())
  assert report["eval_count"] == 12 and np.sum(report["confusion_matrix"]) == 12

  result = run(["-m", "resnet_jax.predict", f"--workdir={workdir}", str(mixed_folder / "val"),
                f"--output={tmp_path / 'predictions.json'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  predictions = json.loads((tmp_path / "predictions.json").read_text())
  assert len(predictions) == 12 and all(p["predictions"] for p in predictions)

  # Another folder with two classes: the head is re-initialised for them.
  other = tmp_path / "other"
  write_image_folder(other, "train", ("a", "b"), per_class=8, size=20)
  write_image_folder(other, "val", ("a", "b"), per_class=2, size=20, seed=2)
  flags = folder_flags(tmp_path / "finetuned", other, init_checkpoint=workdir, num_epochs=1.0)
  result = run(["-m", "resnet_jax.main", *[f for f in flags if f != "--quiet"]])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "classifier head re-initialised for 2 classes" in result.stderr
  saved = json.loads((tmp_path / "finetuned" / "config.json").read_text())
  assert saved["input_pipeline"] == "memory"  # One size, and small: auto holds it in memory.


@pytest.mark.slow
def test_streamed_run_resumes_exactly(tmp_path, monkeypatch):
  root = tmp_path / "images"
  write_image_folder(root, "train", CLASSES, per_class=8, size=12)
  write_image_folder(root, "val", CLASSES, per_class=2, size=12, seed=1)
  config = tiny_config(dataset=f"folder:{root}", eval_split="val", batch_size=8,
                       input_pipeline="stream", num_epochs=3.0, checkpoint_every_epochs=1.0)
  # 3 steps per epoch; call 5 is mid-epoch 2, between scheduled checkpoints.
  assert_resume_is_exact(config, tmp_path, monkeypatch, stop_at_call=5, num_steps=9)


def test_tfds_dataset_streams_by_random_access(tmp_path):
  config = tiny_config(input_pipeline="stream", num_train_steps=2, data_dir=str(tmp_path / "d"))
  with tfds.testing.mock_data(num_examples=40):
    result = trainer.train_and_evaluate(config, str(tmp_path / "run"), quiet=True)
  assert result["eval"]["eval_count"] == 40
  assert 0 <= result["eval"]["eval_top5_accuracy"] <= 1
  assert result["eval"]["eval_top5_accuracy"] >= result["eval"]["eval_accuracy"]
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["input_pipeline"] == "stream" and saved["input_shape"] == [32, 32, 3]
  train_records = [r for r in metrics_file.read_metrics(str(tmp_path / "run")) if "train_loss" in r]
  assert train_records and all(0 <= r["data_wait_fraction"] <= 1 for r in train_records)


def test_a_streamed_run_reads_training_and_every_eval_on_one_pool():
  """The run's pool holds the eval rows from the start: an eval before the first training batch
  and one after it read on the same processes; a split the pool lacks is refused when its input
  is made, before any batch."""
  import jax
  batch_size = 4 * jax.device_count()
  config = resolved_config(size=8, batch_size=batch_size, eval_batch_size=batch_size,
                           data_workers=2)
  mesh = sharding.create_mesh()
  eval_source = PidSource(batch_size)  # No padding rows, whose label is 0.
  train_input = pipeline.StreamTrainInput(config, PidSource(2 * batch_size), mesh, 2,
                                          eval_source=eval_source)
  evals = pipeline.StreamEvalInput(config, eval_source, mesh, pool=train_input.workers)
  pids = lambda batches: {int(pid) for batch in batches for pid in jax.device_get(batch["label"])}
  try:
    readers = pids(evals())
    train_input.start(0)
    readers |= pids([train_input.next(), train_input.next()])
    readers |= pids(evals())
  finally:
    train_input.close()
  assert 1 <= len(readers) <= 2 and os.getpid() not in readers
  with pytest.raises(ValueError, match="not built with this EvalExample"):
    pipeline.StreamEvalInput(config, PidSource(batch_size), mesh, pool=train_input.workers)


@pytest.mark.parametrize("requested, shape, budget, expected", [
    ("auto", (32, 32, 3), 10**9, "memory"),
    ("auto", (32, 32, 3), 10**5, "stream"),  # 100 x 3 KB exceeds the budget.
    ("auto", None, 10**9, "stream"),  # Images of several sizes.
    ("stream", (32, 32, 3), 10**9, "stream"),
    ("memory", (32, 32, 3), 10**9, "memory"),
])
def test_auto_chooses_memory_only_when_it_fits(monkeypatch, requested, shape, budget, expected):
  monkeypatch.setattr(pipeline, "device_memory_budget", lambda: (budget, "test budget"))
  config = tiny_config(input_pipeline=requested)
  assert pipeline.choose_pipeline(config, shape, 100) == expected


def test_memory_refused_for_data_that_does_not_fit(monkeypatch):
  monkeypatch.setattr(pipeline, "device_memory_budget", lambda: (10**5, "test budget"))
  with pytest.raises(UserError, match=r"needs 0.00 GiB decoded in memory.*input_pipeline=stream"):
    pipeline.choose_pipeline(tiny_config(input_pipeline="memory"), (32, 32, 3), 1000)
  with pytest.raises(UserError, match="differ in size: set --config.image_size"):
    pipeline.choose_pipeline(tiny_config(input_pipeline="memory"), None, 10)


@pytest.mark.parametrize("case, overrides, phrases", [
    ("missing root", {"dataset": "folder:{root}/nowhere"}, ["does not exist", "folder:ROOT"]),
    ("missing split", {"eval_split": "valid"}, ["split folder", "valid", "eval_split"]),
    ("sizes differ, no image_size", {"image_size": 0}, ["differ in size", "image_size"]),
    ("memory, sizes differ", {"image_size": 0, "input_pipeline": "memory"},
     ["differ in size", "image_size"]),
])
def test_bad_folder_input_is_one_line_and_writes_nothing(mixed_folder, tmp_path, case, overrides,
                                                         phrases):
  overrides = {k: v.format(root=mixed_folder) if isinstance(v, str) else v
               for k, v in overrides.items()}
  workdir = tmp_path / "run"
  result = run(["-m", "resnet_jax.main", *folder_flags(workdir, mixed_folder, **overrides)])
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and all(p in last for p in phrases), last
  assert not workdir.exists()


PEAK_RSS = """
import resource, runpy, sys
try:
  runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)
finally:
  print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_the_dataset(tmp_path):
  """Peak RSS of a short streamed run over N and 10 N images of 256 px: the 10 N split, decoded,
  takes 169 MiB more than the N one; the streamed runs differ by far less."""
  peaks = {}
  for count in (100, 1000):
    root = tmp_path / f"images_{count}"
    rng = np.random.default_rng(count)
    for i in range(count):
      folder = root / "train" / f"c{i % 2}"
      folder.mkdir(parents=True, exist_ok=True)
      np.save(folder / "x.npy", 0)  # Not an image: ignored.
      from PIL import Image
      Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8)).save(folder / f"{i}.bmp")
    write_image_folder(root, "val", ("c0", "c1"), per_class=4, size=256)
    result = run(["-c", PEAK_RSS, *folder_flags(
        tmp_path / f"run_{count}", root, input_pipeline="stream", num_train_steps=3,
        mean="(0.5,0.5,0.5)", std="(0.25,0.25,0.25)")],
        # Both compile from scratch: a compilation cache hit would lower one peak alone.
        env={"JAX_ENABLE_COMPILATION_CACHE": "false"})
    assert result.returncode == 0, result.stderr[-3000:]
    peaks[count] = int(result.stderr.split("peak_rss_kib")[-1].split()[0]) / 1024
  decoded_difference_mb = 900 * 256 * 256 * 3 / 2**20
  print(f"peak RSS: {peaks[100]:.0f} MiB (100 images), {peaks[1000]:.0f} MiB (1000 images)")
  assert peaks[1000] - peaks[100] < decoded_difference_mb / 3, peaks
