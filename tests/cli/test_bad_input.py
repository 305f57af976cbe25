"""Bad input to the real command: one clear `error:` line with the fix, exit 2, nothing written.

Every case runs `python -m resnet_jax.main` itself; all but one fail before any
data is read.
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.checkpoints import checkpointing
from resnet_jax.config import configuration
from resnet_jax.models import resnet
from resnet_jax.checkpoints import workdir as workdir_module
from tests.conftest import REPO, damage_checkpoint, tiny_config, tiny_flags, write_mock_cifar10


def command(args, env=None, timeout=120) -> subprocess.CompletedProcess:
  """The real command, as a user types it (no mock data)."""
  return subprocess.run([sys.executable, "-m", "resnet_jax.main", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def assert_clean_error(result, *phrases):
  """Exit 2, no traceback, and the last stderr line is the error, naming each phrase."""
  context = f"exit {result.returncode}\nstderr:\n{result.stderr[-3000:]}"
  assert result.returncode == 2, context
  assert "Traceback" not in result.stderr, context
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), context
  for phrase in phrases:
    assert phrase in last, f"{phrase!r} not in {last!r}"


def snapshot(path) -> dict:
  """Every file and folder under path with its size and modification time."""
  if not os.path.exists(path):
    return {}
  entries = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      stat = os.stat(full)
      entries[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns)
  return entries


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir as a resnet_tiny (width 4) run on CIFAR-10 leaves it, made without training:
  config.json and checkpoint 3, its variables the model's shapes filled with zeros."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  config = tiny_config()
  model = resnet.create_model(config.model, 10, stem=config.stem, width=config.width)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)))
  checkpointer.save(3, dict(variables), configuration.to_json(config), force=True)
  checkpointer.close()
  workdir_module.write_json(str(workdir / "config.json"), configuration.to_json(config))
  return workdir


# Config fields --------------------------------------------------------------

CONFIG_CASES = {
    "unknown_field": ({"bogus_field": 1},
                      ["unknown config field 'bogus_field'", "default_config.py"]),
    "misspelt_field": ({"batch_sise": 16}, ["did you mean --config.batch_size?"]),
    "wrong_type": ({"batch_size": "abc"}, ["--config.batch_size=abc", "a value of int"]),
    "unknown_model": ({"model": "resnet99"}, ["unknown model 'resnet99'", "resnet18"]),
    "unknown_stem": ({"stem": "tall"}, ["unknown stem 'tall'", "--config.stem"]),
    "unknown_dataset": ({"dataset": "no_such_dataset"},
                        ["unknown dataset 'no_such_dataset'", "cifar10"]),
    "dataset_without_image_label": ({"dataset": "imdb_reviews"},
                                    ["['label', 'text']", "not 'image' and 'label'"]),
    "batch_size_zero": ({"batch_size": 0}, ["batch_size must be positive", "--config.batch_size"]),
    "batch_size_negative": ({"batch_size": -16}, ["batch_size must be positive, got -16"]),
    "num_epochs_negative": ({"num_epochs": -1.0},
                            ["num_epochs must not be negative", "--config.num_epochs above 0"]),
    "num_train_steps_negative": ({"num_train_steps": -5},
                                 ["num_train_steps must not be negative, got -5"]),
    "split_tfds_rejects": ({"train_split": "train[:abc]"},
                           ["split 'train[:abc]' of cifar10 is not valid", "TFDS split string"]),
    "init_checkpoint_missing": ({"init_checkpoint": "/nonexistent/run"},
                                ["init_checkpoint /nonexistent/run does not exist"]),
    "dataset_name_with_kwargs": ({"dataset": "cifar10:3.0.2/x=1"},
                                 ["dataset name 'cifar10:3.0.2/x=1' is not valid",
                                  "NAME/CONFIG or NAME:1.2.3"]),
    "dataset_name_stray_colon": ({"dataset": "cifar10:"},
                                 ["dataset name 'cifar10:' is not valid", "TFDS cannot parse it"]),
    "dataset_name_too_many_slashes": ({"dataset": "a/b/c"},
                                      ["dataset name 'a/b/c' is not valid", "folder:ROOT"]),
    "split_percent_over_100": ({"train_split": "train[:200%]"},
                               ["split 'train[:200%]' of cifar10 is not valid",
                                "TFDS split string"]),
    "data_workers_too_many": ({"data_workers": 100000},
                              ["data_workers is 100000", "--config.data_workers to at most"]),
}


@pytest.fixture(scope="module")
def config_results(tmp_path_factory):
  """The command run for every case of CONFIG_CASES, a few at a time (each only starts and fails)."""
  base = tmp_path_factory.mktemp("config_cases")
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {case: pool.submit(command, tiny_flags(base / case / "run", base / "data", **overrides))
               for case, (overrides, _) in CONFIG_CASES.items()}
  return base, {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_value(config_results, case):
  base, results = config_results
  assert_clean_error(results[case], *CONFIG_CASES[case][1])
  assert not (base / case / "run").exists()


def test_batch_size_not_divisible_by_devices(tmp_path):
  workdir = tmp_path / "run"
  result = command(tiny_flags(workdir, tmp_path / "data", batch_size=15),
                   env={"JAX_NUM_CPU_DEVICES": "2"})
  assert_clean_error(result, "batch_size 15 is not divisible by the 2 devices", "such as 14")
  assert not workdir.exists()


@pytest.mark.parametrize("where", ["under_a_file", "read_only_folder"])
def test_workdir_cannot_be_written(tmp_path, where):
  if where == "under_a_file":
    (tmp_path / "a_file").write_text("")
    workdir = tmp_path / "a_file" / "run"
  elif os.geteuid() == 0:  # Root writes through permission bits; /proc refuses everyone.
    workdir = "/proc/resnet_jax_run"
  else:
    (tmp_path / "read_only").mkdir(mode=0o555)
    workdir = tmp_path / "read_only" / "run"
  result = command(tiny_flags(workdir, tmp_path / "data"))
  assert_clean_error(result, f"workdir {workdir} cannot be created or written",
                     "pass a writable --workdir")
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_eval_without_checkpoint(tmp_path, state):
  workdir = tmp_path / "run"
  if state == "empty":
    workdir.mkdir()
  result = command([f"--workdir={workdir}", "--mode=eval", "--quiet"])
  assert_clean_error(result, f"{workdir} has no checkpoints", "train first")
  assert snapshot(workdir) == {} and workdir.exists() == (state == "empty")


# Checkpoints of other runs ---------------------------------------------------


def test_init_checkpoint_damaged(trained, tmp_path):
  source = tmp_path / "source"
  shutil.copytree(trained, source)
  damage_checkpoint(source / "checkpoints" / "3")
  workdir = tmp_path / "run"
  result = command(tiny_flags(workdir, tmp_path / "data",
                              init_checkpoint=source / "checkpoints" / "3"))
  assert_clean_error(result, f"checkpoint {source / 'checkpoints' / '3'} is damaged",
                     "pass another checkpoint")
  assert "is damaged and was skipped" in result.stderr  # The warning says what failed.
  assert not workdir.exists()


def other_programs_checkpoints(folder) -> None:
  """What Orbax's CheckpointManager writes by default: one `default` item per step."""
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(str(folder / "checkpoints"))
  manager.save(1, args=ocp.args.StandardSave({"w": np.ones(3, np.float32)}))
  manager.wait_until_finished()
  manager.close()


