"""Exact evaluation: one evaluator for the training loop and `--mode=eval`.

Every example of the eval split counts once: the split is padded to whole
batches with a mask, correct predictions and losses are summed on device,
and the host divides once.
"""

import os
from collections.abc import Collection, Mapping
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from resnet_jax.checkpoints import checkpointing, restore, workdir as workdirs
from resnet_jax.config import configuration, default_config
from resnet_jax.data import pipeline, memory
from resnet_jax.models import ema
from resnet_jax.errors import UserError
from resnet_jax.models import build
from resnet_jax.evaluation import eval_steps, scores
from resnet_jax import sharding

# Fields an eval run may take from the command line; the rest come from the run.
DATA_FIELDS = ("data_dir", "manual_dir", "eval_split", "eval_batch_size", "eval_tta")
# How pictures are framed and read: taken where the command line differs from the defaults
# (all of them for converted weights, which hold no training recipe), so that e.g.
# --config.image_size=224 --config.eval_crop_fraction=0.875 is the standard ImageNet eval.
PREPROCESSING_FIELDS = ("train_crop", "eval_crop_fraction", "image_size", "input_pipeline",
                        "data_workers")
# The figures of an eval that are one number each: a training run logs these to metrics.jsonl.
SCALAR_METRICS = ("eval_loss", "eval_accuracy", "eval_top5_accuracy", "eval_count",
                  "eval_accuracy_raw", "eval_loss_raw", "eval_macro_f1", "eval_weighted_f1",
                  "eval_balanced_accuracy", "eval_ece", "eval_map")
# Taken from the command line like PREPROCESSING_FIELDS: how a multi-label run's scores are read.
SCORING_FIELDS = ("multi_label_threshold",)


