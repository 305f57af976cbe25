"""Grain streams: order a pure function of (seed, step), any worker or process count, exact eval."""

import os

import numpy as np
import pytest
from absl import flags

from resnet_jax.data import images, sources, streaming
from resnet_jax.data import workers as worker_pool
from resnet_jax.errors import UserError
from tests.conftest import write_image_folder


@pytest.fixture(scope="module", autouse=True)
def absl_flags_parsed():
  """Grain's mp_prefetch reads absl flags, which pytest never parses."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class IndexSource:
  """Example i: a 6x10 grey image of value i % 256 and label i, so batches reveal their indices."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict:
    image = np.full((6, 10, 1), i % 256, np.uint8)
    image[0, 0, 0] = 255 - i % 256  # Not uniform, so crops differ.
    return {"image": image, "label": np.int32(i)}


TRAIN_ROWS = dict(global_batch_size=4, image_size=8, train_crop="pad", crop_scale=(0.08, 1.0),
                  seed=3)
EVAL_ROWS = dict(global_batch_size=4, image_size=8, crop_fraction=1.0)


def train_stream(source, **overrides) -> streaming.TrainStream:
  args = dict(TRAIN_ROWS, start_step=0, num_steps=6)
  args.update(overrides)
  return streaming.TrainStream(source, **args)



def collect(stream: streaming.TrainStream) -> list[dict]:
  with stream:
    return list(stream)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  write_image_folder(root, per_class=5)
  return sources.FolderSource(str(root), "train")


def test_order_is_a_permutation_per_epoch_from_seed_and_epoch():
  source = IndexSource(12)
  batches = collect(train_stream(source, num_steps=9))  # 3 steps per epoch, 3 epochs.
  labels = [b["label"] for b in batches]
  for epoch in range(3):
    expected = np.random.default_rng([3, epoch]).permutation(12)
    got = np.concatenate(labels[3 * epoch:3 * epoch + 3])
    np.testing.assert_array_equal(got, expected)
  assert not np.array_equal(np.concatenate(labels[0:3]), np.concatenate(labels[3:6]))
  assert batches[0]["image"].shape == (4, 8, 8, 1) and batches[0]["image"].dtype == np.uint8
  assert batches[0]["label"].dtype == np.int32


def test_folder_listed_by_class_is_shuffled(folder):
  batches = collect(train_stream(folder, num_steps=3))
  labels = np.concatenate([b["label"] for b in batches])
  assert sorted(labels.tolist()) != labels.tolist()
  assert batches[0]["image"].shape == (4, 8, 8, 3)


def test_pad_mode_is_resize_center_crop_of_the_source(folder):
  batch = collect(train_stream(folder, num_steps=1, image_size=12))[0]
  indices = np.random.default_rng([3, 0]).permutation(len(folder))[:4]
  for row, index in enumerate(indices):
    expected = images.resize_center_crop(folder[index]["image"], 12)
    np.testing.assert_array_equal(batch["image"][row], expected)
    assert batch["label"][row] == folder.labels[index]


def test_resume_at_step_k_gives_the_same_batches():
  source = IndexSource(10)  # 2 steps per epoch, 2 examples dropped each epoch.
  full = collect(train_stream(source, num_steps=7, train_crop="random_resized"))
  resumed = collect(train_stream(source, num_steps=7, start_step=3, train_crop="random_resized"))
  assert len(resumed) == 4
  for a, b in zip(full[3:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shares_tile_the_global_batch(process_count):
  source = IndexSource(16)
  args = dict(global_batch_size=8, num_steps=4, train_crop="random_resized")
  whole = collect(train_stream(source, **args))
  shares = [collect(train_stream(source, process_index=p, process_count=process_count, **args))
            for p in range(process_count)]
  for step, batch in enumerate(whole):
    parts = [share[step] for share in shares]
    assert all(len(part["label"]) == 8 // process_count for part in parts)
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), batch["label"])
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), batch["image"])
    assert len(set(np.concatenate([p["label"] for p in parts]).tolist())) == 8  # Disjoint.


def test_random_resized_is_a_function_of_seed_step_and_row():
  source = IndexSource(8)
  batches = collect(train_stream(source, num_steps=4, train_crop="random_resized",
                                 crop_scale=(0.2, 1.0)))
  for step, batch in enumerate(batches):
    assert batch["image"].shape == (4, 8, 8, 1) and batch["image"].dtype == np.uint8
    for row in range(4):
      index = int(batch["label"][row])
      rng = np.random.default_rng([3, step, row])
      expected = images.random_resized_crop(source[index]["image"], 8, rng, scale=(0.2, 1.0))
      np.testing.assert_array_equal(batch["image"][row], expected)
  other_seed = collect(train_stream(source, num_steps=1, seed=4, train_crop="random_resized"))
  assert not np.array_equal(other_seed[0]["label"], batches[0]["label"])


