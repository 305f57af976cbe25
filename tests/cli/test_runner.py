"""The console filter: the Orbax and asyncio records it drops, provoked with the real libraries."""

import asyncio
import contextlib
import gc
import logging
import os

import jax.numpy as jnp

from resnet_jax.checkpoints import checkpointing
from resnet_jax.cli import runner


@contextlib.contextmanager
def captured():
  """Every record of WARNING and above that reaches the root logger (absl's and asyncio's too)."""
  records = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  logging.getLogger().addHandler(handler)
  try:
    yield records
  finally:
    logging.getLogger().removeHandler(handler)


def _orbax_warnings(records) -> list[logging.LogRecord]:
  return [r for r in records if f"{os.sep}orbax{os.sep}" in r.pathname]


def _shown(records) -> list[str]:
  return [r.getMessage() for r in records if runner.OwnInfoOnly().filter(r)]


def _save(directory, step: int, metrics=None) -> None:
  manager = checkpointing.Checkpointer(str(directory))
  manager.save(step, {"params": {"w": jnp.arange(4.0)}, "step": jnp.int32(step)},
               {"model": "test"}, metrics=metrics)
  manager.close()


def test_a_save_without_metrics_makes_orbax_warn_and_the_filter_drops_it(tmp_path):
  with captured() as records:
    _save(tmp_path / "checkpoints", 1)
  orbax = _orbax_warnings(records)
  assert orbax, "Orbax no longer warns at a save without metrics: drop its ORBAX_NOISE entry"
  assert _shown(orbax) == []


def test_listing_a_checkpoint_without_its_metadata_makes_orbax_warn_and_the_filter_drops_it(
    tmp_path):
  directory = tmp_path / "checkpoints"
  _save(directory, 1, metrics={checkpointing.BEST_METRIC: 0.5})
  _save(directory, 2, metrics={checkpointing.BEST_METRIC: 0.6})
  # What a reader meets when the training run prunes the step as it lists it.
  os.remove(directory / "1" / "_CHECKPOINT_METADATA")
  with captured() as records:
    reader = checkpointing.Checkpointer(str(directory), read_only=True)
    assert reader.best_step() == 2
    reader.close()
  orbax = _orbax_warnings(records)
  assert orbax, "Orbax no longer warns about a missing metadata file: drop its ORBAX_NOISE entry"
  assert _shown(orbax) == []


def test_other_orbax_warnings_are_shown_on_one_line():
  record = logging.LogRecord("absl", logging.WARNING, f"{os.sep}orbax{os.sep}checkpoint.py", 1,
                             "Something else went wrong:\n%s", ("details",), None)
  assert _shown([record]) == ["Something else went wrong:"]


def test_an_unretrieved_future_exception_is_dropped_and_other_asyncio_errors_shown():
  loop = asyncio.new_event_loop()
  with captured() as records:
    future = loop.create_future()
    future.set_exception(OSError(28, "No space left on device"))  # As Orbax's failed writes.
    del future
    gc.collect()
    loop.call_exception_handler({"message": "another asyncio error"})
  loop.close()
  from_asyncio = [r for r in records if r.name == "asyncio"]
  assert len(from_asyncio) == 2, [r.getMessage() for r in records]
  assert _shown(from_asyncio) == ["another asyncio error"]
