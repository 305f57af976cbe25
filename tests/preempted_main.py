"""`python -m resnet_jax.main`, preempted: SIGTERM to itself at the N-th train step.

  PREEMPT_AT_CALL=2 python tests/preempted_main.py --config=configs/tiny.py ...

The signal is sent inside the N-th call of the train step, and that call does
not go on until jax.distributed's preemption protocol has taken every
process's step count (the coordination service's key-value store holds one
per process). Until then no process can pass step N-1 (each step is a
collective), so all of them see the agreed step, N, whatever the machine's load.
"""

import os
import runpy
import signal
import time

from resnet_jax.train import steps

PREEMPT_AT_CALL = int(os.environ["PREEMPT_AT_CALL"])
# Where jax's preemption sync manager (xla/tsl preemption_sync_manager.cc) puts each
# process's step count once it has seen a notice.
COUNTERS_KEY = "PREEMPTION_CURRENT_COUNTER/"
AGREE_TIMEOUT_S = 300  # Only bounds a broken protocol; the wait ends on the event.
compile_train_step = steps.compile_train_step


def wait_for_every_counter():
  import jax
  from jax._src import distributed
  deadline = time.monotonic() + AGREE_TIMEOUT_S
  while len(distributed.global_state.client.key_value_dir_get(COUNTERS_KEY)) < \
      jax.process_count():
    if time.monotonic() > deadline:
      raise RuntimeError(f"no preemption step counts under {COUNTERS_KEY} after "
                         f"{AGREE_TIMEOUT_S} s")
    time.sleep(0.01)


def compile_and_preempt(*args, **kwargs):
  step = compile_train_step(*args, **kwargs)
  calls = 0

  def preempted(state, data):
    nonlocal calls
    calls += 1
    if calls == PREEMPT_AT_CALL:
      os.kill(os.getpid(), signal.SIGTERM)
      wait_for_every_counter()
    return step(state, data)

  return preempted


steps.compile_train_step = compile_and_preempt
runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)
