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

from resnet_jax.train import steps

PREEMPT_AT_CALL = int(os.environ["PREEMPT_AT_CALL"])
# Where jax's preemption sync manager (xla/tsl preemption_sync_manager.cc) puts each
# process's step count once it has seen a notice: one key per process id.
COUNTERS_KEY = "PREEMPTION_CURRENT_COUNTER/"
AGREE_TIMEOUT_S = 300  # Only bounds a broken protocol; the wait ends on the event.
compile_train_step = steps.compile_train_step


def wait_for_every_counter():
  """Blocks in the coordination service until every process's count is there."""
  import jax
  from jax._src import distributed
  client = distributed.global_state.client
  for process in range(jax.process_count()):
    client.blocking_key_value_get(f"{COUNTERS_KEY}{process}", AGREE_TIMEOUT_S * 1000)


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
