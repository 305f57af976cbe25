"""resnet_jax/xla_cpu.py: the CPU-tuned training step computes what XLA's default one does."""

import chex
import jax
import numpy as np
import pytest

from resnet_jax.train import steps, xla_cpu
from tests.conftest import resolved_config
from resnet_jax.models import build
from resnet_jax import sharding

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")


@pytest.mark.slow
def test_tuned_step_matches_the_default_step():
  # Width 32: convolutions wide enough that XLA's defaults send them to YNNPACK.
  config = resolved_config(width=32, batch_size=16, num_train_steps=10)
  mesh = sharding.create_mesh()
  schedule = steps.learning_rate_schedule(config, 4, config.num_train_steps)
  model = build.create_model(config)
  rng = np.random.default_rng(0)
  data = {"image": sharding.put_replicated(rng.integers(0, 256, (64, 16, 16, 3), np.uint8), mesh),
          "label": sharding.put_replicated(rng.integers(0, 10, (64,), np.int32), mesh)}
  results = []
  for tune in (lambda jitted: jitted, xla_cpu.tuned_for_cpu):
    state = steps.create_train_state(config, model, schedule, mesh)
    step = tune(steps.compile_train_step(config, mesh, schedule))
    for _ in range(2):
      state, metrics = step(state, data)
    results.append(jax.device_get((state.params, state.batch_stats, metrics)))
  (params, stats, metrics), (tuned_params, tuned_stats, tuned_metrics) = results
  assert isinstance(xla_cpu.tuned_for_cpu(steps.compile_train_step(config, mesh, schedule)),
                    xla_cpu.CompiledWithOptions)
  np.testing.assert_allclose(tuned_metrics["train_loss"], metrics["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(tuned_metrics["grad_norm"], metrics["grad_norm"], rtol=1e-4)
  for default, tuned in ((params, tuned_params), (stats, tuned_stats)):
    chex.assert_trees_all_close(tuned, default, rtol=1e-4, atol=1e-6)


def test_options_only_on_cpu_and_never_over_the_users(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_opt_preset=CPU_OPT_PRESET_DEFAULT")
  assert xla_cpu.train_step_options() == {
      "xla_cpu_experimental_ynn_fusion_type":
          xla_cpu.TRAIN_STEP_OPTIONS["xla_cpu_experimental_ynn_fusion_type"]}
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla_cpu.train_step_options() == {}
  jitted = jax.jit(lambda x: x + 1)
  assert xla_cpu.tuned_for_cpu(jitted) is jitted


def test_compiled_once_per_signature_and_plain_functions_pass_through():
  calls = []
  tuned = xla_cpu.tuned_for_cpu(jax.jit(lambda x: calls.append(1) or x * 2))
  x = jax.numpy.ones(3)
  np.testing.assert_array_equal(tuned(x), 2 * np.ones(3))
  assert tuned.lower(x).compile() is tuned.compiled(x)
  tuned(jax.numpy.ones(4))  # Another shape: another program.
  assert len(calls) == 2 and len(tuned._compiled) == 2
  plain = lambda state, batch: (state, batch)
  assert xla_cpu.tuned_for_cpu(plain) is plain
