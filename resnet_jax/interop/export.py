r"""A resnet_jax checkpoint to a PyTorch `state_dict` in torchvision's layout: convert's inverse.

  python -m resnet_jax.export --workdir=runs/resnet18 --output=resnet18.safetensors
  python -m resnet_jax.export --checkpoint=runs/resnet18/checkpoints/3900 --output=resnet18.pth

Names and layouts map back as `resnet_jax.convert` describes (HWIO kernels to
OIHW, `fc`'s kernel transposed, BN `scale` to `weight`, `mean`/`var` to
`running_mean`/`running_var`), in torchvision's order. Each BatchNorm also gets
torchvision's `num_batches_tracked` (int64, 0-dim), written as 0: resnet_jax
does not count batches, and PyTorch reads the count only for BN momentum=None.
When the checkpoint holds EMA weights (`state['ema']`), those are written.

An ImageNet-stem model of width 64 loads with `strict=True` into
`torchvision.models.resnetNN(num_classes=N)`; the CIFAR stem needs conv1 and
maxpool replaced first, which the printed snippet does. `.safetensors` needs
no PyTorch, `.pth` does.
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from resnet_jax.interop import artifacts, convert
from resnet_jax.models import resnet
from resnet_jax.checkpoints.restore import load_model
from resnet_jax.errors import UserError

SAFETENSORS, PTH = ".safetensors", ".pth"
OUTPUT_EXTENSIONS = (SAFETENSORS, PTH, ".pt")
TORCHVISION_WIDTH = 64  # torchvision's ResNets have no width argument.
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                      "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                      "wide_resnet50_2", "wide_resnet101_2")
TIMM_MODELS = ("resnet50d", "seresnet50")  # timm.create_model(name) builds these.
# torchvision's (and timm's) order of modules within the network or a block, and of leaves.
_MODULE_RANK = {"stem_conv1": -5, "stem_bn1": -4, "stem_conv2": -3, "stem_bn2": -2,
                "stem_conv3": -1, "conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "conv3": 4, "bn3": 5,
                "se": 6, "downsample_conv": 7, "downsample_bn": 8, "downsample_pooled_conv": 7,
                "downsample_pooled_bn": 8, "fc": 10, "fc1": 0, "fc2": 1}
_LEAF_RANK = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}


# The state_dict ----------------------------------------------------------------


def _order(path: tuple[str, ...]) -> tuple:
  """Sorts Flax paths into torchvision's order: conv1, bn1, layer1.0 ... layerN.M, fc."""
  _, top, *modules, leaf = path
  within = tuple(_MODULE_RANK.get(m, 9) for m in modules)  # SE's fc1 before fc2.
  if top.startswith("layer"):  # layer{stage}_{block}
    stage, block = top[len("layer"):].split("_")
    return (1, int(stage), int(block), *within), _LEAF_RANK[leaf]
  return (2 if top == "fc" else 0, _MODULE_RANK.get(top, 9)), _LEAF_RANK[leaf]


def to_torch_state_dict(variables: Mapping[str, Any], config: Mapping[str, Any],
                        source: str = "the checkpoint") -> tuple[dict[str, np.ndarray],
                                                                  convert.Architecture]:
  """Converts {'params', 'batch_stats'} to a torchvision-layout state_dict of numpy arrays.

  Args:
    variables: as `restore.load_variables` returns them.
    config: the checkpoint's saved config; its model, stem, width and
      num_classes are checked against the weights (and read off them when absent).
    source: the checkpoint's path, for error messages.

  Returns:
    The state_dict (float32 arrays, int64 0-dim `num_batches_tracked`) in
    torchvision's order, and the architecture.
  """
  flat = traverse_util.flatten_dict({k: _plain(variables[k]) for k in ("params", "batch_stats")})
  known = sorted((path for path in flat if path[-1] in _LEAF_RANK and len(path) > 2), key=_order)
  state_dict = {convert.torch_key(path): np.ascontiguousarray(
      convert.to_torch_layout(path, np.asarray(flat[path], np.float32))) for path in known}
  try:
    # A deep stem does not show its stride in the weights: the config says which it is.
    arch = convert.resolve_architecture(state_dict, stem=config.get("stem") or None)
  except UserError as e:
    raise UserError(f"{source} holds no ResNet that resnet_jax knows ({e})") from None
  for name in ("model", "stem", "width", "num_classes"):
    if config.get(name) and config[name] != getattr(arch, name):  # 0 or None: not saved.
      raise UserError(f"{source}: its config says {name}={config[name]!r} but its weights hold "
                      f"{name}={getattr(arch, name)!r}; export a checkpoint as resnet_jax wrote it")
  expected = {path: tuple(spec.shape) for path, spec in convert.expected_shapes(arch).items()}
  found = {path: tuple(np.shape(value)) for path, value in flat.items()}
  if found != expected:
    wrong = sorted("/".join(p) for p in found.keys() ^ expected.keys()) or sorted(
        "/".join(p) for p in found if found[p] != expected[p])
    raise UserError(f"{source} does not hold a whole {arch.model} (stem={arch.stem}, "
                    f"width={arch.width}): {', '.join(wrong[:5])} differ from it; export a "
                    "checkpoint as resnet_jax wrote it")
  with_counters = {}
  for key, value in state_dict.items():
    with_counters[key] = value
    if key.endswith(".running_var"):
      with_counters[key[:-len("running_var")] + convert.BN_COUNTER] = np.array(0, np.int64)
  return with_counters, arch