def test_two_workers_give_the_same_batches_as_none(folder):
  args = dict(num_steps=5, image_size=16, train_crop="random_resized")
  in_process = collect(train_stream(folder, **args))
  stream = train_stream(folder, backend=streaming.Processes(2), **args)
  with_workers = collect(stream)
  assert len(with_workers) == len(in_process) == 5
  for a, b in zip(in_process, with_workers):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])
    assert type(b["image"]) is np.ndarray  # Copied out of shared memory.
  assert stream.wait_seconds > 0


def test_two_workers_give_the_same_eval_batches_as_none(folder):
  evals = [list(streaming.eval_batches(folder, global_batch_size=4, image_size=8,
                                       crop_fraction=0.875, backend=streaming.backend_for(w)))
           for w in (0, 2)]
  assert len(evals[0]) == len(evals[1]) == 4
  for a, b in zip(*evals):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(a[key], b[key])


def test_stream_counts_wait_time_and_closes():
  stream = train_stream(IndexSource(8), num_steps=4)
  first = next(stream)
  assert stream.step == 1 and stream.wait_seconds > 0 and first["label"].shape == (4,)
  stream.close()
  assert list(stream) == []
  assert list(train_stream(IndexSource(8), start_step=4, num_steps=4)) == []


def test_bad_arguments_raise_when_the_stream_is_made():
  with pytest.raises(UserError, match="does not split evenly over 3 processes"):
    train_stream(IndexSource(12), process_count=3)
  with pytest.raises(UserError, match="fewer than one batch"):
    train_stream(IndexSource(3))
  with pytest.raises(UserError, match="train_crop 'flip' is not known"):
    train_stream(IndexSource(8), train_crop="flip")
  with pytest.raises(UserError, match="workers is -1"):
    streaming.backend_for(-1)
  with pytest.raises(UserError, match="crop_fraction 1.5 is not in"):
    streaming.eval_batches(IndexSource(8), global_batch_size=4, image_size=8, crop_fraction=1.5)
  with pytest.raises(UserError, match="does not split evenly over 3 processes"):
    streaming.eval_batches(IndexSource(8), global_batch_size=4, image_size=8, crop_fraction=1.0,
                           process_count=3)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_counts_every_example_once(process_count):
  source = IndexSource(13)
  global_batch_size = 6
  per_process = [list(streaming.eval_batches(
      source, global_batch_size=global_batch_size, image_size=8, crop_fraction=0.875,
      process_index=p, process_count=process_count)) for p in range(process_count)]
  assert [len(batches) for batches in per_process] == [3] * process_count
  assert streaming.num_eval_batches(13, global_batch_size) == 3
  labels, total_mask = [], 0.0
  for step in range(3):
    parts = [batches[step] for batches in per_process]
    mask = np.concatenate([p["mask"] for p in parts])
    label = np.concatenate([p["label"] for p in parts])
    image = np.concatenate([p["image"] for p in parts])
    assert mask.dtype == np.float32 and image.shape == (global_batch_size, 8, 8, 1)
    labels.extend(label[mask == 1].tolist())
    total_mask += mask.sum()
    assert (image[mask == 0] == 0).all()
  assert total_mask == 13
  assert labels == list(range(13))


