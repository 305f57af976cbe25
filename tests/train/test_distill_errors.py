"""Bad distillation input to the real command: one `error:` line naming the problem and the fix,
exit 2, nothing written (tests/cli/test_bad_input.py's style and helpers)."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.checkpoints import checkpointing, workdir as workdir_module
from resnet_jax.config import configuration
from resnet_jax.interop import convert
from resnet_jax.models import resnet
from tests.cli.test_bad_input import assert_clean_error, command, snapshot
from tests.conftest import damage_checkpoint, tiny_config, tiny_flags, write_mock_cifar10


def _zero_variables(num_classes: int, stem: str, channels: int) -> dict:
  model = resnet.create_model("resnet_tiny", num_classes, stem=stem, width=4)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, channels)),
                                             train=False))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def write_teacher(folder, class_names: list[str], channels: int = 3) -> str:
  """A workdir as a resnet_tiny (width 4) run leaves it, weights all zeros, made untrained."""
  config = tiny_config()
  with config.unlocked():
    config.num_classes, config.class_names = len(class_names), class_names
    config.input_shape = (32, 32, channels)
    config.mean, config.std = (0.5,) * channels, (0.25,) * channels
  checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(folder)))
  checkpointer.save(3, _zero_variables(len(class_names), "cifar", channels),
                    configuration.to_json(config), force=True)
  checkpointer.close()
  workdir_module.write_json(str(folder / "config.json"), configuration.to_json(config))
  return str(folder)


MOCK_CLASSES = [str(i) for i in range(10)]  # Mock CIFAR-10's class names.


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
  """Each case's flags and the phrases its error line must hold."""
  base = tmp_path_factory.mktemp("distill_cases")
  data = base / "data"
  write_mock_cifar10(str(data), 48)  # The class and channel checks need the data's.
  imagenet = base / "converted_imagenet"
  # What `python -m resnet_jax.convert` (or a torchvision: name) makes of ImageNet weights.
  convert.save_converted(_zero_variables(1000, "imagenet", 3), str(imagenet), "resnet_tiny",
                         "imagenet", 4, 1000,
                         class_names=[f"imagenet class {i}" for i in range(1000)])
  damaged = write_teacher(base / "damaged", MOCK_CLASSES)
  damage_checkpoint(base / "damaged" / "checkpoints" / "3")
  (base / "empty").mkdir()
  own = write_teacher(base / "own", MOCK_CLASSES)
  return base, {
      "missing": (base / "run_missing", {"teacher": "/nonexistent/teacher"},
                  ["teacher /nonexistent/teacher does not exist", "pass the workdir"]),
      "alpha": (base / "run_alpha", {"teacher": own, "distill_alpha": 1.5},
                ["distill_alpha must lie in [0, 1], got 1.5", "--config.distill_alpha=0.9"]),
      "temperature": (base / "run_temperature", {"teacher": own, "distill_temperature": 0.0},
                      ["distill_temperature must be positive, got 0.0"]),
      "empty": (base / "run_empty", {"teacher": base / "empty"},
                [f"teacher {base / 'empty'}: {base / 'empty'} holds no resnet_jax checkpoint"]),
      "damaged": (base / "run_damaged", {"teacher": damaged},
                  [f"teacher {damaged}: checkpoint {damaged}/checkpoints/3 is damaged",
                   "pass another checkpoint"]),
      "imagenet": (base / "run_imagenet", {"teacher": imagenet},
                   [f"teacher {imagenet} predicts 1000 classes (converted weights), the data "
                    "has 10",
                    "distil from a teacher trained on this dataset"]),
      "other_classes": (base / "run_other", {"teacher": write_teacher(
          base / "other", [f"class_{i}" for i in range(10)])},
                        ["was trained on other classes (its class 0 is 'class_0', the data's is "
                         "'0')", "in the same order"]),
      "channels": (base / "run_gray", {"teacher": write_teacher(base / "gray", MOCK_CLASSES, 1)},
                   ["takes 1-channel pictures, the data has 3 channel(s)"]),
      "own_workdir": (base / "own", {"teacher": own},
                      [f"teacher {own}: it is this run's own workdir"]),
  }


@pytest.fixture(scope="module")
def results(cases):
  base, table = cases
  before = snapshot(base / "own")
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {name: pool.submit(command, tiny_flags(workdir, base / "data", **overrides),
                                 timeout=300)
               for name, (workdir, overrides, _) in table.items()}
  return {name: future.result() for name, future in futures.items()}, before


CASES = ["missing", "alpha", "temperature", "empty", "damaged", "imagenet", "other_classes",
         "channels", "own_workdir"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_teacher_is_one_error_line_and_nothing_written(cases, results, case):
  base, table = cases
  outcomes, own_before = results
  workdir, _, phrases = table[case]
  assert_clean_error(outcomes[case], *phrases)
  if case == "own_workdir":
    assert snapshot(workdir) == own_before
  else:
    assert not workdir.exists()
  # A teacher is only read: no pin left behind in its checkpoints.
  assert not list(base.glob("*/checkpoints/.readers/*"))

