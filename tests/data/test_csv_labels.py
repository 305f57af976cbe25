"""Labels from a CSV: paths, splits, classes, the folder source's decoding, and every bad input."""

import os
import pickle

import numpy as np
import pytest

from resnet_jax.config import configuration
from resnet_jax.data import csv_labels, memory, sources
from resnet_jax.errors import UserError
from tests.conftest import tiny_config, write_image_folder


def write_csv(path, header, rows, bom=False) -> str:
  """A CSV at path with a header and rows (lists of cells); returns the path."""
  lines = [",".join(header)] + [",".join(map(str, row)) for row in rows]
  with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
    f.write("\r\n".join(lines) + "\r\n")
  return str(path)


@pytest.fixture
def folder_and_csv(tmp_path):
  """An image folder of mixed formats and modes, and a CSV listing the same pictures: train
  rows by relative path, test rows (the folder's val split) by absolute path, shuffled."""
  root = tmp_path / "data"
  write_image_folder(root, "train", ("zebra", "10", "2", "cat"), per_class=4)
  write_image_folder(root, "val", ("zebra", "10", "2", "cat"), per_class=2, seed=1)
  rows = []
  for split, column_value in (("train", "train"), ("val", "test")):
    folder = sources.FolderSource(str(root), split)
    for path, label in zip(folder.paths, folder.labels):
      cell = os.path.relpath(path, root) if split == "train" else path
      rows.append([cell, folder.class_names[label], column_value])
  order = np.random.default_rng(0).permutation(len(rows))
  csv_path = write_csv(root / "labels.csv", ["file", "label", "split"], [rows[i] for i in order])
  return root, csv_path


def listed(root, split="train") -> list[tuple[str, str]]:
  """(path, class name) of each picture of an image folder's split, as FolderSource lists them."""
  folder = sources.FolderSource(str(root), split)
  return [(path, folder.class_names[label]) for path, label in zip(folder.paths, folder.labels)]


def pairs(source) -> set[tuple[str, str]]:
  return {(path, source.class_names[label]) for path, label in zip(source.paths, source.labels)}


def test_csv_lists_what_the_folder_holds_and_decodes_it_alike(folder_and_csv):
  root, csv_path = folder_and_csv
  for split, csv_split in (("train", "train"), ("val", "test")):
    folder = sources.FolderSource(str(root), split)
    from_csv = sources.open_split(f"csv:{csv_path}", csv_split)
    assert isinstance(from_csv, sources.CsvSource)
    assert pairs(from_csv) == pairs(folder) and len(from_csv) == len(folder)
    assert from_csv.labels.dtype == np.int32
    by_path = {path: i for i, path in enumerate(folder.paths)}
    for i in range(len(from_csv)):  # Every mode and format, decoded as the folder decodes it.
      expected = folder[by_path[from_csv.paths[i]]]
      np.testing.assert_array_equal(from_csv[i]["image"], expected["image"])
      assert from_csv[i]["label"] == expected["label"]
  # String sort, as the folder sorts its class folders: "10" before "2".
  assert from_csv.class_names == ["10", "2", "cat", "zebra"] == folder.class_names


def test_relative_paths_start_at_the_csvs_folder_and_absolute_ones_stay(tmp_path, monkeypatch):
  write_image_folder(tmp_path / "pics", "train", ("a", "b"), per_class=2, size=8)
  (a, _), (b, _) = listed(tmp_path / "pics")[0], listed(tmp_path / "pics")[-1]
  (tmp_path / "lists").mkdir()
  csv_path = write_csv(tmp_path / "lists" / "labels.csv", ["file", "label"],
                       [[os.path.relpath(a, tmp_path / "lists"), "a"], [b, "b"]])
  assert not os.path.isabs(open(csv_path).read().splitlines()[1])
  monkeypatch.chdir(tmp_path / "pics")  # Relative to the CSV, not to the working directory.
  source = sources.open_split("csv:../lists/labels.csv", "train")
  assert source.paths == [a, b]
  np.testing.assert_array_equal(source.labels, [0, 1])


def test_column_names_come_from_the_config(tmp_path):
  write_image_folder(tmp_path, "train", ("x", "y"), per_class=2, size=8)
  rows = [[f, label, "fit" if i % 2 == 0 else "holdout"]
          for i, (f, label) in enumerate(listed(tmp_path))]
  files = sorted(row[0] for row in rows)
  csv_path = write_csv(tmp_path / "kaggle.csv", ["image_id", "diagnosis", "fold"], rows,
                       bom=True)
  config = tiny_config(dataset=f"csv:{csv_path}", csv_file_column="image_id",
                       csv_label_column="diagnosis", csv_split_column="fold",
                       train_split="fit", eval_split="holdout")
  configuration.validate(config)
  options = sources.SourceOptions.of(config)
  fit = sources.open_split(config.dataset, "fit", options=options)
  held = sources.open_split(config.dataset, "holdout", options=options)
  assert sorted(fit.paths + held.paths) == files
  assert fit.class_names == held.class_names == ["x", "y"]