def test_a_bad_picture_in_a_worker_is_the_users_error_and_stops_the_workers(tmp_path):
  from PIL import Image
  for i in range(8):
    os.makedirs(tmp_path / "train" / f"c{i % 2}", exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), i * 20, np.uint8)).save(
        tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg")
  (tmp_path / "train" / "c0" / "0.jpg").write_bytes(b"\xff\xd8 not a picture")
  source = sources.FolderSource(str(tmp_path), "train")
  stream = streaming.TrainStream(source, global_batch_size=4, image_size=8, train_crop="pad",
                                 crop_scale=(0.08, 1.0), seed=0, start_step=0, num_steps=4,
                                 backend=streaming.Processes(2))
  with pytest.raises(UserError, match="cannot decode .*0.jpg"):
    list(stream)
  assert stream._iterator is None and list(stream) == []  # Closed: the workers are gone.


class PidSource(IndexSource):
  """Label: the id of the process that read the example."""

  def __getitem__(self, i: int) -> dict:
    return {**super().__getitem__(i), "label": np.int32(os.getpid())}


def test_one_pool_serves_the_training_stream_and_every_eval():
  """A run's workers start once: training batches and each eval pass come from the same ones,
  an eval stream made after the first training batch included (the pool holds its rows)."""
  source = PidSource(8)
  rows = [streaming.train_rows(source, **TRAIN_ROWS), streaming.eval_rows(source, **EVAL_ROWS)]
  with worker_pool.Workers(2, rows) as pool:
    train = train_stream(source, num_steps=4, backend=streaming.Pool(pool))
    readers = {int(pid) for pid in next(train)["label"]}  # The workers run from here on.
    evals = streaming.EvalStream(source, **EVAL_ROWS, backend=streaming.Pool(pool))
    readers |= {int(pid) for batch in [*train, *evals(), *evals()] for pid in batch["label"]}
    train.close()  # The stream's end leaves the pool running for the next eval.
    readers |= {int(pid) for batch in evals() for pid in batch["label"]}
  assert 1 <= len(readers) <= 2 and os.getpid() not in readers
  with pytest.raises(RuntimeError, match="closed"):
    list(evals())
  # With processes of its own, each pass starts others.
  alone = streaming.EvalStream(source, **EVAL_ROWS, backend=streaming.Processes(2))
  assert not {int(pid) for batch in alone() for pid in batch["label"]} & readers


def test_a_pool_takes_every_transform_when_built_and_refuses_others_before_any_batch():
  """Nothing can be added to a pool once built, and a stream whose rows it was not built with
  fails when the stream is made, before a worker starts, with the fix in the message."""
  source = IndexSource(8)
  pool = worker_pool.Workers(2, [streaming.train_rows(source, **TRAIN_ROWS)])
  assert not hasattr(pool, "register")
  refused = [
      lambda: streaming.EvalStream(source, **EVAL_ROWS, backend=streaming.Pool(pool)),
      lambda: train_stream(source, seed=4, backend=streaming.Pool(pool)),  # Other rows.
      lambda: train_stream(IndexSource(8), backend=streaming.Pool(pool)),  # Another source.
  ]
  for make in refused:
    with pytest.raises(ValueError, match=r"not built with this \w+Example: pass it in "
                                         r"Workers\(count, transforms\)"):
      make()
  train = train_stream(source, num_steps=1, backend=streaming.Pool(pool))  # Equal rows: its own.
  assert pool._executor is None  # Refused before any process started.
  with pool:
    assert len(collect(train)) == 1
  with pytest.raises(ValueError, match="needs the transforms"):
    worker_pool.Workers(2, [])


def test_the_backend_is_one_value():
  """Threads, processes of a stream's own, or a shared pool: one argument, not a pair."""
  assert streaming.backend_for(0) == streaming.Threads()
  assert streaming.backend_for(3, prefetch=4) == streaming.Processes(3, prefetch=4)
  with pytest.raises(ValueError, match="at least one process"):
    streaming.Processes(0)
  with pytest.raises(TypeError, match="workers"):
    train_stream(IndexSource(8), workers=2)


def test_batches_come_back_through_slot_files_or_the_pipe_alike(folder, tmp_path):
  """Workers stack batches into slot files (or, without a usable slot folder, send them
  through the pipe): the same batches either way; a pool removes its slots when it closes
  and, when it starts, those of a process that died."""
  import subprocess
  import sys
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f"resnet_jax-batch-{dead}-0-0-0"
  live = tmp_path / f"resnet_jax-batch-{os.getpid()}-99-0-0"  # A live pool's: kept.
  stale.write_bytes(b"x"), live.write_bytes(b"x")
  rows_args = dict(image_size=16, train_crop="random_resized")
  args = dict(num_steps=6, **rows_args)
  expected = collect(train_stream(folder, **args))
  rows = streaming.train_rows(folder, **{**TRAIN_ROWS, **rows_args})
  for slot_dir in (str(tmp_path), str(tmp_path / "missing")):
    with worker_pool.Workers(2, [rows], slot_dir=slot_dir) as pool:
      stream = train_stream(folder, backend=streaming.Pool(pool), **args)
      got = collect(stream)
      slots = sorted(p.name for p in tmp_path.glob("resnet_jax-batch-*") if p != live)
      if slot_dir == str(tmp_path):  # Depth 4 (2 workers x 2): slots 0-3 of transform 0.
        assert slots == [f"resnet_jax-batch-{os.getpid()}-{slots[0].split('-')[3]}-0-{i}"
                         for i in range(4)], slots
      else:
        assert slots == []
    for a, b in zip(expected, got, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  assert not stale.exists() and live.exists()
  assert sorted(p.name for p in tmp_path.glob("resnet_jax-batch-*")) == [live.name]
