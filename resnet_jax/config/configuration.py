"""Checks a config before anything is loaded or written, and compares saved ones."""

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from resnet_jax.models import build, resnet, zoo
from resnet_jax.errors import UserError

# Fields that fix the shape of the parameters or the meaning of the data: a
# resumed run must match its checkpoints in each.
ARCHITECTURE_FIELDS = ("model", "stem", "width", "dataset")
TUPLE_FIELDS = ("mean", "std", "crop_scale", "input_shape", "target_accuracies")
TTA_MODES = ("none", "flip", "flip_translate")
HOLDOUT_PREFIX = "holdout:"  # eval_split="holdout:0.1": data/holdout.py carves it.
CSV_COLUMN_FIELDS = ("csv_file_column", "csv_label_column", "csv_split_column")
CLASS_BALANCES = ("none", "loss", "sample")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for any field a run cannot start with."""
  if config.model not in resnet.MODELS:
    raise UserError(f"unknown model {config.model!r}: set --config.model to one of "
                    f"{', '.join(resnet.MODELS)}")
  if config.stem not in resnet.STEMS:
    raise UserError(f"unknown stem {config.stem!r}: set --config.stem to 'cifar' or 'imagenet'")
  if config.get("conv_init", "torchvision") not in build.CONV_INITS:
    raise UserError(f"unknown conv_init {config.conv_init!r}: set --config.conv_init to "
                    f"{' or '.join(map(repr, build.CONV_INITS))}")
  if config.width <= 0:
    raise UserError(f"width must be positive, got {config.width}: set --config.width=64")
  if config.batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {config.batch_size}: set "
                    "--config.batch_size to a multiple of the device count, such as 128")
  devices = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if value and value % devices:
      raise UserError(f"{name} {value} is not divisible by the {devices} devices: use a "
                      f"multiple of {devices}, such as {max(devices, value // devices * devices)}")
  if config.eval_batch_size < 0:
    raise UserError(f"eval_batch_size must be positive (or 0 for batch_size), got {config.eval_batch_size}")
  if config.num_epochs < 0:
    raise UserError(f"num_epochs must not be negative, got {config.num_epochs}: set "
                    "--config.num_epochs above 0 (or --config.num_train_steps instead)")
  if config.num_train_steps < 0:
    raise UserError(f"num_train_steps must not be negative, got {config.num_train_steps}: set "
                    "it above 0, or to 0 to train for --config.num_epochs")
  if config.num_epochs == 0 and config.num_train_steps == 0:
    raise UserError("num_epochs and num_train_steps are both 0: set one of them above 0")
  for name in ("checkpoint_every_epochs", "eval_every_epochs"):
    if config[name] <= 0:
      raise UserError(f"{name} must be positive, got {config[name]}")
  if config.log_every_steps <= 0:
    raise UserError(f"log_every_steps must be positive, got {config.log_every_steps}")
  if (not isinstance(config.profile_steps, int) or isinstance(config.profile_steps, bool)
      or config.profile_steps < 0):
    raise UserError(f"profile_steps must be a non-negative integer, got "
                    f"{config.profile_steps!r}: set --config.profile_steps=0 (off) or, say, 5")
  if config.learning_rate < 0 or config.weight_decay < 0:
    raise UserError("learning_rate and weight_decay must not be negative")
  if config.lr_schedule not in ("cosine", "linear", "constant"):
    raise UserError(f"unknown lr_schedule {config.lr_schedule!r}: use 'cosine', 'linear' or "
                    "'constant'")
  _validate_recipe(config, devices)
  if not 0 <= config.label_smoothing < 1 or not 0 <= config.dropout_rate < 1:
    raise UserError("label_smoothing and dropout_rate must lie in [0, 1)")
  if len(config.mean) != len(config.std):
    raise UserError("config.mean and config.std need the same number of values")
  if any(s <= 0 for s in config.std):
    raise UserError("config.std values must be positive")
  if config.image_size < 0 or 0 < config.image_size < 8:
    raise UserError(f"image_size must be 0 (the data's own size) or at least 8 pixels, got "
                    f"{config.image_size}: set --config.image_size=0 or, say, 32")
  if config.crop_padding < 0:
    raise UserError(f"crop_padding must not be negative, got {config.crop_padding}: set "
                    "--config.crop_padding=4, or 0 to disable the random crop")
  if config.input_pipeline not in ("auto", "memory", "stream"):
    raise UserError(f"unknown input_pipeline {config.input_pipeline!r}: use 'auto', 'memory' "
                    "or 'stream'")
  _validate_csv_columns(config)
  _validate_distillation(config)
  _validate_labels(config)
  if config.train_crop not in ("pad", "random_resized"):
    raise UserError(f"unknown train_crop {config.train_crop!r}: use 'pad' or 'random_resized'")
  low, high = (tuple(config.crop_scale) + (0, 0))[:2]
  if len(config.crop_scale) != 2 or not 0 < low <= high <= 1:
    raise UserError(f"crop_scale {tuple(config.crop_scale)} is not a range inside (0, 1]: set "
                    "--config.crop_scale='(0.08, 1.0)'")
  if not 0 <= config.eval_crop_fraction <= 1:
    raise UserError(f"eval_crop_fraction must lie in (0, 1], or be 0 for the default; got "
                    f"{config.eval_crop_fraction}")
  if config.data_workers < 0:
    raise UserError(f"data_workers must not be negative, got {config.data_workers}: set "
                    "--config.data_workers=0 (in-process) or the number of decoding processes")
  most_workers = max(8, 4 * (os.cpu_count() or 1))  # Each is a process with its own memory.
  if config.data_workers > most_workers:
    raise UserError(f"data_workers is {config.data_workers}, more decoding processes than the "
                    f"{os.cpu_count()} cores of this host can use: set --config.data_workers to "
                    f"at most {most_workers} (about one per core is plenty)")
  if (config.init_checkpoint and not zoo.is_pretrained_name(config.init_checkpoint)
      and not os.path.exists(config.init_checkpoint)):
    raise UserError(f"init_checkpoint {config.init_checkpoint} does not exist: pass a workdir, "
                    "a checkpoint folder written by resnet_jax, or published weights such as "
                    "torchvision:resnet50 or hf-hub:timm/resnet50.a1_in1k")


def _validate_csv_columns(config: ml_collections.ConfigDict) -> None:
  """The column names of a csv: dataset (split strings, holdouts included, are data/'s to check)."""
  names = [config[field] for field in CSV_COLUMN_FIELDS]
  for field, name in zip(CSV_COLUMN_FIELDS, names):
    if not name.strip():
      raise UserError(f"{field} is empty: set --config.{field} to a column name of the CSV's "
                      "header row")
  if len(set(names)) < len(names):
    raise UserError(f"csv_file_column, csv_label_column and csv_split_column must name "
                    f"different columns, got {', '.join(map(repr, names))}")


def _validate_distillation(config: ml_collections.ConfigDict) -> None:
  """The teacher's path (its classes and channels are checked once the data is known)."""
  if not (isinstance(config.distill_alpha, (int, float)) and 0 <= config.distill_alpha <= 1):
    raise UserError(f"distill_alpha must lie in [0, 1], got {config.distill_alpha}: set "
                    "--config.distill_alpha=0.9 (the weight of the distillation term; the "
                    "label loss gets 1 - alpha)")
  if not (isinstance(config.distill_temperature, (int, float))
          and 0 < config.distill_temperature < float("inf")):
    raise UserError(f"distill_temperature must be positive, got {config.distill_temperature}: "
                    "set --config.distill_temperature=4")
  teacher = config.teacher
  if teacher and not zoo.is_pretrained_name(teacher) and not os.path.exists(teacher):
    raise UserError(f"teacher {teacher} does not exist: pass the workdir or checkpoint of a "
                    "trained run on the same classes, or published weights fine-tuned to them")


def _validate_labels(config: ml_collections.ConfigDict) -> None:
  """The class balance and the multi-label fields (the CSV's own cells are data/'s to check)."""
  balance = config.get("class_balance", "none")
  if balance not in CLASS_BALANCES:
    raise UserError(f"unknown class_balance {balance!r}: use 'none', 'loss' (inverse-frequency "
                    "loss weights) or 'sample' (classes drawn equally)")
  threshold = config.get("multi_label_threshold", 0.5)
  if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
    raise UserError(f"multi_label_threshold must lie in (0, 1), got {threshold!r}: set "
                    "--config.multi_label_threshold=0.5")
  separator, columns = config.get("csv_label_separator", ""), config.get("csv_label_columns", "")
  if not (separator or columns):
    return
  if separator and columns:
    raise UserError("csv_label_separator and csv_label_columns are both set: a multi-label CSV "
                    "names its classes either in one label cell (separator) or in 0/1 columns; "
                    "set one of them to ''")
  field = "csv_label_separator" if separator else "csv_label_columns"
  if not config.dataset.startswith("csv:"):
    raise UserError(f"{field} is set but {config.dataset} is not a CSV: multi-label data comes "
                    f"from --config.dataset=csv:PATH; set --config.{field}=''")
  if balance != "none":
    raise UserError(f"class_balance={balance!r} is for single-label data, and {field} makes "
                    "this CSV multi-label: set --config.class_balance=none")
  if config.get("teacher"):
    raise UserError(f"distillation matches a teacher's softmax over exclusive classes, and "
                    f"{field} makes this CSV multi-label: set --config.teacher=''")


def _validate_recipe(config: ml_collections.ConfigDict, devices: int) -> None:
  """The regularisation, averaging, accumulation and timing fields."""
  if config.cutout_size < 0:
    raise UserError(f"cutout_size must not be negative, got {config.cutout_size}: set "
                    "--config.cutout_size=0 (off) or a side in pixels, such as 12")
  for name in ("mixup_alpha", "cutmix_alpha"):
    if config[name] < 0:
      raise UserError(f"{name} must not be negative, got {config[name]}: set --config.{name}=0 "
                      "(off) or a Beta parameter such as 0.2 (mixup) or 1.0 (CutMix)")
  if not 0 <= config.ema_decay < 1:
    raise UserError(f"ema_decay must lie in [0, 1), got {config.ema_decay}: set "
                    "--config.ema_decay=0 (off) or a decay per step such as 0.999")
  if not isinstance(config.ema_warmup, bool):
    raise UserError(f"ema_warmup must be True or False, got {config.ema_warmup!r}")
  if not config.ema_warmup_power > 0:
    raise UserError(f"ema_warmup_power must be positive, got {config.ema_warmup_power}: set "
                    "--config.ema_warmup_power=0.75 (timm's value for short runs)")
  if config.eval_tta not in TTA_MODES:
    raise UserError(f"unknown eval_tta {config.eval_tta!r}: use {', '.join(map(repr, TTA_MODES))}")
  accum = config.grad_accum_steps
  if accum < 1:
    raise UserError(f"grad_accum_steps must be at least 1, got {accum}: set "
                    "--config.grad_accum_steps=1 (no accumulation) or more")
  if config.batch_size % (accum * devices):
    raise UserError(f"batch_size {config.batch_size} does not split into {accum} micro-batches "
                    f"over {devices} device(s): use a multiple of {accum * devices}, such as "
                    f"{max(1, config.batch_size // (accum * devices)) * accum * devices}")
  if not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in config.target_accuracies):
    raise UserError(f"target_accuracies {tuple(config.target_accuracies)} must be fractions in "
                    "(0, 1]: set --config.target_accuracies='(0.94, 0.96)'")


