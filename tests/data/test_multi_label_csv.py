"""Multi-label CSVs: a label separator or 0/1 class columns, multi-hot labels through both
pipelines, holdouts by label set, and every bad row or field as one error line."""

import numpy as np
import pytest
from absl import flags
from PIL import Image

from resnet_jax.config import configuration
from resnet_jax.data import csv_labels, memory, sources, streaming
from resnet_jax.errors import UserError
from tests.conftest import tiny_config

# (classes of each training row, written with ";"); class names sorted: car, cat, dog.
TRAIN = ["cat", "dog", "cat;dog", "car", "dog; car", "cat;car;dog", "cat", "car"]
TEST = ["dog", "cat;car"]


@pytest.fixture(scope="module", autouse=True)
def absl_flags_parsed():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def write_multi_label(root, train=TRAIN, test=TEST, columns: bool = False) -> str:
  """16x16 PNGs and labels.csv listing them: a label cell with ";" or, with columns, 0/1 columns
  cat, dog, car (in that order, so not sorted); returns the CSV's path."""
  rng = np.random.default_rng(0)
  (root / "pics").mkdir(parents=True, exist_ok=True)
  header = ["file", "split"] + (["cat", "dog", "car"] if columns else ["label"])
  lines = [",".join(header)]
  for split, labels in (("train", train), ("test", test)):
    for i, cell in enumerate(labels):
      name = f"pics/{split}_{i}.png"
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name)
      names = {n.strip() for n in cell.split(";")}
      values = [str(int(c in names)) for c in ("cat", "dog", "car")] if columns else [cell]
      lines.append(",".join([name, split] + values))
  (root / "labels.csv").write_text("\n".join(lines) + "\n")
  return str(root / "labels.csv")


def expected_multi_hot(cells, class_names) -> np.ndarray:
  return np.array([[float(c in {n.strip() for n in cell.split(";")}) for c in class_names]
                   for cell in cells], np.float32)


def options(**fields) -> sources.SourceOptions:
  """The options of a config setting these fields (csv_label_separator=";", ...)."""
  return sources.SourceOptions.of(fields)


def test_a_separator_makes_multi_hot_labels_over_the_sorted_training_classes(tmp_path):
  path = write_multi_label(tmp_path)
  train = sources.open_split(f"csv:{path}", "train", options=options(csv_label_separator=";"))
  test = sources.open_split(f"csv:{path}", "test", options=options(csv_label_separator=";"))
  assert train.class_names == test.class_names == ["car", "cat", "dog"]
  assert train.multi_label and train.labels.dtype == np.float32
  np.testing.assert_array_equal(train.labels, expected_multi_hot(TRAIN, train.class_names))
  np.testing.assert_array_equal(test.labels, expected_multi_hot(TEST, test.class_names))
  assert csv_labels.parse_label_set(" cat ;; dog;cat; ", ";") == ("cat", "dog")


@pytest.mark.parametrize("spec", ["cat,dog,car", "*"])
def test_class_columns_give_the_classes_in_their_order(tmp_path, spec):
  path = write_multi_label(tmp_path, columns=True)
  train = sources.open_split(f"csv:{path}", "train", options=options(csv_label_columns=spec))
  assert train.class_names == ["cat", "dog", "car"]
  np.testing.assert_array_equal(train.labels, expected_multi_hot(TRAIN, train.class_names))


def test_a_row_of_zeros_is_a_picture_of_no_class(tmp_path):
  path = write_multi_label(tmp_path, train=TRAIN + ["none"], columns=True)
  train = sources.open_split(f"csv:{path}", "train",
                             options=options(csv_label_columns="cat,dog,car"))
  np.testing.assert_array_equal(train.labels[-1], [0, 0, 0])


def test_single_label_csvs_keep_int_labels(tmp_path):
  path = write_multi_label(tmp_path, train=["cat", "dog", "car"], test=["dog"])
  source = sources.open_split(f"csv:{path}", "train")
  assert not source.multi_label and source.labels.dtype == np.int32


