"""`python -m resnet_jax.main` (or RUN_MODULE) held at chosen spots, for tests to act inside them.

  HOLD_SAVE_STEP=3 RELEASE=/tmp/go python tests/slow_main.py --config=configs/tiny.py ...

Each spot named in the environment prints a marker line to stderr, then
waits until the file RELEASE exists (forever, if the test never creates it):
the test acts (signals, kills, prunes) knowing exactly where the run is, and
no outcome depends on how fast either side runs. Python signal handlers run
while a spot waits.

  HOLD_SETUP=1         "held: set-up" in compile_train_step, during Trainer set-up.
  HOLD_AT_CALL=N       "held: train step call N" before the N-th call of the train step in
                       this process (the first compiles it).
  HOLD_SAVE_STEP=N     "held: save of step N" in Orbax's finalisation of that checkpoint, in
                       its background thread, while the folder is still
                       `<step>.orbax-checkpoint-tmp*` (every file written, not yet renamed).
  HOLD_PIN=pruned      a reader (restore.load_variables), once it has pinned its step, prints
                       "held: pinned step N" and waits until the training run writing there
                       has pruned that step; HOLD_PIN=release waits for RELEASE instead. It
                       then prints "released: pinned step N" and reads.
  RUN_MODULE           the program to run (default resnet_jax.main).
"""

import asyncio
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import hooks  # noqa: E402 (needs the repository on the path, as a script)


def held(spot: str) -> None:
  hooks.marker(f"held: {spot}")
  hooks.wait_for_file(os.environ["RELEASE"])


if os.environ.get("HOLD_SETUP") or os.environ.get("HOLD_AT_CALL"):
  from resnet_jax.train import steps
  compile_train_step = steps.compile_train_step

  def held_compile(*args, **kwargs):
    if os.environ.get("HOLD_SETUP"):
      held("set-up")
    step = compile_train_step(*args, **kwargs)
    calls = 0

    def held_step(state, data):
      nonlocal calls
      calls += 1
      if calls == int(os.environ.get("HOLD_AT_CALL", "0")):
        held(f"train step call {calls}")
      return step(state, data)

    return held_step

  steps.compile_train_step = held_compile

if os.environ.get("HOLD_SAVE_STEP"):
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def held_finalize(self, *args, **kwargs):
    name = self.get_final().name
    if name == os.environ["HOLD_SAVE_STEP"]:
      hooks.marker(f"held: save of step {name}")
      while not os.path.exists(os.environ["RELEASE"]):
        await asyncio.sleep(0.01)
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = held_finalize

if os.environ.get("HOLD_PIN"):
  from resnet_jax.checkpoints import pins
  pins.pinned = hooks.held_pin(pins.pinned, os.environ["HOLD_PIN"], os.environ.get("RELEASE"))

runpy.run_module(os.environ.get("RUN_MODULE", "resnet_jax.main"), run_name="__main__",
                 alter_sys=True)
