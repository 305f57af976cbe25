"""`python -m resnet_jax.main`, preempted: SIGTERM to itself at the N-th train step.

  PREEMPT_AT_CALL=2 python tests/preempted_main.py --config=configs/tiny.py ...
"""

import os
import runpy
import signal
import time

from resnet_jax.train import steps

PREEMPT_AT_CALL = int(os.environ["PREEMPT_AT_CALL"])
compile_train_step = steps.compile_train_step


def compile_and_preempt(*args, **kwargs):
  step = compile_train_step(*args, **kwargs)
  calls = 0

  def preempted(state, data):
    nonlocal calls
    calls += 1
    if calls == PREEMPT_AT_CALL:
      os.kill(os.getpid(), signal.SIGTERM)
      # jax's notifier looks for SIGTERM once a second: give the processes time to
      # agree on a step, so that they stop well before the run would end anyway.
      time.sleep(3)
    return step(state, data)

  return preempted


steps.compile_train_step = compile_and_preempt
runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)
