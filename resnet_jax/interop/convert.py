r"""PyTorch ResNet weights (torchvision's or timm's `state_dict` layout) to a resnet_jax checkpoint.

  python -m resnet_jax.convert --torch_checkpoint=resnet18.pth --model=resnet18 \
      --stem=imagenet --output=runs/resnet18_torchvision
  python -m resnet_jax.convert --torch_checkpoint=torchvision:resnext50_32x4d --output=runs/rx50

The weights may be a .pth/.pt/.bin file (read with PyTorch) or .safetensors
(read without it): torchvision's ResNets, ResNeXts and Wide ResNets and
timm's ResNets (including resnet50d and seresnet50, whose keys extend
torchvision's). Published weights can be named instead of a file; see
`resnet_jax.interop.hub`.

Every flag but --torch_checkpoint and --output can be left out: the model,
stem, width and class count are read off the weights (`architecture.py`),
and checked against the flags that are given. The output directory is a
workdir whose only checkpoint (step 0) carries `params`, `batch_stats` and a
config; pass it to training as `--config.init_checkpoint=DIR` or to
`resnet_jax.predict`.

Names map one to one (see `resnet_jax.models.resnet`): `layer1.0.conv1.weight`
is `params/layer1_0/conv1/kernel` (OIHW to HWIO), `downsample.0`/`.1` are
`downsample_conv`/`downsample_bn` (ResNet-D's `downsample.1`/`.2` after its
pool: `downsample_pooled_conv`/`_bn`), timm's deep stem `conv1.0/.1/.3/.4/.6`
is `stem_conv1`, `stem_bn1`, `stem_conv2`, `stem_bn2`, `stem_conv3`, BN
`weight` is `scale`, running statistics go to `batch_stats`, and
`fc.weight` is transposed.
"""

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.checkpoints.checkpointing import Checkpointer
from resnet_jax.errors import UserError
from resnet_jax.interop.architecture import (Architecture, infer_architecture,  # noqa: F401
                                             resolve_architecture)
from resnet_jax.interop.torch_files import (MAX_LISTED, SAFETENSORS_EXTENSION,  # noqa: F401
                                            TORCH_EXTENSIONS, first_line, load_torch_file,
                                            normalize_state_dict)
from resnet_jax.models import resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resolution the converted weights expect when the config does not say; predict reads it.
NATIVE_SIZE = {"imagenet": 224, "cifar": 32}

BN_COUNTER = "num_batches_tracked"  # torchvision's, unused by resnet_jax.
# Flax modules that sit inside a PyTorch Sequential, to their index there.
_TORCH_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
                  "downsample_pooled_conv": "downsample.1", "downsample_pooled_bn": "downsample.2",
                  "stem_conv1": "conv1.0", "stem_bn1": "conv1.1", "stem_conv2": "conv1.3",
                  "stem_bn2": "conv1.4", "stem_conv3": "conv1.6"}
_TORCH_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}  # Flax to PyTorch: HWIO to OIHW, (in, out) to (out, in).
STEM_KERNELS = (("conv1", "kernel"), ("stem_conv1", "kernel"))  # The first convolution.


# Conversion ------------------------------------------------------------------


def torch_key(path: tuple[str, ...]) -> str:
  """('params', 'layer2_0', 'downsample_conv', 'kernel') -> 'layer2.0.downsample.0.weight'."""
  collection, *modules, leaf = path
  names = [_TORCH_MODULES.get(m, m.replace("_", ".")) for m in modules]
  return ".".join([*names, _TORCH_LEAVES[(collection, leaf)]])


def _torch_shape(path: tuple[str, ...], shape: Sequence[int]) -> tuple[int, ...]:
  """The PyTorch shape of a Flax leaf."""
  return tuple(shape[i] for i in _TORCH_AXES[len(shape)]) if path[-1] == "kernel" else tuple(shape)


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  return value.transpose(np.argsort(_TORCH_AXES[value.ndim])) if path[-1] == "kernel" else value


def to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A Flax leaf (path as in `torch_key`) in PyTorch's layout; the inverse of `_to_flax`."""
  return value.transpose(_TORCH_AXES[value.ndim]) if path[-1] == "kernel" else value


def input_channels(params: Mapping[str, Any]) -> int:
  """The image channels that the first convolution (plain or deep stem) takes."""
  for module, leaf in STEM_KERNELS:
    if module in params:
      return int(np.shape(params[module][leaf])[2])
  raise UserError("the weights have no first convolution (conv1 or stem_conv1)")


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch.Tensor; bfloat16 has no numpy dtype.
    return value.detach().cpu().float().numpy()
  return np.asarray(value)


def _listing(keys: Sequence[str]) -> str:
  keys = sorted(keys)
  more = f" (and {len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
  return ", ".join(keys[:MAX_LISTED]) + more


