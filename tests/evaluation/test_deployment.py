"""The deployable function's calibration pictures and metrics, against eval's own framing and
`--mode=eval`'s own numbers."""

import json

import numpy as np
import pytest
from PIL import Image

from resnet_jax.checkpoints.restore import load_model
from resnet_jax.cli import export as cli
from resnet_jax.config import configuration
from resnet_jax.data import memory
from resnet_jax.errors import UserError
from resnet_jax.evaluation import deployment, evaluator
from tests.conftest import tiny_config, write_image_folder
from tests.interop.test_export_formats import write_run


def folder_run(root, input_pipeline: str = "memory") -> str:
  """A run on an image folder of pictures of many sizes (train 3x6, test 3x4), framed 16x16
  at crop 0.875, with random resnet_tiny weights and the config.json a run writes."""
  write_image_folder(root / "data", "train", per_class=6, seed=0)
  write_image_folder(root / "data", "test", per_class=4, seed=1)
  workdir = write_run(root / "run", "resnet_tiny", "cifar", 8, 16, 3, 0,
                      dataset=f"folder:{root / 'data'}", train_split="train", eval_split="test",
                      eval_crop_fraction=0.875, input_pipeline=input_pipeline)
  config = configuration.to_json(configuration.from_json(load_model(workdir).config))
  (root / "run" / "config.json").write_text(json.dumps(config))
  return workdir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return folder_run(tmp_path_factory.mktemp("deployment"))


def test_calibration_pictures_are_training_pictures_framed_as_eval_frames_them(run):
  config = cli.run_config(run, load_model(run).config)
  everything = deployment.calibration_pictures(config, 1000)
  # The train split read by eval's own path: the same pictures, framed the same way.
  as_eval = config.copy_and_resolve_references()
  as_eval.eval_split = config.train_split
  expected, _ = memory.load_eval_split(as_eval, (16, 16))
  np.testing.assert_array_equal(everything, expected.images)
  some = deployment.calibration_pictures(config, 5)
  assert some.shape == (5, 16, 16, 3)
  rows = {picture.tobytes() for picture in expected.images}
  assert all(picture.tobytes() in rows for picture in some)
  assert len({picture.tobytes() for picture in some}) == 5
  with pytest.raises(UserError, match="--calibration_images=0"):
    deployment.calibration_pictures(config, 0)


@pytest.mark.parametrize("input_pipeline", [pytest.param("memory", marks=pytest.mark.slow),
                                            "stream"])
def test_a_deployable_function_evaluates_as_mode_eval_does(tmp_path, input_pipeline):
  workdir = folder_run(tmp_path, input_pipeline)
  loaded = load_model(workdir)
  config = cli.run_config(workdir, loaded.config)
  logits = deployment.logits_function(loaded.model, loaded.variables, loaded.config)
  got = evaluator.summarize(deployment.evaluate_logits(config, lambda x: np.asarray(logits(x)),
                                                       batch_size=5))
  expected = evaluator.evaluate_workdir(workdir)
  assert got["eval_count"] == expected["eval_count"] == 12
  assert got["eval_accuracy"] == expected["eval_accuracy"]
  assert got["confusion_matrix"] == expected["confusion_matrix"]
  assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)


def test_logits_of_the_wrong_shape_are_refused(run):
  config = cli.run_config(run, load_model(run).config)
  with pytest.raises(UserError, match="gave logits of shape"):
    deployment.evaluate_logits(config, lambda x: np.zeros((len(x), 2), np.float32))


@pytest.mark.parametrize("input_pipeline", ["memory", "stream"])
def test_a_multi_label_runs_file_evaluates_to_sklearns_average_precision(tmp_path,
                                                                         input_pipeline):
  from sklearn.metrics import average_precision_score
  from tests.data.test_multi_label_csv import TEST, expected_multi_hot, write_multi_label
  path = write_multi_label(tmp_path, test=TEST + ["car", "cat", "dog;cat", "car;dog", "dog"])
  config = configuration.resolve(
      tiny_config(dataset=f"csv:{path}", csv_label_separator=";", train_split="train",
                  eval_split="test", input_pipeline=input_pipeline),
      {"num_classes": 3, "class_names": ["car", "cat", "dog"], "mean": (0.5,) * 3,
       "std": (0.25,) * 3, "input_shape": (16, 16, 3), "input_pipeline": input_pipeline,
       "multi_label": True})
  weights = np.random.default_rng(0).normal(size=(16 * 16 * 3, 3)).astype(np.float32)
  logits_of = lambda pictures: (pictures.reshape(len(pictures), -1) / 255.0 - 0.5) @ weights
  totals = deployment.evaluate_logits(config, logits_of, batch_size=3)  # Pads the last batch.
  got = evaluator.summarize(totals, threshold=0.5)
  labels = expected_multi_hot(TEST + ["car", "cat", "dog;cat", "car;dog", "dog"],
                              ["car", "cat", "dog"])
  pictures = np.stack([np.asarray(Image.open(tmp_path / "pics" / f"test_{i}.png"))
                       for i in range(len(labels))])
  assert got["eval_count"] == len(labels) == 7
  assert got["eval_map"] == pytest.approx(
      average_precision_score(labels, logits_of(pictures), average="macro"), rel=1e-6)
