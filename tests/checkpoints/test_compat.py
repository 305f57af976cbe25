"""A run written before the package move (commit 9d9feb8) reads and resumes with today's code.

tests/fixtures/pre_layout_run is that commit's tiny run: resnet_tiny of width 4,
2 epochs of 64 mock CIFAR-10 examples (8 steps), written with `tiny_config(num_epochs=2.0)`;
tests/fixtures/pre_layout_data holds the decoded mock examples it trained on.
"""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from resnet_jax.checkpoints.restore import load_variables
from resnet_jax.train import trainer
from tests.conftest import REPO, tiny_config

FIXTURE = f"{REPO}/tests/fixtures/pre_layout_run"
DATA = f"{REPO}/tests/fixtures/pre_layout_data"


@pytest.mark.slow
def test_a_run_written_before_the_move_reads_the_same_as_one_written_now(tmp_path):
  data = shutil.copytree(DATA, tmp_path / "data")
  trainer.train_and_evaluate(tiny_config(num_epochs=2.0, data_dir=str(data)), str(tmp_path / "now"),
                             quiet=True)
  shutil.copytree(FIXTURE, tmp_path / "before")  # Read from a copy: readers pin inside the folder.
  old, old_config, _ = load_variables(str(tmp_path / "before"))
  new, _, _ = load_variables(str(tmp_path / "now"))
  assert old_config["model"] == "resnet_tiny" and old_config["num_epochs"] == 2.0
  chex.assert_trees_all_close(old["params"], new["params"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(old["batch_stats"], new["batch_stats"], rtol=1e-5, atol=1e-6)


def test_a_run_written_before_the_move_resumes_from_its_step(tmp_path):
  data, workdir = shutil.copytree(DATA, tmp_path / "data"), tmp_path / "run"
  shutil.copytree(FIXTURE, workdir)
  trainer.train_and_evaluate(tiny_config(num_epochs=3.0, data_dir=str(data)), str(workdir),
                             quiet=True)
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  old_steps = [json.loads(line)["step"]
               for line in open(f"{FIXTURE}/metrics.jsonl").read().splitlines()]
  resumed = steps[len(old_steps):]
  assert resumed and min(resumed) > 8 and max(resumed) == 12, steps
  assert "12" in os.listdir(workdir / "checkpoints")
