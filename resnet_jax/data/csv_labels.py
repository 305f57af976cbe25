"""A CSV listing pictures and their labels: read, checked, and cut into the rows of one split.

One row per picture: a file column (a path relative to the CSV's folder, or
absolute), a label column and, optionally, a split column whose values name
the splits (`train_split`, `eval_split`); without one every row is training
data. Class names are the training rows' labels, sorted as strings. Errors
name a row as a spreadsheet numbers it: the header is row 1. Only the
standard library's `csv`: worker processes import this.

Multi-label (several classes per picture) comes in one of two forms. With a
label separator (config.csv_label_separator, e.g. ";") the label cell names
one or more classes, "cat;dog"; empty names between separators are ignored,
and a cell naming none is refused, as in single-label (an empty cell is more
likely a forgotten label than a picture of no class). With label columns
(config.csv_label_columns: "cat,dog,car", or "*" for every column but the
file and split ones) each class has a column of 0 or 1, the classes in the
order the columns are named; a row of zeros is a picture of none of them,
legitimate because written out. Labels are then multi-hot float32 [N, C].
"""

import csv
import dataclasses
import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from resnet_jax.errors import UserError


ALL_COLUMNS = "*"  # csv_label_columns: every column but the file and split ones is a class.


@dataclasses.dataclass(frozen=True)
class Columns:
  """The names of the CSV's columns (config.csv_file_column, csv_label_column, csv_split_column)
  and its multi-label form (config.csv_label_separator, csv_label_columns; "" for neither)."""
  file: str = "file"
  label: str = "label"
  split: str = "split"
  label_separator: str = ""
  label_columns: str = ""
  # The config field that names each (default_config.py).
  CONFIG_FIELDS: ClassVar[dict[str, str]] = {
      "file": "csv_file_column", "label": "csv_label_column", "split": "csv_split_column",
      "label_separator": "csv_label_separator", "label_columns": "csv_label_columns"}

  @property
  def multi_label(self) -> bool:
    """Whether a row may name several classes (labels then multi-hot)."""
    return bool(self.label_separator or self.label_columns)


@dataclasses.dataclass
class Table:
  """The rows of a CSV, values stripped; `files` resolved to normalised absolute paths."""
  path: str
  columns: list[str]  # As the header names them.
  rows: list[int]  # Row numbers, the header being row 1.
  files: list[str]
  written: list[str]  # The file cells as written, for messages.
  labels: list[tuple[str, ...]]  # The classes each row names (one, unless multi-label).
  splits: list[str] | None  # None when the CSV has no split column.
  class_columns: list[str] | None = None  # With label columns: the classes, in that order.


def parse_label(cell: str) -> str:
  """The class a label cell names.

  The one place a cell becomes a class: a multi-label form would return
  several names here, and `encode_labels` a multi-hot array from them.
  """
  return cell.strip()


def parse_label_set(cell: str, separator: str) -> tuple[str, ...]:
  """The classes a multi-label cell names ("cat; dog" with ";"), in order, each once."""
  names = (name.strip() for name in cell.split(separator))
  return tuple(dict.fromkeys(name for name in names if name))