class Evaluator:
  """Evaluates any state of the model the config describes: `run(state)` -> metrics.

  In memory the eval split is padded, placed on every device and its whole
  pass compiled into one program, once; streamed, padded batches come from
  the host pipeline and one compiled program adds up each batch's sums.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, split: Any,
               workers: Any = None):
    """`workers`: for a streamed split, worker processes to read it with on every pass
    (the training stream's, before they start); otherwise each pass starts its own."""
    self.config, self.mesh = config, mesh
    self.data, self.source = None, None  # The split on device (memory), or its source (stream).
    if isinstance(split, memory.Split):
      images, labels, mask = memory.pad_for_eval(split, config.eval_batch_size)
      self.data = {name: sharding.put_replicated(array, mesh)
                   for name, array in (("image", images), ("label", labels), ("mask", mask))}
      self._evaluate = eval_steps.compile_evaluate(config, mesh)
    else:
      self.source = split
      self._passes = pipeline.StreamEvalInput(config, split, mesh, pool=workers)
      self._accumulate = eval_steps.compile_eval_batch(config, mesh)

  def run(self, state: build.TrainState) -> dict[str, Any]:
    """Metrics of the state's EMA weights where it keeps them, else of its raw weights.

    `eval_weights` ("ema" or "raw") and `eval_tta` say what was measured.
    With EMA, `eval_accuracy_raw` and `eval_loss_raw` give the raw weights'
    figures beside them, so that an average lagging behind training shows.
    """
    evaluated, weights = ema.for_eval(state)
    described = {"eval_weights": weights, "eval_tta": self.config.eval_tta}
    metrics = {**self._metrics(evaluated), **described}
    if weights == "ema":
      raw = self._metrics(state)
      metrics.update(eval_accuracy_raw=raw["eval_accuracy"], eval_loss_raw=raw["eval_loss"])
    return metrics

  def _metrics(self, state: build.TrainState) -> dict[str, Any]:
    """Metrics of the state's own params and batch_stats."""
    threshold = self.config.get("multi_label_threshold", 0.5)
    if self.data is not None:
      return summarize(jax.device_get(self._evaluate(state, self.data)), threshold)
    rows = (self._passes.stream.num_batches * self.config.eval_batch_size
            if self.config.get("multi_label", False) else 0)
    totals = jax.device_put(eval_steps.zero_eval_totals(self.config.num_classes, rows),
                            sharding.replicated(self.mesh))
    for batch in self._passes():
      totals = self._accumulate(state, batch, totals)
    return summarize(jax.device_get(totals), threshold)


def summarize(totals: Mapping[str, Any], threshold: float = 0.5) -> dict[str, Any]:
  """Host-side: fractions, per-class scores and calibration from the summed eval metrics.

  Multi-label totals (with per-example "scores") give mAP, per-class AP and
  the figures at `threshold` instead (scores.multi_label_scores); no
  confusion matrix, top-5 accuracy or calibration error.
  """
  import numpy as np
  count = float(totals["count"])
  if "scores" in totals:
    real = np.asarray(totals["mask"]) > 0
    return {"eval_loss": float(totals["loss_sum"]) / count, "eval_count": int(count),
            "multi_label_threshold": float(threshold),
            **scores.multi_label_scores(np.asarray(totals["labels"])[real],
                                        np.asarray(totals["scores"])[real], threshold)}
  confusion = np.asarray(totals["confusion"])
  per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
  result = {"eval_loss": float(totals["loss_sum"]) / count,
            "eval_accuracy": float(totals["correct"]) / count, "eval_count": int(count),
            "per_class_accuracy": per_class.tolist(),
            **scores.class_scores(confusion),
            "confusion_matrix": confusion.astype(int).tolist(),
            **scores.calibration(totals["bin_count"], totals["bin_confidence"],
                                 totals["bin_correct"])}
  if "correct_top5" in totals:
    result["eval_top5_accuracy"] = float(totals["correct_top5"]) / count
  return result


def eval_config(workdir: str, checkpoint_config: Mapping[str, Any],
                requested: ml_collections.ConfigDict | None,
                overridden: Collection[str] = ()) -> ml_collections.ConfigDict:
  """The run's config (config.json, else the checkpoint's own), with data fields from the command line.

  Normalisation, classes and image shape always come from the run: the
  weights were trained with them. A data or preprocessing field is taken from
  `requested` where it differs from the default or is named in `overridden`
  (the fields set on the command line), so it can be set back to its default
  and a config file's untouched defaults (eval_split "test") do not replace
  the run's own (eval_split "holdout:0.1"). Converted weights, which hold no
  data fields, take every one that is set.
  """
  saved = configuration.read_saved(workdir) or dict(checkpoint_config)
  if not saved:
    raise UserError(f"{workdir} has no config.json and its checkpoint holds no config: pass "
                    "the workdir of a run written by resnet_jax")
  converted = saved.get("dataset") == "converted"  # Weights from resnet_jax.interop.convert.
  if requested is not None and not converted:
    configuration.check_same_architecture(saved, requested, workdir)
  config = configuration.from_json(saved)
  if requested is not None:
    defaults, saved_size = default_config.get_config(), config.image_size
    for field in DATA_FIELDS + (("dataset",) if converted else ()):
      if requested[field] and (converted or field in overridden
                               or requested[field] != defaults[field]):
        config[field] = requested[field]
    for field in PREPROCESSING_FIELDS + SCORING_FIELDS:
      if converted or field in overridden or requested[field] != defaults[field]:
        config[field] = requested[field]
    if config.image_size and config.image_size != saved_size and config.get("input_shape"):
      # Pictures are framed at the side the model is now asked to see.
      config.input_shape = (config.image_size, config.image_size, config.input_shape[-1])
  if config.eval_tta not in configuration.TTA_MODES:
    raise UserError(f"unknown eval_tta {config.eval_tta!r}: use "
                    f"{', '.join(map(repr, configuration.TTA_MODES))}")
  if converted and requested is None:
    raise UserError(f"{workdir} holds converted weights without a dataset: pass "
                    "--config=configs/<name>.py (or --config.dataset) naming the data to evaluate on")
  return config


def evaluate_workdir(workdir: str, requested: ml_collections.ConfigDict | None = None,
                     overridden: Collection[str] = ()) -> dict:
  """Restores the best checkpoint (latest where none is marked), evaluates, writes eval.json.

  `overridden`: the config fields set on the command line (see `eval_config`).
  """
  workdir = os.path.abspath(workdir)
  directory = checkpointing.checkpoint_dir(workdir)
  if os.path.isfile(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a folder: pass the workdir of a "
                    "training run")
  if not os.path.isdir(directory):
    raise UserError(f"{workdir} has no checkpoints: train first (same command without "
                    "--mode=eval), or pass the workdir of a trained run")
  loaded = restore.load_model(workdir, action="evaluating")
  config = eval_config(workdir, loaded.restored.config, requested, overridden)
  split = pipeline.open_eval_split(config)
  class_names, input_shape = config.get("class_names") or split.class_names, config.input_shape
  if config.get("mean"):
    mean, std = config.mean, config.std
  else:  # Saved by an older trainer: the split's own statistics.
    logging.warning("%s saved no normalisation: using the eval split's own", workdir)
    mean, std = (memory.channel_stats(split.images) if isinstance(split, memory.Split)
                 else pipeline.estimate_stats(split, input_shape[0]))
  config = configuration.resolve(config, {
      "num_classes": config.num_classes or len(class_names), "class_names": class_names,
      "mean": mean, "std": std, "input_shape": input_shape,
      "num_train_examples": config.get("num_train_examples", 0)})
  mesh = sharding.create_mesh()
  place = lambda tree: jax.device_put(tree, sharding.replicated(mesh))
  raw = loaded.restored.variables  # Raw and EMA weights both: the evaluator reports each.
  state = build.TrainState.create(apply_fn=loaded.model.apply, tx=optax.identity(),
                                  params=place(raw["params"]),
                                  batch_stats=place(raw["batch_stats"]),
                                  ema=place(raw.get("ema")))
  metrics = Evaluator(config, mesh, split).run(state)
  result = {"step": loaded.step, "checkpoint": os.path.join(directory, str(loaded.step)),
            "eval_split": config.eval_split, **metrics, "class_names": list(config.class_names)}
  if jax.process_index() == 0:
    workdirs.write_json(os.path.join(workdir, "eval.json"), result)
    print(format_eval(result))
  return result


def describe_weights(metrics: Mapping[str, Any]) -> str:
  """The note after an accuracy, such as " (EMA weights, flip TTA; raw weights 88.10%)"."""
  parts = ["EMA weights"] if metrics.get("eval_weights") == "ema" else []
  if metrics.get("eval_tta", "none") != "none":
    parts.append(f"{metrics['eval_tta']} TTA")
  note = ", ".join(parts)
  if metrics.get("eval_accuracy_raw") is not None:
    note += f"; raw weights {100 * metrics['eval_accuracy_raw']:.2f}%"
  return f" ({note})" if note else ""


def format_eval(result: dict) -> str:
  """The `--mode=eval` printout: a header line of figures, then one row per class."""
  if "eval_map" in result:
    return _format_multi_label(result)
  names = result["class_names"] or [str(i) for i in range(len(result["per_class_accuracy"]))]
  lines = [f"checkpoint {result['checkpoint']} (step {result['step']}) on {result['eval_split']}: "
           f"accuracy {100 * result['eval_accuracy']:.2f}% over {result['eval_count']} examples, "
           f"loss {result['eval_loss']:.4f}, macro F1 {100 * result['eval_macro_f1']:.2f}%, "
           f"balanced accuracy {100 * result['eval_balanced_accuracy']:.2f}%, "
           f"ECE {100 * result['eval_ece']:.2f}%{describe_weights(result)}"]
  width = max(len(n) for n in names + ["class"])
  lines.append(f"  {'class':<{width}}  precision   recall       F1  support")
  rows = zip(names, result["per_class_precision"], result["per_class_recall"],
             result["per_class_f1"], result["per_class_support"])
  lines += [f"  {name:<{width}}  {100 * precision:8.2f}%  {100 * recall:6.2f}%  {100 * f1:6.2f}%"
            f"  {support:7d}" for name, precision, recall, f1, support in rows]
  return "\n".join(lines)


def _format_multi_label(result: dict) -> str:
  """`format_eval` of a multi-label run: mAP and exact match, then AP and the rest per class."""
  names = result["class_names"] or [str(i) for i in range(len(result["per_class_ap"]))]
  lines = [f"checkpoint {result['checkpoint']} (step {result['step']}) on {result['eval_split']}: "
           f"mAP {100 * result['eval_map']:.2f}% over {result['eval_count']} examples, "
           f"exact-match accuracy {100 * result['eval_accuracy']:.2f}%, loss "
           f"{result['eval_loss']:.4f}, macro F1 {100 * result['eval_macro_f1']:.2f}% (classes "
           f"above {result['multi_label_threshold']:g}){describe_weights(result)}"]
  width = max(len(n) for n in names + ["class"])
  lines.append(f"  {'class':<{width}}       AP  precision   recall       F1  support")
  rows = zip(names, result["per_class_ap"], result["per_class_precision"],
             result["per_class_recall"], result["per_class_f1"], result["per_class_support"])
  lines += [f"  {name:<{width}}  " + (f"{100 * ap:6.2f}%" if ap is not None else "      -")
            + f"  {100 * precision:8.2f}%  {100 * recall:6.2f}%  {100 * f1:6.2f}%  {support:7d}"
            for name, ap, precision, recall, f1, support in rows]
  return "\n".join(lines)
