"""Which member of the ResNet family a state_dict (torchvision's or timm's layout) holds.

Read off the weights: blocks per stage (`layerS.B.` keys), the block type
(`conv3` makes a bottleneck), groups and group width (layer1.0.conv2's
shape), the stem (conv1's kernel; `conv1.0` is ResNet-D's deep stem), the
shortcut (`downsample.2`: ResNet-D's average pool before the projection),
squeeze-and-excitation (`se.fc1`), the width and the class count.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.models import resnet

_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
DEEP_STEM_KEY = "conv1.0.weight"  # timm's deep stem is a Sequential named conv1.
DEEP_STEM_LAST_KEY = "conv1.6.weight"
# What each part of a supported network may hold, as `module.sub` prefixes of its keys.
_BLOCK_MODULES = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1",
                  "downsample.2", "se.fc1", "se.fc2"}
_TOP_MODULES = {"conv1", "bn1", "fc", "conv1.0", "conv1.1", "conv1.3", "conv1.4", "conv1.6"}
# Modules of timm variants resnet_jax does not build, by the block type they belong to.
_KNOWN_UNSUPPORTED = {"se.conv": "ECA attention (timm's ecaresnet)",
                      "se.fc": "squeeze-and-excitation with a Linear gate (old senet layout)",
                      "conv2.conv": "selective-kernel convolutions (timm's skresnet)",
                      "aa": "anti-aliased downsampling (timm's resnetblur / aa)",
                      "conv1.conv_0": "selective-kernel convolutions (timm's skresnet)"}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What `resnet.create_model` needs to rebuild the network of a state_dict."""
  model: str
  stem: str
  width: int
  num_classes: int
  in_channels: int = 3


def shape_of(value: Any) -> tuple[int, ...]:
  """Shape of a tensor, array or nested list; () for None."""
  if value is None:
    return ()
  return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else np.shape(value)))