def encode_labels(names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
  """int32 [N] indices of each name in class_names (-1 where it is none of them)."""
  index = {name: i for i, name in enumerate(class_names)}
  return np.array([index.get(name, -1) for name in names], np.int32)


def encode_multi_hot(name_sets: Sequence[Sequence[str]], class_names: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, C] multi-hot rows, bool [N]: the rows naming a class not in class_names)."""
  index = {name: i for i, name in enumerate(class_names)}
  multi_hot = np.zeros((len(name_sets), len(class_names)), np.float32)
  unknown = np.zeros(len(name_sets), bool)
  for row, names in enumerate(name_sets):
    for name in names:
      if name in index:
        multi_hot[row, index[name]] = 1.0
      else:
        unknown[row] = True
  return multi_hot, unknown


def read_table(path: str, columns: Columns) -> Table:
  """Every row of the CSV at path, with the checks that need no split (columns, empty cells)."""
  if not os.path.isfile(path):
    raise UserError(f"CSV file {path} does not exist: pass --config.dataset=csv:PATH with PATH a "
                    "CSV that lists one picture per row (columns "
                    f"{columns.file},{columns.label}[,{columns.split}])")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM.
      reader = csv.reader(f)
      header = [name.strip() for name in next(reader, [])]
      cells = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
  except UnicodeDecodeError as e:
    raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as a "
                    "UTF-8 CSV") from None
  except csv.Error as e:
    raise UserError(f"{path} is not a readable CSV ({e}): check its quoting") from None
  if not any(header):
    raise UserError(f"{path} is empty: its first row must name the columns, e.g. "
                    f"{columns.file},{columns.label},{columns.split}, then one row per picture")
  if not cells:
    raise UserError(f"{path} has a header but no rows: list one picture per row")
  file_at = _column(path, header, columns.file, "csv_file_column", "the picture paths")
  split_at = header.index(columns.split) if columns.split in header else None
  class_columns = _class_columns(path, header, columns) if columns.label_columns else None
  label_at = (None if class_columns else
              _column(path, header, columns.label, "csv_label_column", "the labels"))
  cell = lambda row, at: row[at].strip() if at < len(row) else ""
  folder = os.path.dirname(os.path.abspath(path))
  table = Table(path, header, [], [], [], [], None if split_at is None else [],
                [name for name, _ in class_columns] if class_columns else None)
  for row_number, row in cells:
    written = cell(row, file_at)
    if not written:
      raise UserError(f"{path} row {row_number}: column {columns.file!r} is empty: fill it in "
                      "or remove the row")
    if class_columns:
      labels = _flags(path, row_number, [(name, cell(row, at)) for name, at in class_columns])
    else:
      text = cell(row, label_at)
      labels = (parse_label_set(text, columns.label_separator) if columns.label_separator
                else (parse_label(text),) if text else ())
      if not labels:
        raise UserError(f"{path} row {row_number}: column {columns.label!r} "
                        f"{'names no class' if text else 'is empty'}: fill it in or remove the "
                        "row")
    table.rows.append(row_number)
    table.written.append(written)
    table.files.append(os.path.normpath(os.path.join(folder, written)))  # Absolute stays.
    table.labels.append(labels)
    if split_at is not None:
      table.splits.append(cell(row, split_at))
  _check_unique(table)
  return table


def _class_columns(path: str, header: list[str], columns: Columns) -> list[tuple[str, int]]:
  """(class name, column index) of each 0/1 column that csv_label_columns names."""
  if columns.label_columns.strip() == ALL_COLUMNS:
    names = [name for name in header if name and name not in (columns.file, columns.split)]
  else:
    names = [name.strip() for name in columns.label_columns.split(",")]
  if not names:
    raise UserError(f"{path} has no column besides {columns.file!r} and {columns.split!r}: add "
                    "one 0/1 column per class")
  for name in names:
    _column(path, header, name, "csv_label_columns", "one class's 0/1 values")
  return [(name, header.index(name)) for name in names]


def _flags(path: str, row_number: int, cells: list[tuple[str, str]]) -> tuple[str, ...]:
  """The classes whose 0/1 cell holds 1; anything but 0 or 1 is refused."""
  for name, value in cells:
    if value not in ("0", "1"):
      raise UserError(f"{path} row {row_number}: column {name!r} holds {value!r}, not 0 or 1: "
                      "write 1 where the picture shows the class and 0 where it does not")
  return tuple(name for name, value in cells if value == "1")


def _column(path: str, header: list[str], name: str, field: str, holds: str) -> int:
  if name not in header:
    raise UserError(f"{path} has no column {name!r} (its columns: {', '.join(header)}): set "
                    f"--config.{field} to the column that holds {holds}")
  return header.index(name)


def _check_unique(table: Table) -> None:
  """A picture in two rows would have two labels, or be trained on and evaluated."""
  first_row = {}
  for row, file in zip(table.rows, table.files):
    if file in first_row:
      raise UserError(f"{table.path} rows {first_row[file]} and {row} both list {file}: list "
                      "each picture once (one label, one split)")
    first_row[file] = row


def split_rows(table: Table, split: str, train_split: str) -> np.ndarray:
  """Indices of the rows of `split`; every row is `train_split` where there is no split column."""
  if table.splits is None:
    if split == train_split:
      return np.arange(len(table.rows))
    raise UserError(f"{table.path} has no split column (its columns: {', '.join(table.columns)}), "
                    f"so every row is training data and there is no split {split!r}: set "
                    "--config.eval_split=holdout:0.1 to hold out 10% of it, or add a split "
                    "column (named by --config.csv_split_column)")
  chosen = np.flatnonzero(np.array(table.splits) == split)
  if not len(chosen):
    values = ", ".join(sorted(set(table.splits)))
    raise UserError(f"{table.path} has no rows of split {split!r} (its split column holds: "
                    f"{values}): set --config.train_split and --config.eval_split to those "
                    "values, or --config.eval_split=holdout:0.1 to hold out part of the "
                    "training rows")
  return chosen


def read_split(path: str, split: str, train_split: str, columns: Columns
               ) -> tuple[list[str], np.ndarray, list[str]]:
  """(paths, labels, class_names) of one split, class names from the training rows' labels.

  Labels are int32 [N], or multi-hot float32 [N, C] where `columns` says the
  CSV is multi-label. Every file of the split must exist; a label the training
  rows lack is refused, since the model has no class for it.
  """
  table = read_table(path, columns)
  train = split_rows(table, train_split, train_split)
  class_names = table.class_columns or sorted({name for i in train for name in table.labels[i]})
  chosen = train if split == train_split else split_rows(table, split, train_split)
  names = [table.labels[i] for i in chosen]
  if columns.multi_label:
    labels, unknown_rows = encode_multi_hot(names, class_names)
  else:
    labels = encode_labels([name for name, in names], class_names)
    unknown_rows = labels < 0
  unknown = chosen[unknown_rows]
  if len(unknown):
    i = unknown[0]
    label = next(name for name in table.labels[i] if name not in class_names)
    raise UserError(f"{path} row {table.rows[i]}: label {label!r} of split {split!r} "
                    f"is in no row of the training split {train_split!r} ({len(unknown)} such "
                    "row(s)): the model has no class for it: add training rows of it, or "
                    "remove those rows")
  missing = [i for i in chosen if not os.path.isfile(table.files[i])]
  if missing:
    i = missing[0]
    raise UserError(f"{path} row {table.rows[i]}: {table.written[i]} does not exist (looked "
                    f"for {table.files[i]}; {len(missing)} of {len(chosen)} rows of split "
                    f"{split!r} name missing files): correct the path (a relative one starts "
                    "at the CSV's folder) or remove the row")
  return [table.files[i] for i in chosen], labels, class_names
