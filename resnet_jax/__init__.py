"""ResNets in JAX/Flax: train, evaluate, fine-tune, and move weights to and from PyTorch.

What a notebook or script needs, importable from the package root:

  import resnet_jax
  predictor = resnet_jax.load_predictor("runs/resnet18")        # a workdir or step folder
  probabilities = resnet_jax.predict(predictor, images_BHWC)     # uint8 arrays
  loaded = resnet_jax.load_model("runs/resnet18")                # network, weights, config
  logits = loaded.model.apply(loaded.variables, images_BHWC_float, train=False)
  state_dict, arch = resnet_jax.to_torch_state_dict(variables, config)
  workdir = resnet_jax.pretrained_checkpoint("torchvision:resnet50")  # Downloaded, converted once.
  backbone = resnet_jax.load_backbone(workdir)                   # Stage outputs, strides 4-32.

The names load lazily, so `import resnet_jax` costs nothing until one is used
(Grain's worker processes import `resnet_jax.data` without JAX).
"""

import importlib

_PUBLIC = {
    # Models
    "MODELS": "resnet_jax.models.resnet",
    "create_model": "resnet_jax.models.resnet",
    # Configs
    "get_config": "resnet_jax.config.default_config",
    "validate_config": ("resnet_jax.config.configuration", "validate"),
    "config_from_json": ("resnet_jax.config.configuration", "from_json"),
    # Checkpoints
    "load_model": "resnet_jax.checkpoints.restore",
    "load_variables": "resnet_jax.checkpoints.restore",
    # Training and evaluation
    "train_and_evaluate": "resnet_jax.train.trainer",
    "evaluate_workdir": "resnet_jax.evaluation.evaluator",
    # Prediction
    "Predictor": "resnet_jax.evaluation.prediction",
    "load_predictor": "resnet_jax.evaluation.prediction",
    "predict": "resnet_jax.evaluation.prediction",
    "classify_files": "resnet_jax.evaluation.prediction",
    # PyTorch weights
    "load_torch_file": "resnet_jax.interop.convert",
    "from_torch_state_dict": "resnet_jax.interop.convert",
    "to_torch_state_dict": "resnet_jax.interop.export",
    "pretrained_checkpoint": ("resnet_jax.interop.hub", "resolve"),
    # Backbone features and explanations
    "load_backbone": "resnet_jax.evaluation.features",
    "stage_features": "resnet_jax.evaluation.features",
    "grad_cam": "resnet_jax.evaluation.explain",
    # Errors
    "UserError": "resnet_jax.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
  target = _PUBLIC.get(name)
  if target is None:
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
  module, attribute = target if isinstance(target, tuple) else (target, name)
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