def _stage_sizes(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
  blocks: dict[int, set[int]] = {}
  for key in state_dict:
    match = _BLOCK_KEY.match(key)
    if match:
      blocks.setdefault(int(match[1]), set()).add(int(match[2]))
  return tuple(len(blocks.get(stage, ())) for stage in range(1, max(blocks, default=0) + 1))


def unsupported_modules(state_dict: Mapping[str, Any]) -> list[str]:
  """Keys (one per kind) of modules that no member of the family has."""
  found: dict[str, str] = {}
  if not any(_BLOCK_KEY.match(k) for k in state_dict):
    return []  # No ResNet at all: resolve_architecture says it cannot tell the model.
  for key in state_dict:
    match = _BLOCK_KEY.match(key)
    module = (key[match.end():] if match else key).rsplit(".", 1)[0]
    if "." not in key or not match and key.startswith("layer"):
      continue
    if module not in (_BLOCK_MODULES if match else _TOP_MODULES):
      found.setdefault(module, key)  # One key per kind of module, not per block.
  return sorted(found.values())


def _has_deep_stem(state_dict: Mapping[str, Any]) -> bool:
  return DEEP_STEM_KEY in state_dict and DEEP_STEM_LAST_KEY in state_dict


def _structure(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The family's switches as the weights show them; groups and group width of layer1.0."""
  bottleneck = any(".conv3." in k for k in state_dict)
  conv2 = shape_of(state_dict.get("layer1.0.conv2.weight"))
  groups = conv2[0] // conv2[1] if len(conv2) == 4 and conv2[1] else 1
  return {"stage_sizes": _stage_sizes(state_dict),
          "block_cls": resnet.Bottleneck if bottleneck else resnet.BasicBlock,
          "groups": groups, "group_width": conv2[1] if len(conv2) == 4 else None,
          "deep_stem": _has_deep_stem(state_dict),
          "avg_down": any(".downsample.2." in k for k in state_dict),
          "se": any(".se.fc1." in k for k in state_dict)}


def _model_name(structure: Mapping[str, Any], width: int | None) -> str | None:
  """The model in `resnet.MODELS` with this structure at this width."""
  for name in resnet.MODELS:
    want = resnet.variant(name)
    if any(want[k] != structure[k] for k in ("stage_sizes", "block_cls", "groups", "deep_stem",
                                             "avg_down", "se")):
      continue
    if want["block_cls"] is resnet.Bottleneck and width is not None:
      if int(width * want["width_per_group"] / 64) != structure["group_width"]:
        continue
    return name
  return None


def infer_architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Reads model, stem, width, num_classes and in_channels off the weights; None where unclear."""
  deep = _has_deep_stem(state_dict)
  first = shape_of(state_dict.get(DEEP_STEM_KEY if deep else "conv1.weight"))
  last = shape_of(state_dict.get(DEEP_STEM_LAST_KEY if deep else "conv1.weight"))
  fc = shape_of(state_dict.get("fc.weight"))
  inferred = {"model": None, "stem": None, "width": None, "num_classes": None, "in_channels": None}
  if len(first) == 4 and len(last) == 4:
    inferred["width"], inferred["in_channels"] = last[0], first[1]
    # A deep stem's 3x3 kernels do not tell the stride: resolve_architecture decides.
    inferred["stem"] = None if deep else {(7, 7): "imagenet", (3, 3): "cifar"}.get(first[2:])
  if len(fc) == 2:
    inferred["num_classes"] = fc[0]
  inferred["model"] = _model_name(_structure(state_dict), inferred["width"])
  return inferred


def resolve_architecture(state_dict: Mapping[str, Any], model: str | None = None,
                         stem: str | None = None, width: int | None = None,
                         num_classes: int | None = None) -> Architecture:
  """The architecture of a (normalised) state_dict; values given are checked against it.

  Each value left as None is read off the weights: the model off the block
  structure, the stem off conv1's kernel size (ResNet-D's deep stem, which
  does not show its stride, is taken as timm builds it: 'imagenet'), the
  width off the stem's output channels, num_classes off fc's rows.
  """
  if model is not None and model not in resnet.MODELS:
    raise UserError(f"unknown model {model!r}: choose one of {', '.join(resnet.MODELS)}")
  if stem is not None and stem not in resnet.STEMS:
    raise UserError(f"unknown stem {stem!r}: choose one of {', '.join(resnet.STEMS)}")
  unsupported = unsupported_modules(state_dict)
  if unsupported:
    kinds = sorted({kind for key in unsupported for prefix, kind in _KNOWN_UNSUPPORTED.items()
                    if f".{prefix}." in f".{key}"})
    what = f" ({'; '.join(kinds)})" if kinds else ""
    raise UserError(f"these weights hold a block type resnet_jax does not have{what}: "
                    f"unknown keys: {', '.join(unsupported[:5])}; the family has basic and "
                    "bottleneck blocks, grouped or wide bottlenecks (ResNeXt, Wide ResNet), squeeze-and-excitation "
                    "(se.fc1/se.fc2) and ResNet-D (deep stem, pooled shortcut)")
  inferred = infer_architecture(state_dict)
  if _has_deep_stem(state_dict) and stem is None:
    inferred["stem"] = "imagenet"
  given = {"model": model, "stem": stem, "width": width, "num_classes": num_classes}
  resolved = {}
  for name, value in given.items():
    found = inferred[name]
    if value is not None and found is not None and value != found:
      raise UserError(f"{name}={value!r} was asked for but the weights hold {name}={found!r} "
                      f"({describe(state_dict)}): leave {name} out to use the weights' value")
    resolved[name] = value if value is not None else found
    if resolved[name] is None:
      known = f" (resnet_jax has {', '.join(resnet.MODELS)})" if name == "model" else ""
      raise UserError(f"cannot tell the {name} from the weights ({describe(state_dict)}): "
                      f"pass {name} (--{name}=...) or check that this is a torchvision ResNet "
                      f"(or timm's){known}")
  return Architecture(**resolved, in_channels=inferred["in_channels"] or 3)


def describe(state_dict: Mapping[str, Any]) -> str:
  """The structure of the weights in words, for error messages."""
  structure = _structure(state_dict)
  block = "bottleneck" if structure["block_cls"] is resnet.Bottleneck else "basic"
  first = shape_of(state_dict.get("conv1.weight"))
  kernel = ("deep 3x3" if structure["deep_stem"] else
            "x".join(map(str, first[2:])) if len(first) == 4 else "no")
  parts = [f"blocks per stage {structure['stage_sizes']}", f"{block} blocks"]
  if structure["groups"] > 1:
    parts.append(f"{structure['groups']} groups of {structure['group_width']} channels")
  parts += ["squeeze-and-excitation"] * structure["se"] + ["pooled shortcut"] * structure[
      "avg_down"]
  return ", ".join(parts + [f"{kernel} conv1 kernel"])