@pytest.mark.slow
def test_checkpoints_of_another_program_or_without_state_are_one_line_errors(trained, tmp_path):
  other, partial = tmp_path / "other", tmp_path / "partial"
  other_programs_checkpoints(other)
  shutil.copytree(trained, partial)
  shutil.rmtree(partial / "checkpoints" / "3" / "state")  # A step folder with an item missing.
  image = tmp_path / "image.npy"
  np.save(image, np.zeros((8, 8, 3), np.uint8))
  commands = {
      "eval other": ["-m", "resnet_jax.main", f"--workdir={other}", "--mode=eval", "--quiet"],
      "predict other": ["-m", "resnet_jax.predict", f"--workdir={other}", image],
      "export other": ["-m", "resnet_jax.export", f"--checkpoint={other}",
                       f"--output={tmp_path / 'out.safetensors'}"],
      "eval partial": ["-m", "resnet_jax.main", f"--workdir={partial}", "--mode=eval", "--quiet"],
      "init partial": ["-m", "resnet_jax.main", *tiny_flags(tmp_path / "run", tmp_path / "data",
                                                             init_checkpoint=partial)],
  }
  with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
    results = dict(zip(commands, pool.map(
        lambda args: subprocess.run([sys.executable, *map(str, args)], cwd=REPO,
                                    capture_output=True, text=True, timeout=300),
        commands.values())))
  for name, result in results.items():
    if name.endswith("other"):
      assert_clean_error(result, f"{other}/checkpoints/1 is not a resnet_jax checkpoint (it holds "
                         "_CHECKPOINT_METADATA, commit_success.txt, default, no state/)",
                         "python -m resnet_jax.convert")
    else:
      assert_clean_error(result, f"checkpoint {partial}/checkpoints/3 has no state/ item",
                         "pass another checkpoint")
  assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "run").exists()
  assert not (other / "checkpoints" / ".readers").exists()


@pytest.mark.parametrize("where", ["listing", "reading"])
def test_checkpoints_this_user_may_not_read_are_one_line_errors(trained, tmp_path, monkeypatch,
                                                                where):
  from resnet_jax.checkpoints import restore
  from resnet_jax.errors import UserError
  import orbax.checkpoint as ocp
  directory = trained / "checkpoints"
  if where == "listing":  # Python's error for a folder that cannot be listed.
    def refuse(self, *args, **kwargs):
      raise PermissionError(13, "Permission denied", str(directory))
    monkeypatch.setattr(ocp.CheckpointManager, "__init__", refuse)
    path = directory
  else:  # TensorStore's, for a data file that cannot be opened.
    def refuse(self, step, target=None):
      raise ValueError("FAILED_PRECONDITION: Error opening file: [os_error_code=13] "
                       "Permission denied")
    monkeypatch.setattr(checkpointing.Checkpointer, "restore", refuse)
    path = directory / "3"
  # Root reads through permission bits, so the refusals are simulated where they are raised.
  with pytest.raises(UserError) as raised:
    restore.load_variables(str(trained))
  assert str(raised.value) == (f"cannot read the checkpoints in {path} (Permission denied): pass "
                               "a checkpoint folder you can read (check its permissions)")