def check_against_data(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for fields that do not fit the resolved data (image size)."""
  side = min(config.image_size or config.input_shape[0], config.image_size or config.input_shape[1])
  if config.cutout_size > side:
    raise UserError(f"cutout_size {config.cutout_size} exceeds the {side}-pixel images the "
                    f"model sees: set --config.cutout_size to at most {side}")


def resolve(config: ml_collections.ConfigDict, facts: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config with what the data decided filled in, once; what gets saved and read downstream.

  `facts`: num_classes, class_names, mean, std, input_shape (H, W, C of
  the examples as stored or streamed), num_train_examples and the
  input_pipeline used ("memory" or "stream"); where the labels were read,
  multi_label (multi-hot labels) and train_class_counts (examples, or a
  multi-label class's positives, per class).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.num_classes = int(facts["num_classes"])
    config.class_names = list(facts["class_names"])
    config.mean, config.std = tuple(facts["mean"]), tuple(facts["std"])
    config.input_shape = tuple(int(d) for d in facts["input_shape"])
    config.num_train_examples = int(facts.get("num_train_examples", 0))
    config.input_pipeline = facts.get("input_pipeline", config.get("input_pipeline", "memory"))
    config.eval_batch_size = config.eval_batch_size or config.batch_size
    # Label facts: absent from an eval run's facts, where the saved config holds them.
    config.multi_label = bool(facts.get("multi_label", config.get("multi_label", False)))
    counts = facts.get("train_class_counts", config.get("train_class_counts"))
    if counts is not None:
      config.train_class_counts = [int(n) for n in counts]
  return config


def read_saved(workdir: str) -> dict | None:
  """The resolved config a previous run wrote into workdir, if any."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} cannot be read ({e}): restore it, or start a fresh run "
                    "with another --workdir")


