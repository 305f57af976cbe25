"""`--mode=eval`: the config it evaluates with, and runs that saved less than today's trainer."""

import json

import numpy as np
import pytest
from PIL import Image

from resnet_jax.config import configuration
from resnet_jax.evaluation import evaluator
from tests.conftest import tiny_config
from tests.evaluation.test_framing import tiny_weights  # noqa: F401 (a fixture)


def _write_saved(workdir, **fields) -> dict:
  saved = configuration.to_json(tiny_config(width=8, **fields))
  (workdir / "config.json").write_text(json.dumps(saved))
  return saved


def test_a_preprocessing_field_set_on_the_command_line_wins_even_at_its_default(tmp_path):
  _write_saved(tmp_path, eval_crop_fraction=0.875, image_size=24)
  default = tiny_config(width=8).eval_crop_fraction
  assert default != 0.875
  requested = tiny_config(width=8, eval_crop_fraction=default)
  # Not named on the command line: a default value leaves the run's own.
  assert evaluator.eval_config(str(tmp_path), {}, requested).eval_crop_fraction == 0.875
  config = evaluator.eval_config(str(tmp_path), {}, requested, {"eval_crop_fraction": default})
  assert config.eval_crop_fraction == default
  assert config.image_size == 24  # Fields not named keep the run's values.


def test_a_config_files_default_eval_split_leaves_the_runs_holdout(tmp_path):
  _write_saved(tmp_path, dataset="folder:/data", eval_split="holdout:0.1")
  requested = tiny_config(width=8, dataset="folder:/data")
  assert requested.eval_split == "test"  # The default, not set on the command line.
  assert evaluator.eval_config(str(tmp_path), {}, requested).eval_split == "holdout:0.1"
  config = evaluator.eval_config(str(tmp_path), {}, requested, {"eval_split": "test"})
  assert config.eval_split == "test"  # Named on the command line: taken.


def test_resuming_with_another_holdout_is_refused(tmp_path):
  from resnet_jax.checkpoints import workdir as workdirs
  from resnet_jax.errors import UserError
  _write_saved(tmp_path, dataset="folder:/data", eval_split="holdout:0.1")
  workdirs.check(str(tmp_path), tiny_config(width=8, dataset="folder:/data",
                                            eval_split="holdout:0.1"))  # The same: resumes.
  for changed in ({"eval_split": "holdout:0.2"}, {"eval_split": "val"},
                  {"eval_split": "holdout:0.1", "train_split": "all"}):
    with pytest.raises(UserError, match="held out before"):
      workdirs.check(str(tmp_path), tiny_config(width=8, dataset="folder:/data", **changed))


@pytest.mark.parametrize("pipeline", ["stream", "memory"])
def test_a_run_saved_without_normalisation_evaluates_on_the_eval_splits_own(
    tiny_weights, tmp_path, pipeline, capsys):  # noqa: F811
  """Older trainers saved no mean and std: eval estimates them from the split, streamed or not.
  eval.json and the printout carry per-class and calibration figures beside accuracy."""
  rng = np.random.default_rng(0)
  for i in range(4):
    picture = tmp_path / "data" / "val" / "abc"[i % 3] / f"{i}.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(picture)
  workdir = tmp_path / "run"
  workdir.mkdir()
  for item in tiny_weights.iterdir():
    (workdir / item.name).symlink_to(item)
  saved = _write_saved(workdir, dataset=f"folder:{tmp_path / 'data'}", train_split="val",
                       eval_split="val", input_pipeline=pipeline, model="resnet_tiny",
                       num_classes=3, input_shape=(16, 16, 3), class_names=["a", "b", "c"])
  assert not saved.get("mean")
  result = evaluator.evaluate_workdir(str(workdir))
  assert result["eval_count"] == 4 and np.isfinite(result["eval_loss"])
  saved = json.loads((workdir / "eval.json").read_text())
  for key in ("per_class_precision", "per_class_recall", "per_class_f1"):
    assert len(saved[key]) == 3 and all(0 <= v <= 1 for v in saved[key])
  assert saved["per_class_support"] == [2, 1, 1]  # Pictures 0-3 in folders a, b, c, a.
  for key in ("eval_macro_f1", "eval_weighted_f1", "eval_balanced_accuracy", "eval_ece"):
    assert 0 <= saved[key] <= 1
  assert sum(saved["calibration"]["count"]) == 4 and len(saved["calibration"]["bin_edges"]) == 16
  header, columns, *rows = capsys.readouterr().out.strip().splitlines()[-5:]
  assert (f"macro F1 {100 * saved['eval_macro_f1']:.2f}%, balanced accuracy "
          f"{100 * saved['eval_balanced_accuracy']:.2f}%, ECE {100 * saved['eval_ece']:.2f}%"
          in header)
  assert columns.split() == ["class", "precision", "recall", "F1", "support"]
  assert [row.split()[0] for row in rows] == ["a", "b", "c"]
  assert [int(row.split()[-1]) for row in rows] == saved["per_class_support"]
  assert rows[0].split()[1:4] == [f"{100 * saved[f'per_class_{k}'][0]:.2f}%"
                                  for k in ("precision", "recall", "f1")]