def test_memory_and_stream_carry_multi_hot_labels_and_pad_them_with_zeros(tmp_path):
  path = write_multi_label(tmp_path)
  config = tiny_config(dataset=f"csv:{path}", csv_label_separator=";", image_size=16)
  dataset = memory.load_dataset(config)
  np.testing.assert_array_equal(dataset.eval.labels, expected_multi_hot(TEST, ["car", "cat", "dog"]))
  _, labels, mask = memory.pad_for_eval(dataset.eval, 4)
  assert labels.shape == (4, 3) and labels.dtype == np.float32
  np.testing.assert_array_equal(labels[2:], 0)
  np.testing.assert_array_equal(mask, [1, 1, 0, 0])
  test = sources.open_split(f"csv:{path}", "test", options=sources.SourceOptions.of(config))
  (batch,) = list(streaming.eval_batches(test, global_batch_size=4, image_size=16,
                                         crop_fraction=1.0))
  np.testing.assert_array_equal(batch["label"], labels)
  train = sources.open_split(f"csv:{path}", "train", options=sources.SourceOptions.of(config))
  with streaming.TrainStream(train, global_batch_size=4, image_size=16, train_crop="pad",
                             crop_scale=(0.08, 1.0), seed=0, start_step=0, num_steps=1) as s:
    (batch,) = list(s)
  order = np.random.default_rng([0, 0]).permutation(len(TRAIN))[:4]
  np.testing.assert_array_equal(batch["label"], train.labels[order])


def test_a_holdout_is_stratified_by_label_set(tmp_path):
  train = ["cat"] * 4 + ["cat;dog"] * 4 + ["dog"] * 2
  path = write_multi_label(tmp_path, train=train)
  opts = options(csv_label_separator=";", eval_split="holdout:0.25")
  held = sources.open_split(f"csv:{path}", "holdout:0.25", options=opts)
  rest = sources.open_split(f"csv:{path}", "train", options=opts)
  assert len(held) + len(rest) == len(train)
  sets = lambda s: sorted(tuple(row) for row in s.labels.astype(int).tolist())
  # Classes cat, dog: one of each four-picture label set, one of the two dogs (at least one).
  assert sets(held) == [(0, 1), (1, 0), (1, 1)]
  assert set(held.paths).isdisjoint(rest.paths)
  again = sources.open_split(f"csv:{path}", "holdout:0.25", options=opts)
  assert again.paths == held.paths


# Bad input: one line naming the row, the column or the field -------------------------------

BAD_ROWS = {
    "unknown_class_in_eval": (dict(csv_label_separator=";"), None, ["dog;bird"], "test",
                              ["row 10", "label 'bird' of split 'test'", "no class for it"]),
    "row_naming_no_class": (dict(csv_label_separator=";"), TRAIN[:-1] + [" ; "], TEST, "train",
                            ["row 9", "column 'label' names no class"]),
    "empty_cell": (dict(csv_label_separator=";"), TRAIN[:-1] + [""], TEST, "train",
                   ["row 9", "column 'label' is empty"]),
    "no_such_class_column": (dict(csv_label_columns="cat,bird"), None, None, "train",
                             ["no column 'bird'", "--config.csv_label_columns"]),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_multi_label_rows_are_one_line_naming_them(tmp_path, case):
  fields, train, test, split, phrases = BAD_ROWS[case]
  path = write_multi_label(tmp_path, train=train or TRAIN, test=test or TEST,
                           columns="csv_label_columns" in fields)
  with pytest.raises(UserError) as error:
    sources.open_split(f"csv:{path}", split, options=options(**fields))
  message = str(error.value)
  assert "\n" not in message
  for phrase in phrases:
    assert phrase in message, message


def test_a_class_column_value_other_than_0_or_1_names_row_and_column(tmp_path):
  path = write_multi_label(tmp_path, columns=True)
  lines = open(path).read().splitlines()
  lines[3] = lines[3][:-1] + "yes"  # Row 4's last column, car.
  open(path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(UserError, match=r"row 4: column 'car' holds 'yes', not 0 or 1"):
    sources.open_split(f"csv:{path}", "train", options=options(csv_label_columns="*"))


FIELD_CASES = {
    "both_forms": (dict(csv_label_separator=";", csv_label_columns="*"), "are both set"),
    "not_a_csv": (dict(dataset="cifar10", csv_label_separator=";"), "cifar10 is not a CSV"),
    "balanced_multi_label": (dict(csv_label_separator=";", class_balance="loss"),
                             "class_balance='loss' is for single-label data"),
    "distilled_multi_label": (dict(csv_label_columns="*", teacher="/tmp"),
                              "set --config.teacher=''"),
    "unknown_balance": (dict(class_balance="oversample"), "unknown class_balance 'oversample'"),
    "threshold_outside": (dict(multi_label_threshold=1.0), "multi_label_threshold must lie in"),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_bad_label_fields_are_refused_before_anything_loads(case):
  fields, phrase = FIELD_CASES[case]
  config = tiny_config(**{"dataset": "csv:/nowhere.csv", **fields})
  with pytest.raises(UserError, match=phrase):
    configuration.validate(config)
