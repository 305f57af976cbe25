"""`python -m resnet_jax.main` with slow spots, for tests to send it signals inside them.

  SLOW_SAVE_FROM_STEP=6 SLOW_SAVE_S=5 python tests/slow_main.py --config=configs/tiny.py ...

Each slow spot first prints a marker line to stderr, then sleeps:

  SLOW_SETUP_S       "slow set-up" in compile_train_step, during Trainer set-up.
  SLOW_FIRST_STEP_S  "slow first step" at the first train step's call (which compiles it).
  SLOW_SAVE_S        "slow save of step N" in Orbax's finalisation of each checkpoint from
                     step SLOW_SAVE_FROM_STEP (default 0) on: in its background thread, while
                     the folder is still `<step>.orbax-checkpoint-tmp*`.
"""

import asyncio
import os
import runpy
import sys
import time

from orbax.checkpoint._src.path import atomicity

from resnet_jax.train import steps


def seconds(name: str) -> float:
  return float(os.environ.get(name, "0"))


def marker(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


if seconds("SLOW_SETUP_S") or seconds("SLOW_FIRST_STEP_S"):
  compile_train_step = steps.compile_train_step

  def slow_compile(*args, **kwargs):
    if seconds("SLOW_SETUP_S"):
      marker("slow set-up")
      time.sleep(seconds("SLOW_SETUP_S"))
    step = compile_train_step(*args, **kwargs)
    calls = 0

    def slow_step(state, data):
      nonlocal calls
      calls += 1
      if calls == 1 and seconds("SLOW_FIRST_STEP_S"):
        marker("slow first step")
        time.sleep(seconds("SLOW_FIRST_STEP_S"))
      return step(state, data)

    return slow_step

  steps.compile_train_step = slow_compile

if seconds("SLOW_SAVE_S"):
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def slow_finalize(self, *args, **kwargs):
    name = self.get_final().name
    if name.isdigit() and int(name) >= int(os.environ.get("SLOW_SAVE_FROM_STEP", "0")):
      marker(f"slow save of step {name}")
      await asyncio.sleep(seconds("SLOW_SAVE_S"))
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize

runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)
