"""The hook that drops the reports a failed Orbax read leaves, provoked with the installed Orbax."""

import asyncio
import gc
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.checkpoints import checkpointing
from tests.conftest import damage_checkpoint


def _state(num_arrays: int = 16) -> dict:
  """Random arrays (they do not compress), several, so a failed read leaves the others unawaited."""
  rng = np.random.default_rng(0)
  return {"params": {f"w{i}": jnp.asarray(rng.normal(size=(256, 256)), jnp.float32)
                     for i in range(num_arrays)}, "step": jnp.int32(2)}


@pytest.fixture
def hooks(monkeypatch):
  """(reports that reached the hook before ours, our hook's verdicts), with ours installed anew."""
  reached, verdicts = [], []
  monkeypatch.setattr(sys, "unraisablehook", reached.append)
  monkeypatch.setattr(checkpointing, "_leftovers_hook_installed", False)
  judge = checkpointing._is_restore_leftover
  monkeypatch.setattr(checkpointing, "_is_restore_leftover",
                      lambda report: verdicts.append(judge(report)) or verdicts[-1])
  return reached, verdicts


def test_reports_left_by_failed_restores_are_all_dropped(tmp_path, hooks):
  """Whatever the installed Orbax leaves after a failed read is told apart, none reaches the user.

  How many reports come depends on how far TensorStore's other reads got when
  the first failed (from none to a dozen in runs here), so
  the test asks that each one that comes is a leftover, not that some come.
  """
  reached, verdicts = hooks
  directory = tmp_path / "checkpoints"
  writer = checkpointing.Checkpointer(str(directory))
  writer.save(2, _state(), {"model": "test"}, metrics={checkpointing.BEST_METRIC: 0.5})
  writer.close()
  damage_checkpoint(directory / "2", "truncated")
  failures = 0
  for _ in range(5):  # Some reports of one attempt come during the next.
    reader = checkpointing.Checkpointer(str(directory), read_only=True)
    try:  # Not pytest.raises: its record of the error would keep the unawaited reads alive.
      reader.restore(2)
    except Exception:
      failures += 1
    checkpointing.discard_failed_restore()
  gc.collect()
  assert failures == 5
  assert all(verdicts) and not reached, [(r.exc_value, r.object) for r in reached]


def test_other_reports_reach_the_previous_hook(tmp_path, hooks):
  reached, _ = hooks
  checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True).close()

  class Ours:
    def __del__(self):
      raise ValueError("ours")

  Ours()
  gc.collect()
  assert [type(r.exc_value) for r in reached] == [ValueError]


def _report(error: BaseException) -> types.SimpleNamespace:
  return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                               exc_traceback=error.__traceback__, object=None, err_msg=None)


def test_a_completion_into_a_closed_event_loop_is_told_by_where_asyncio_raised_it():
  loop = asyncio.new_event_loop()
  loop.close()
  with pytest.raises(RuntimeError) as raised:  # What TensorStore's threads meet.
    loop.call_soon_threadsafe(print)
  assert checkpointing._is_restore_leftover(_report(raised.value))
  with pytest.raises(RuntimeError) as ours:  # The same words from elsewhere.
    raise RuntimeError(str(raised.value))
  assert not checkpointing._is_restore_leftover(_report(ours.value))