def check_same_architecture(saved: Mapping, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints belong to another network or dataset."""
  differ = [f"{k}: saved {saved.get(k)!r}, requested {config[k]!r}"
            for k in ARCHITECTURE_FIELDS if k in saved and saved.get(k) != config[k]]
  if differ:
    raise UserError(f"workdir {workdir} holds a run with other settings ({'; '.join(differ)}): "
                    "resume it with its own settings, or pass a new --workdir for a fresh run")


def check_same_holdout(saved: Mapping, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume with another held-out split: the run would train on pictures it held out."""
  splits = ("train_split", "eval_split")
  if not any(str(values.get("eval_split", "")).startswith(HOLDOUT_PREFIX)
             for values in (saved, config)):
    return
  differ = [f"{k}: saved {saved.get(k)!r}, requested {config[k]!r}"
            for k in splits if k in saved and saved.get(k) != config[k]]
  if differ:
    raise UserError(f"workdir {workdir} holds a run with another held-out split "
                    f"({'; '.join(differ)}): resuming would train on pictures held out before; "
                    "resume it with its own splits, or pass a new --workdir for a fresh run")


def to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def from_json(values: Mapping) -> ml_collections.ConfigDict:
  """A ConfigDict from a saved config.json, on top of today's defaults."""
  from resnet_jax.config import default_config
  config = default_config.get_config()
  with config.unlocked():
    for key, value in values.items():
      config[key] = tuple(value) if isinstance(value, list) and key in TUPLE_FIELDS else value
  return config
