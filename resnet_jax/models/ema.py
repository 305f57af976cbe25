"""An exponential moving average of the weights: updated in the step, saved, evaluated.

With `config.ema_decay > 0` the train state carries `ema = {"params": ...,
"batch_stats": ...}`, a copy of the weights that every step moves
`1 - decay_t` of the way towards the new ones (BatchNorm's running
statistics included, so the averaged network has statistics that match
it). With `config.ema_warmup` (the default) the decay warms up as timm's
`ModelEmaV3(use_warmup=True, warmup_gamma=1)` does it: at the update after
t earlier steps, decay_t = min(ema_decay, 1 - (1 + t) ** -ema_warmup_power),
so the first update copies the weights and the initial ones are forgotten
early (a plain 0.999 would still hold 0.999^936 = 39% of them after two
short epochs). timm's step counter is the optimizer steps done, t + 1, and it
subtracts one. The default power is timm's, 2/3 (timm suggests 3/4 for runs
of ~100k steps); on a two-epoch Fashion-MNIST run 3/4 left the average 1.1
points behind the raw weights and 2/3 0.4 (docs/benchmarks.md). The average
is saved as `state["ema"]` in each checkpoint and restored with the rest, so a resumed run continues the same average. Evaluation, `--mode=eval`,
predict, export and fine-tuning then use these weights.

Checkpoints of runs without EMA hold no `ema` item, as before EMA existed;
such a checkpoint resumes a run with EMA on by starting the average at the
restored weights, and an EMA checkpoint resumed with ema_decay=0 drops it.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import serialization

WEIGHTS = ("params", "batch_stats")


def init(params: Any, batch_stats: Any) -> dict:
  """The average before the first step: a copy of the weights."""
  # A copy, not the same buffers: the state is donated to the step, and one buffer
  # held twice in it cannot be.
  return jax.tree.map(lambda x: x.copy(), {"params": params, "batch_stats": batch_stats})


def decay_at(step: jax.Array | int, decay: float, warmup_power: float | None) -> jax.Array:
  """The decay of the update after `step` earlier steps: timm ModelEmaV3's warm-up, or flat.

  warmup_power None: no warm-up, `decay` at every step.
  """
  if warmup_power is None:
    return jnp.asarray(decay, jnp.float32)
  warm = 1.0 - (1.0 + jnp.asarray(step, jnp.float32)) ** -warmup_power
  return jnp.minimum(jnp.float32(decay), warm)


def update(ema: Mapping[str, Any], params: Any, batch_stats: Any,
           decay: float | jax.Array) -> dict:
  """ema <- decay * ema + (1 - decay) * weights, leaf by leaf."""
  # optax.ema would average the optimizer's updates; incremental_update averages the weights.
  return optax.incremental_update({"params": params, "batch_stats": batch_stats}, dict(ema),
                                  step_size=1.0 - decay)


def preferred(variables: Mapping[str, Any]) -> tuple[dict, str]:
  """The weights to evaluate, predict with or fine-tune from, and which ("ema" or "raw")."""
  ema = variables.get("ema")
  if ema:
    return {"params": ema["params"],
            "batch_stats": ema.get("batch_stats", variables.get("batch_stats", {}))}, "ema"
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}, "raw"


def for_eval(state: Any) -> tuple[Any, str]:
  """The train state with its EMA weights in place of the raw ones (when it has them), and which."""
  if state.ema is None:
    return state, "raw"
  weights, name = preferred({"params": state.params, "batch_stats": state.batch_stats,
                             "ema": state.ema})
  return state.replace(**weights), name


def _data_fields(state: Any) -> list[str]:
  return [f.name for f in dataclasses.fields(state) if f.metadata.get("pytree_node", True)]


def state_to_dict(state: Any) -> dict:
  """The train state as saved: every data field, `ema` only when the run keeps one."""
  saved = {name: serialization.to_state_dict(getattr(state, name)) for name in _data_fields(state)}
  if saved.get("ema") is None:
    saved.pop("ema", None)
  return saved


def state_from_dict(state: Any, saved: Mapping[str, Any]) -> Any:
  """`state` with the saved values; an `ema` absent on one side is started or dropped."""
  saved = dict(saved)
  saved_ema = saved.pop("ema", None)
  names = [name for name in _data_fields(state) if name != "ema"]
  missing = [name for name in names if name not in saved]
  if missing or set(saved) - set(names):
    raise ValueError(f"the saved train state has fields {sorted(saved)}, expected {names}")
  updates = {name: serialization.from_state_dict(getattr(state, name), saved[name], name=name)
             for name in names}
  if state.ema is None:
    if saved_ema is not None:
      logging.info("ema_decay is 0: the checkpoint's EMA weights are not carried on")
    return state.replace(**updates, ema=None)
  if saved_ema is None:
    logging.warning("the checkpoint holds no EMA weights (saved with ema_decay=0): the average "
                    "starts from its weights at step %s", int(jax.device_get(updates["step"])))
    return state.replace(**updates, ema=init(updates["params"], updates["batch_stats"]))
  ema = serialization.from_state_dict(state.ema, saved_ema, name="ema")
  return state.replace(**updates, ema=ema)