def test_without_a_split_column_every_row_trains(tmp_path):
  write_image_folder(tmp_path, "train", ("a", "b"), per_class=3, size=8)
  csv_path = write_csv(tmp_path / "labels.csv", ["label", "file"],
                       [[label, f] for f, label in listed(tmp_path)])
  source = sources.open_split(f"csv:{csv_path}", "train")
  assert pairs(source) == set(listed(tmp_path))
  with pytest.raises(UserError, match=r"no split column \(its columns: label, file\).*"
                                      r"eval_split=holdout:0.1"):
    sources.open_split(f"csv:{csv_path}", "test")


def test_source_pickles_small_and_reads_in_batches(folder_and_csv):
  _, csv_path = folder_and_csv
  source = sources.open_split(f"csv:{csv_path}", "train")
  copy = pickle.loads(pickle.dumps(source))
  assert len(pickle.dumps(source)) < 200 * len(source)  # Paths, not pixels.
  rows = copy.read_many([3, 0])
  np.testing.assert_array_equal(rows[0]["image"], source[3]["image"])
  assert [r["label"] for r in rows] == [source.labels[3], source.labels[0]]


def test_memory_pipeline_reads_a_csv_uncached(folder_and_csv, tmp_path):
  _, csv_path = folder_and_csv
  config = tiny_config(dataset=f"csv:{csv_path}", image_size=16, data_dir=str(tmp_path / "d"))
  dataset = memory.load_dataset(config)
  assert dataset.train.images.shape == (16, 16, 16, 3) and dataset.eval.images.shape[0] == 8
  assert dataset.class_names == ["10", "2", "cat", "zebra"]
  assert not (tmp_path / "d").exists()  # Files may change: decoded afresh, never cached.


def test_label_parsing_is_one_function():
  assert csv_labels.parse_label("  dog house ") == "dog house"
  np.testing.assert_array_equal(csv_labels.encode_labels(["b", "a", "c"], ["a", "b"]),
                                [1, 0, -1])


# Bad input: one line naming the row or the column --------------------------------------


def _bad_csv(tmp_path, case: str) -> tuple[str, str]:
  """(csv path, split to open) for one bad CSV."""
  write_image_folder(tmp_path, "train", ("a", "b"), per_class=2, size=8)
  rows = [[f, label, "train"] for f, label in listed(tmp_path)]
  header, split = ["file", "label", "split"], "train"
  if case == "missing_file":
    rows.insert(2, ["pics/gone.png", "a", "train"])  # Row 4 of the file (header = row 1).
  elif case == "no_such_column":
    header = ["path", "label", "split"]
  elif case == "label_only_in_eval":
    rows[3][1:] = ["c", "test"]  # Row 5: class c has no training row.
    split = "test"
  elif case == "empty_label":
    rows[1][1] = " "
  elif case == "duplicate_file":
    rows.append(list(rows[0]))
  elif case == "header_only":
    rows = []
  path = write_csv(tmp_path / "labels.csv", header, rows)
  if case == "empty_file":
    open(path, "w").close()
  return path, split


BAD_CSV_CASES = {
    "missing_file": ["labels.csv row 4", "pics/gone.png does not exist", "1 of 5 rows"],
    "no_such_column": ["no column 'file' (its columns: path, label, split)",
                       "--config.csv_file_column"],
    "label_only_in_eval": ["labels.csv row 5", "label 'c' of split 'test'",
                           "no row of the training split 'train'"],
    "empty_label": ["labels.csv row 3", "column 'label' is empty"],
    "duplicate_file": ["rows 2 and 6 both list", "list each picture once"],
    "header_only": ["has a header but no rows"],
    "empty_file": ["labels.csv is empty", "file,label,split"],
}


@pytest.mark.parametrize("case", BAD_CSV_CASES)
def test_bad_csv_is_one_line_naming_the_row_or_column(tmp_path, case):
  path, split = _bad_csv(tmp_path, case)
  with pytest.raises(UserError) as error:
    sources.open_split(f"csv:{path}", split)
  message = str(error.value)
  assert "\n" not in message
  for phrase in BAD_CSV_CASES[case]:
    assert phrase in message, message


def test_missing_csv_and_bad_column_fields(tmp_path):
  with pytest.raises(UserError, match="CSV file .*nowhere.csv does not exist"):
    sources.open_split(f"csv:{tmp_path}/nowhere.csv", "train")
  with pytest.raises(UserError, match="csv_label_column is empty"):
    configuration.validate(tiny_config(csv_label_column=" "))
  with pytest.raises(UserError, match="must name different columns"):
    configuration.validate(tiny_config(csv_split_column="label"))