def expected_shapes(arch: Architecture) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flat Flax variable paths of the architecture to their shapes, without allocating."""
  model = resnet.create_model(arch.model, arch.num_classes, arch.stem, arch.width)
  images = jax.ShapeDtypeStruct((1, 32, 32, arch.in_channels), jnp.float32)
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), images)
  return traverse_util.flatten_dict({k: abstract[k] for k in ("params", "batch_stats")})


def from_torch_state_dict(state_dict: Mapping[str, Any], model: str | None = None,
                          stem: str | None = None, width: int | None = None,
                          num_classes: int | None = None) -> dict[str, dict]:
  """Converts a torchvision-layout ResNet state_dict to {'params', 'batch_stats'}.

  Args:
    state_dict: names to torch tensors or numpy arrays, possibly wrapped as
      {'state_dict': ...} or {'model': ...} and prefixed with `module.`.
    model, stem, width, num_classes: as in `resnet_jax.models.resnet.create_model`;
      each one left as None is read off the weights, each one given is
      checked against them.

  Returns nested dicts of float32 numpy arrays, ready for `model.apply`;
  raises UserError naming the unknown, missing or wrongly shaped keys.
  """
  state_dict = normalize_state_dict(state_dict)
  arch = resolve_architecture(state_dict, model, stem, width, num_classes)
  by_torch_key = {torch_key(path): (path, spec) for path, spec in expected_shapes(arch).items()}
  given = {k for k in state_dict if not k.endswith(f".{BN_COUNTER}")}
  unknown = given - by_torch_key.keys()
  missing = by_torch_key.keys() - given
  flat, wrong_shapes = {}, []
  for key in sorted(given & by_torch_key.keys()):
    path, spec = by_torch_key[key]
    try:
      value = _as_numpy(state_dict[key])
    except (TypeError, ValueError) as e:
      raise UserError(f"{key} is not an array ({first_line(e)})") from None
    want = _torch_shape(path, spec.shape)
    if value.shape != want:
      wrong_shapes.append(f"{key} is {tuple(value.shape)}, expected {want}")
      continue
    flat[path] = _to_flax(path, value).astype(spec.dtype)
  problems = [f"{kind}: {_listing(keys)}" for kind, keys in (
      ("unknown keys", unknown), ("missing keys", missing), ("wrong shapes", wrong_shapes)) if keys]
  if problems:
    raise UserError(f"the weights do not fit {arch.model} (stem={arch.stem}, width={arch.width}, "
                    f"num_classes={arch.num_classes}): {'; '.join(problems)}")
  return traverse_util.unflatten_dict(flat)


# Writing ---------------------------------------------------------------------


def save_converted(variables: Mapping[str, Any], output_dir: str, model: str, stem: str,
                   width: int, num_classes: int, input_shape: Sequence[int] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   class_names: Sequence[str] = ()) -> str:
  """Writes variables as step 0 of a new workdir; returns its checkpoints directory.

  Args:
    variables: {'params': ..., 'batch_stats': ...} as `from_torch_state_dict` returns.
    output_dir: a new or empty-of-checkpoints directory; never overwritten.
    model, stem, width, num_classes: the architecture, stored in the config.
    input_shape: [H, W, C] the weights were trained at; default 224x224 (ImageNet
      stem) or 32x32 (CIFAR stem) with conv1's channels. Normalisation is
      torchvision's ImageNet mean and std for 3 channels unless mean and std are
      given (published weights carry theirs), as are class_names.
  """
  directory = free_checkpoint_dir(output_dir)
  channels = input_channels(variables["params"])
  if input_shape is None:
    input_shape = (NATIVE_SIZE[stem], NATIVE_SIZE[stem], channels)
  # torchvision's normalisation for RGB; other channel counts get a neutral one.
  default_mean, default_std = ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3
                               else ((0.5,) * channels,) * 2)
  mean, std = tuple(mean or default_mean), tuple(std or default_std)
  config = {
      "model": model, "stem": stem, "width": int(width), "num_classes": int(num_classes),
      "dataset": "converted", "mean": list(mean), "std": list(std),
      "class_names": [str(n) for n in class_names], "image_size": 0,
      "input_shape": [int(d) for d in input_shape],
  }
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  checkpointer = Checkpointer(directory)
  try:
    checkpointer.save(0, state, config, force=True)
  finally:
    checkpointer.close()
  return directory


def free_checkpoint_dir(output_dir: str) -> str:
  """The checkpoints directory of output_dir, refused when it holds anything already."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise UserError(f"--output={output_dir} is a file, not a folder: pass a new directory")
  directory = os.path.join(os.path.abspath(output_dir), "checkpoints")
  if os.path.isdir(directory) and os.listdir(directory):
    raise UserError(f"{directory} already holds checkpoints: choose a new output directory "
                    "(conversion never overwrites)")
  return directory



# Command line ----------------------------------------------------------------


def convert_file(torch_checkpoint: str, output: str, model: str | None = None,
                 stem: str | None = None, width: int | None = None,
                 num_classes: int | None = None) -> Architecture:
  """Converts a .pth/.pt/.bin/.safetensors file into a new workdir; returns the architecture."""
  if not torch_checkpoint or not output:
    raise UserError("pass --torch_checkpoint=FILE (.pth or .safetensors) and --output=DIR")
  free_checkpoint_dir(output)  # Before the slow part, and again when writing.
  state_dict = normalize_state_dict(load_torch_file(torch_checkpoint))
  arch = resolve_architecture(state_dict, model, stem, width, num_classes)
  variables = from_torch_state_dict(state_dict, arch.model, arch.stem, arch.width,
                                    arch.num_classes)
  save_converted(variables, output, arch.model, arch.stem, arch.width, arch.num_classes)
  return arch
