"""A held-out split where there is none: stratified, deterministic, disjoint from training."""

import hashlib
import os
import shutil

import numpy as np
import pytest

from resnet_jax.data import holdout, pipeline, sources
from resnet_jax.errors import UserError
from tests.conftest import tiny_config, write_image_folder

CLASSES = ("zebra", "cat", "dog house")


def test_held_out_count_rounds_half_up_keeps_one_and_never_takes_all():
  # (pictures in the class, fraction) -> held out, by the rule default_config.py documents.
  expected = {(1, 0.5): 0, (2, 0.1): 1, (2, 0.9): 1, (3, 0.1): 1, (10, 0.1): 1, (15, 0.1): 2,
              (25, 0.1): 3, (24, 0.1): 2, (100, 0.25): 25, (7, 0.5): 4, (5, 0.99): 4}
  assert {key: holdout.held_out_count(*key) for key in expected} == expected


@pytest.mark.parametrize("spec", ["holdout:0", "holdout:1", "holdout:1.5", "holdout:-0.1",
                                  "holdout:abc", "holdout:nan", "holdout:"])
def test_a_fraction_outside_zero_one_is_refused(spec):
  with pytest.raises(UserError, match=r"holds out no valid fraction.*between 0 and 1"):
    holdout.parse(spec)


def test_only_holdout_specs_parse():
  assert holdout.parse("holdout:0.1") == 0.1 and holdout.parse("holdout:1e-1") == 0.1
  assert holdout.parse("test") is None and holdout.parse("train[:10%]") is None


def test_partition_is_stratified_disjoint_and_independent_of_listing_order():
  rng = np.random.default_rng(0)
  sizes = {0: 1, 1: 2, 2: 15, 3: 40}
  labels = np.repeat(list(sizes), list(sizes.values()))
  keys = [f"c{label}/{i:03d}.png" for i, label in enumerate(labels)]
  training, held = holdout.partition(labels, keys, 0.1)
  assert np.intersect1d(training, held).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([training, held])), np.arange(len(keys)))
  assert list(training) == sorted(training) and list(held) == sorted(held)  # The split's order.
  for label, size in sizes.items():
    assert np.sum(labels[held] == label) == holdout.held_out_count(size, 0.1)
  # Listed in another order: the same pictures are held out.
  order = rng.permutation(len(keys))
  _, held_shuffled = holdout.partition(labels[order], [keys[i] for i in order], 0.1)
  assert {keys[order[i]] for i in held_shuffled} == {keys[i] for i in held}
  # Which ones: the first of each class ranked by SHA-256 of "SEED:key", as documented.
  members = [k for k, label in zip(keys, labels) if label == 3]
  ranked = sorted(members, key=lambda k: hashlib.sha256(f"0:{k}".encode()).digest())
  assert {keys[i] for i in held if labels[i] == 3} == set(ranked[:4])


def _open(dataset, split, eval_split="holdout:0.25"):
  return sources.open_split(dataset, split, options=sources.SourceOptions(eval_split=eval_split))


@pytest.fixture
def folder(tmp_path):
  """ROOT/train only: 3 classes of 9, 4 and 1 pictures."""
  root = tmp_path / "images"
  for name, count in zip(CLASSES, (9, 4, 1)):
    write_image_folder(root, "train", (name,), per_class=count, size=8, seed=count)
  return root


def test_folder_holdout_is_disjoint_stratified_and_the_same_on_every_open(folder, tmp_path):
  dataset = f"folder:{folder}"
  whole = sources.open_split(dataset, "train")
  training, held = _open(dataset, "train"), _open(dataset, "holdout:0.25")
  assert not set(training.paths) & set(held.paths)
  assert sorted(training.paths + held.paths) == sorted(whole.paths)
  assert training.class_names == held.class_names == whole.class_names
  counts = np.bincount(held.labels, minlength=3)
  expected = [holdout.held_out_count(n, 0.25) for n in np.bincount(whole.labels)]
  np.testing.assert_array_equal(counts, expected)  # cat 4 -> 1, dog house 1 -> 0, zebra 9 -> 2.
  assert np.bincount(training.labels, minlength=3).min() >= 1  # No class left without training.
  again = _open(dataset, "holdout:0.25"), _open(dataset, "train")
  assert again[0].paths == held.paths and again[1].paths == training.paths
  # Moved elsewhere (another host's mount): the same pictures, by their path under the root.
  moved = tmp_path / "elsewhere" / "copy"
  shutil.copytree(folder, moved)
  held_moved = _open(f"folder:{moved}", "holdout:0.25")
  assert held_moved.keys() == held.keys()


def test_a_csv_at_the_root_holds_out_what_the_folder_does(folder):
  whole = sources.open_split(f"folder:{folder}", "train")
  rows = [f"{os.path.relpath(p, folder)},{whole.class_names[label]}"
          for p, label in zip(whole.paths[::-1], whole.labels[::-1])]  # Another listing order.
  (folder / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
  from_csv = _open(f"csv:{folder / 'labels.csv'}", "holdout:0.25")
  from_folder = _open(f"folder:{folder}", "holdout:0.25")
  assert set(from_csv.paths) == set(from_folder.paths)


def test_pipeline_trains_on_the_rest_and_evaluates_the_holdout(folder):
  config = tiny_config(dataset=f"folder:{folder}", eval_split="holdout:0.25",
                       input_pipeline="stream", image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
  data = pipeline.open_training_data(config)
  assert not set(data.train_source.paths) & set(data.eval_source.paths)
  assert data.facts["num_train_examples"] == 14 - 3 == len(data.train_source)
  assert pipeline.open_source(config, config.eval_split).paths == data.eval_source.paths


def test_holdout_refusals(folder, tmp_path):
  with pytest.raises(UserError, match=r"cifar10 is a TFDS dataset.*train\[90%:\]"):
    sources.check_splits("cifar10", sources.SourceOptions(eval_split="holdout:0.1"))
  with pytest.raises(UserError, match="cifar10 is a TFDS dataset"):
    sources.open_split("cifar10", "holdout:0.1")
  with pytest.raises(UserError, match="train_split 'holdout:0.1' is a holdout"):
    sources.check_splits(f"folder:{folder}", sources.SourceOptions(train_split="holdout:0.1"))
  singles = tmp_path / "singles"
  for name in CLASSES:
    write_image_folder(singles, "train", (name,), per_class=1, size=8)
  with pytest.raises(UserError, match="holds out no pictures: each class of it has a single"):
    _open(f"folder:{singles}", "holdout:0.25")