def _plain(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


# Writing -----------------------------------------------------------------------


def check_output(output: str | None) -> str:
  """The extension of an output path that can be written; a UserError naming the problem if not."""
  if not output:
    raise UserError("pass --output=FILE.safetensors (or FILE.pth, which needs PyTorch)")
  path = os.path.abspath(output)
  if os.path.isdir(path):
    raise UserError(f"--output={output} is a directory: pass a file inside it, such as "
                    f"{os.path.join(output, 'model' + SAFETENSORS)}")
  extension = os.path.splitext(output)[1].lower()
  if extension not in OUTPUT_EXTENSIONS:
    raise UserError(f"--output={output} has the unknown extension {extension or '(none)'!r}: "
                    f"name it FILE{SAFETENSORS} or FILE{PTH}")
  artifacts.check_folder(output)
  if extension != SAFETENSORS:
    _import_torch()
  return extension


def _import_torch():
  try:
    import torch  # Lazy: an optional extra, needed only for .pth files.
  except ImportError:
    raise UserError("writing .pth files needs PyTorch: pip install -e '.[torch]' (or pip "
                    f"install torch), or write FILE{SAFETENSORS}, which does not") from None
  return torch


def write_state_dict(state_dict: Mapping[str, np.ndarray], output: str) -> None:
  """Writes .safetensors (without PyTorch) or .pth/.pt (with it), replacing output at once."""
  extension = check_output(output)
  partial = f"{output}.partial"  # Renamed when complete: a failed write leaves no half file.
  try:
    if extension == SAFETENSORS:
      import safetensors.numpy
      # "format": "pt" tells Hugging Face's loaders that these are PyTorch's tensors.
      safetensors.numpy.save_file(dict(state_dict), partial, metadata={"format": "pt"})
    else:
      torch = _import_torch()
      # torch.tensor copies: from_numpy would share read-only arrays and warn.
      torch.save({k: torch.tensor(v) for k, v in state_dict.items()}, partial)
    os.replace(partial, output)
  except OSError as e:
    if os.path.exists(partial):
      os.remove(partial)
    raise UserError(f"cannot write {output} ({e.strerror or e}): free disk space or pass "
                    "another --output") from None


def export_checkpoint(checkpoint: str, output: str) -> tuple[convert.Architecture, dict, bool]:
  """Writes the checkpoint's weights to output; returns the architecture, config and whether EMA."""
  check_output(output)  # Before the slow part, and again when writing.
  loaded = load_model(checkpoint, action="exporting")
  state_dict, arch = to_torch_state_dict(loaded.variables, loaded.config, checkpoint)
  write_state_dict(state_dict, output)
  return arch, loaded.config, loaded.weights == "ema"


def loading_snippet(arch: convert.Architecture, output: str) -> list[str]:
  """Python lines that load output into a torchvision ResNet (or say why one cannot)."""
  if output.lower().endswith(SAFETENSORS):
    read = ["from safetensors.torch import load_file", f"state_dict = load_file({output!r})"]
  else:
    read = ["import torch", f"state_dict = torch.load({output!r})"]
  if arch.width != TORCHVISION_WIDTH:
    return read + [f"# torchvision's ResNets have width {TORCHVISION_WIDTH}, this one "
                   f"{arch.width}: load state_dict into a torchvision-layout module of that width"]
  adapt = []  # torchvision builds the ImageNet stem for RGB: replace what differs.
  if arch.stem == "cifar":
    adapt = [f"model.conv1 = nn.Conv2d({arch.in_channels}, {arch.width}, kernel_size=3, stride=1, "
             "padding=1, bias=False)", "model.maxpool = nn.Identity()"]
  elif arch.in_channels != 3:
    adapt = [f"model.conv1 = nn.Conv2d({arch.in_channels}, {arch.width}, kernel_size=7, stride=2, "
             "padding=3, bias=False)"]
  if arch.model in TIMM_MODELS:
    build = f"model = timm.create_model({arch.model!r}, num_classes={arch.num_classes})"
    if adapt:
      return read + [f"# timm's {arch.model} takes 3-channel ImageNet-stem input: this one "
                     "differs; load state_dict into a module built to match"]
    return (["import timm"] + read + [build, "model.load_state_dict(state_dict, strict=True)",
                                      "model.eval()"])
  if arch.model in TORCHVISION_MODELS:
    build = f"model = torchvision.models.{arch.model}(num_classes={arch.num_classes})"
  else:
    factory = resnet.MODELS[arch.model].keywords
    build = (f"model = torchvision.models.resnet.ResNet(torchvision.models.resnet."
             f"{factory['block_cls'].__name__}, {list(factory['stage_sizes'])}, "
             f"num_classes={arch.num_classes})")
  return (["import torchvision"] + (["from torch import nn"] if adapt else []) + read
          + [build] + adapt + ["model.load_state_dict(state_dict, strict=True)", "model.eval()"])
