"""XLA:CPU compiler options for the training step; other backends get none.

Measured with scripts/benchmark.py and per-op profiles on a 2-core Xeon (AVX-512), ResNet-18
at width 32 and 64, batch 64, fp32: the step's CPU time fell by 30% (width 32) and 38%
(width 64). Figures, and what did not help: docs/benchmark_notes.md.

Pass `train_step_options()` as `jax.jit(..., compiler_options=...)`, or wrap a jitted step
with `tuned_for_cpu` (scripts/benchmark.py does). A whole process takes the same options from
  XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE"
"""

import os
from collections.abc import Callable
from typing import Any

import jax

# - Convolutions go to XLA's Eigen runtime rather than YNNPACK fusions: YNNPACK took 3x as
#   long for the kernel gradient of a stride-1 3x3 convolution. Reductions (BatchNorm
#   statistics) and dots stay in YNNPACK: XLA's own reduce emitter took 7x as long.
# - The FAST_COMPILE preset stops XLA from recomputing whole BatchNorm + residual chains
#   inside the transposes that feed those kernel gradients (they read the stored
#   activation instead: 74 ms instead of 261 ms per step); it compiles no slower.
TRAIN_STEP_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE",
}


def train_step_options() -> dict[str, Any]:
  """TRAIN_STEP_OPTIONS on the CPU backend, less any option the user set in XLA_FLAGS."""
  if jax.default_backend() != "cpu":
    return {}
  user_flags = os.environ.get("XLA_FLAGS", "")
  return {name: value for name, value in TRAIN_STEP_OPTIONS.items()
          if f"--{name}" not in user_flags}


def tuned_for_cpu(jitted: Callable) -> Callable:
  """`jitted` compiled with train_step_options() when there are any, else `jitted` itself
  (also when it is a plain function, such as a test's wrapper, that cannot be lowered)."""
  options = train_step_options()
  return CompiledWithOptions(jitted, options) if options and hasattr(jitted, "lower") else jitted


def _signature(args: tuple) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((getattr(x, "shape", None), getattr(x, "dtype", type(x)),
                         getattr(x, "sharding", None)) for x in leaves)


class CompiledWithOptions:
  """A jitted function compiled with XLA compiler options, once per argument signature.

  Called like the jitted function (donation included); `lower(*args).compile()` returns
  the same compiled program, for cost and memory analysis.
  """

  def __init__(self, jitted: Callable, options: dict[str, Any]):
    self.jitted, self.options = jitted, options
    self._compiled: list[tuple[tuple, Any]] = []  # (signature, Compiled); a list: treedefs
    # hold the model and optimiser, which need not hash.

  def compiled(self, *args) -> Any:
    signature = _signature(args)
    for known, compiled in self._compiled:
      if known == signature:
        return compiled
    compiled = self.jitted.lower(*args).compile(compiler_options=self.options)
    self._compiled.append((signature, compiled))
    return compiled

  def __call__(self, *args):
    return self.compiled(*args)(*args)

  def lower(self, *args) -> "_Lowered":
    return _Lowered(self, args)


class _Lowered:

  def __init__(self, owner: CompiledWithOptions, args: tuple):
    self.owner, self.args = owner, args

  def compile(self) -> Any:
    return self.owner.compiled(*self.args)
