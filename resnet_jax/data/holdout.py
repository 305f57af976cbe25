"""A held-out split carved out of the training pictures: stratified, seeded, deterministic.

`--config.eval_split=holdout:0.1` holds out 10% of each class of
`train_split` (rounded half up; at least one picture of a class of two or
more, at most all but one, none of a class of one picture), and training
reads the rest. Which pictures are held out is a function of the pictures'
paths relative to the dataset's root alone: each class's pictures are ranked
by a SHA-256 of SEED and that path, and the first are held out. So every host,
every resume and `--mode=eval` derive the same split, whatever the number of
hosts, the order files are listed in, config.seed, the NumPy version or where
the dataset is mounted.
"""

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from resnet_jax.errors import UserError

PREFIX = "holdout:"
# Fixed rather than config.seed: runs of several seeds are then measured on one held-out set.
SEED = 0


def parse(split: str) -> float | None:
  """The fraction a holdout spec ("holdout:0.1") holds out; None for any other split name."""
  if not split.startswith(PREFIX):
    return None
  try:
    fraction = float(split[len(PREFIX):])
  except ValueError:
    fraction = math.nan
  if not 0 < fraction < 1:  # NaN fails too.
    raise UserError(f"eval_split {split!r} holds out no valid fraction: give a number between "
                    "0 and 1 (both excluded), e.g. --config.eval_split=holdout:0.1 for 10%")
  return fraction


def held_out_count(num_pictures: int, fraction: float) -> int:
  """How many pictures of a class of num_pictures are held out."""
  if num_pictures < 2:
    return 0  # Its one picture trains: a class with no training picture cannot be learned.
  return min(max(1, math.floor(fraction * num_pictures + 0.5)), num_pictures - 1)


def _rank(key: str) -> bytes:
  return hashlib.sha256(f"{SEED}:{key}".encode()).digest()


def partition(labels: np.ndarray, keys: Sequence[str], fraction: float
              ) -> tuple[np.ndarray, np.ndarray]:
  """(training, held out): indices into the split, each in the split's own order.

  Args:
    labels: int [N] class of each picture.
    keys: each picture's path relative to the dataset's root (its identity).
    fraction: of each class to hold out, in (0, 1).
  """
  held = np.zeros(len(keys), bool)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    ranked = sorted(members, key=lambda i: (_rank(keys[i]), keys[i]))
    held[ranked[:held_out_count(len(members), fraction)]] = True
  return np.flatnonzero(~held), np.flatnonzero(held)
