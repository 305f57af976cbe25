"""A CSV listing pictures and their labels: read, checked, and cut into the rows of one split.

One row per picture: a file column (a path relative to the CSV's folder, or
absolute), a label column and, optionally, a split column whose values name
the splits (`train_split`, `eval_split`); without one every row is training
data. Class names are the training rows' labels, sorted as strings. Errors
name a row as a spreadsheet numbers it: the header is row 1. Only the
standard library's `csv`: worker processes import this.
"""

import csv
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from resnet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Columns:
  """The names of the CSV's columns (config.csv_file_column, csv_label_column, csv_split_column)."""
  file: str = "file"
  label: str = "label"
  split: str = "split"


@dataclasses.dataclass
class Table:
  """The rows of a CSV, values stripped; `files` resolved to normalised absolute paths."""
  path: str
  columns: list[str]  # As the header names them.
  rows: list[int]  # Row numbers, the header being row 1.
  files: list[str]
  written: list[str]  # The file cells as written, for messages.
  labels: list[str]
  splits: list[str] | None  # None when the CSV has no split column.


def parse_label(cell: str) -> str:
  """The class a label cell names.

  The one place a cell becomes a class: a multi-label form would return
  several names here, and `encode_labels` a multi-hot array from them.
  """
  return cell.strip()


def encode_labels(names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
  """int32 [N] indices of each name in class_names (-1 where it is none of them)."""
  index = {name: i for i, name in enumerate(class_names)}
  return np.array([index.get(name, -1) for name in names], np.int32)


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
  label_at = _column(path, header, columns.label, "csv_label_column", "the labels")
  split_at = header.index(columns.split) if columns.split in header else None
  cell = lambda row, at: row[at].strip() if at < len(row) else ""
  folder = os.path.dirname(os.path.abspath(path))
  table = Table(path, header, [], [], [], [], None if split_at is None else [])
  for row_number, row in cells:
    written, label = cell(row, file_at), parse_label(cell(row, label_at))
    for value, column in ((written, columns.file), (label, columns.label)):
      if not value:
        raise UserError(f"{path} row {row_number}: column {column!r} is empty: fill it in or "
                        "remove the row")
    table.rows.append(row_number)
    table.written.append(written)
    table.files.append(os.path.normpath(os.path.join(folder, written)))  # Absolute stays.
    table.labels.append(label)
    if split_at is not None:
      table.splits.append(cell(row, split_at))
  _check_unique(table)
  return table


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

  Every file of the split must exist; a label the training rows lack is refused,
  since the model has no class for it.
  """
  table = read_table(path, columns)
  train = split_rows(table, train_split, train_split)
  class_names = sorted({table.labels[i] for i in train})
  chosen = train if split == train_split else split_rows(table, split, train_split)
  labels = encode_labels([table.labels[i] for i in chosen], class_names)
  unknown = chosen[labels < 0]
  if len(unknown):
    i = unknown[0]
    raise UserError(f"{path} row {table.rows[i]}: label {table.labels[i]!r} of split {split!r} "
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