def test_init_checkpoint_of_another_architecture(trained, tmp_path):
  # The mismatch shows once the data (number of channels) is known: give it mock data.
  write_mock_cifar10(str(tmp_path / "data"), 48)
  workdir = tmp_path / "run"
  result = command(tiny_flags(workdir, tmp_path / "data", init_checkpoint=trained, width=8))
  assert_clean_error(result, f"init_checkpoint {trained}", "the model expects",
                     "--config.width to the checkpoint's")
  assert not workdir.exists()


@pytest.mark.parametrize("requested", [
    {"width": 8},
    {"model": "resnet18", "stem": "imagenet", "width": 8, "dataset": "mnist"},
], ids=["width", "model_stem_width_dataset"])
def test_resume_with_other_architecture(trained, tmp_path, requested):
  before = snapshot(trained)
  result = command(tiny_flags(trained, tmp_path / "data", **requested))
  saved = {"model": "'resnet_tiny'", "stem": "'cifar'", "width": "4", "dataset": "'cifar10'"}
  differ = [f"{field}: saved {saved[field]}, requested {value!r}" for field, value in requested.items()]
  assert_clean_error(result, f"workdir {trained} holds a run with other settings ({'; '.join(differ)})",
                     "pass a new --workdir for a fresh run")
  assert snapshot(trained) == before


# Data that TFDS, Grain and Pillow refuse ---------------------------------------

# A prepared TFDS dataset in a subprocess: the test builder registers itself on import.
_TFDS_MAIN = ("import sys; import tests.data.test_sources; from resnet_jax.cli import runner; "
              "from resnet_jax import main; runner.run(main.main, argv=sys.argv)")


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
  import tensorflow_datasets as tfds
  from tests.data.test_sources import StreamingTestImages
  data_dir = tmp_path_factory.mktemp("tfds")
  StreamingTestImages(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


SPLIT_CASES = {
    "unknown_split": ("validation", ["split 'validation' of streaming_test_images is not valid",
                                     "Unknown split", "(train)"]),
    "reversed_slice": ("train[5:2]", ["split 'train[5:2]' of streaming_test_images is not valid"]),
    "empty_slice": ("train[:0]", ["split 'train[:0]' of streaming_test_images is empty"]),
}


@pytest.mark.parametrize("case", SPLIT_CASES)
@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_split_that_tfds_refuses(prepared_tfds, tmp_path, case, pipeline):
  split, phrases = SPLIT_CASES[case]
  flags = tiny_flags(tmp_path / "run", prepared_tfds, dataset="streaming_test_images",
                     train_split=split, eval_split="train", image_size=8,
                     input_pipeline=pipeline)
  result = subprocess.run([sys.executable, "-c", _TFDS_MAIN, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert_clean_error(result, *phrases)
  assert not (tmp_path / "run").exists()


def _bad_folder(root, case: str) -> None:
  """Good pictures, and in train/b the bad file that `case` names."""
  from PIL import Image
  for split in ("train", "val"):
    for name in ("a", "b"):
      os.makedirs(root / split / name)
      for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / split / name / f"{i}.png")
  bad = root / "train" / "b"
  if case == "zero_byte":
    (bad / "empty.jpg").write_bytes(b"")
  elif case == "truncated_png":
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        bad / "cut.png")
    data = (bad / "cut.png").read_bytes()
    (bad / "cut.png").write_bytes(data[:len(data) // 2])  # The header intact, the body cut.
  elif case == "not_an_image":
    (bad / "notes.png").write_text("these are notes, not a picture\n")
  else:  # A class folder of non-image files only.
    for path in bad.iterdir():
      path.unlink()
    (bad / "readme.txt").write_text("no pictures here")


FOLDER_CASES = {
    "zero_byte": ["cannot decode", "empty.jpg", "remove or replace it"],
    "truncated_png": ["cannot decode", "cut.png", "remove or replace it"],
    "not_an_image": ["cannot decode", "notes.png", "remove or replace it"],
    "no_images": ["class folder", "holds no images"],
}


@pytest.mark.parametrize("case", FOLDER_CASES)
@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_folder_with_a_file_pillow_refuses(tmp_path, case, pipeline):
  _bad_folder(tmp_path / "images", case)
  flags = tiny_flags(tmp_path / "run", tmp_path / "tfds", dataset=f"folder:{tmp_path / 'images'}",
                     eval_split="val", batch_size=4, image_size=16, input_pipeline=pipeline,
                     mean="(0.5,0.5,0.5)", std="(0.25,0.25,0.25)")
  assert_clean_error(command(flags), *FOLDER_CASES[case])
