r"""PyTorch ResNet weights (torchvision's `state_dict` layout) to a resnet_jax checkpoint.

  python -m resnet_jax.convert --torch_checkpoint=resnet18.pth --model=resnet18 \
      --stem=imagenet --output=runs/resnet18_torchvision

The weights may be a .pth/.pt/.bin file (read with PyTorch) or .safetensors
(read without it); timm's ResNets share torchvision's names, so both load.

Every flag but --torch_checkpoint and --output can be left out: the model,
stem, width and class count are read off the weights, and checked against
the flags that are given. The output directory is a workdir whose only
checkpoint (step 0) carries `params`, `batch_stats` and a config; pass it to
training as `--config.init_checkpoint=DIR` or to `resnet_jax.predict`.

Names map one to one (see `resnet_jax.models`): `layer1.0.conv1.weight` is
`params/layer1_0/conv1/kernel` (OIHW to HWIO), `downsample.0`/`.1` are
`downsample_conv`/`downsample_bn`, BN `weight` is `scale`, running
statistics go to `batch_stats`, and `fc.weight` is transposed.
"""

import dataclasses
import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.models import resnet
from resnet_jax.checkpoints.checkpointing import Checkpointer
from resnet_jax.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resolution the converted weights expect when the config does not say; predict reads it.
NATIVE_SIZE = {"imagenet": 224, "cifar": 32}

TORCH_EXTENSIONS = (".pth", ".pt", ".bin")  # torch.save's files; .bin as Hugging Face names them.
SAFETENSORS_EXTENSION = ".safetensors"
BN_COUNTER = "num_batches_tracked"  # torchvision's, unused by resnet_jax.
_WRAPPER_KEYS = ("state_dict", "model")
_TORCH_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_TORCH_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}  # Flax to PyTorch: HWIO to OIHW, (in, out) to (out, in).
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
_MAX_LISTED = 5


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What `resnet.create_model` needs to rebuild the network of a state_dict."""
  model: str
  stem: str
  width: int
  num_classes: int
  in_channels: int = 3


# Reading ---------------------------------------------------------------------


def load_torch_file(path: str) -> Mapping[str, Any]:
  """Reads a state_dict from .pth/.pt/.bin (needs PyTorch) or .safetensors (does not)."""
  if not os.path.isfile(path):
    raise UserError(f"PyTorch checkpoint {path} does not exist or is not a file: pass a "
                    f"{'/'.join(TORCH_EXTENSIONS)} or {SAFETENSORS_EXTENSION} file")
  extension = os.path.splitext(path)[1].lower()
  if extension == SAFETENSORS_EXTENSION:
    return _load_safetensors(path)
  if extension not in TORCH_EXTENSIONS:
    raise UserError(f"{path} has the unknown extension {extension or '(none)'!r}: pass a "
                    f"{', '.join(TORCH_EXTENSIONS)} or {SAFETENSORS_EXTENSION} file")
  try:
    import torch  # Lazy: an optional extra, needed only for pickled PyTorch files.
  except ImportError:
    raise UserError(f"reading {extension} files needs PyTorch: pip install -e '.[torch]' "
                    "(or pip install torch), or pass a .safetensors file") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # Truncated zips, pickles with code and foreign files all differ.
    raise UserError(f"could not read {path} as a PyTorch checkpoint "
                    f"({type(e).__name__}: {_first_line(e)})") from None
  return loaded


def _load_safetensors(path: str) -> dict[str, Any]:
  import safetensors.flax
  import safetensors.numpy
  try:
    return safetensors.numpy.load_file(path)
  except TypeError:  # bfloat16, which numpy lacks; JAX's arrays have it.
    return safetensors.flax.load_file(path)
  except Exception as e:  # A truncated or foreign file: SafetensorError, OSError, ...
    raise UserError(f"could not read {path} as a safetensors file "
                    f"({type(e).__name__}: {_first_line(e)})") from None


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Unwraps {'state_dict': ...} or {'model': ...} and strips DataParallel's `module.`."""
  if not isinstance(state_dict, Mapping):
    raise UserError(f"expected a state_dict (a mapping of names to tensors), got a "
                    f"{type(state_dict).__name__}: save model.state_dict(), not the model")
  while not any(isinstance(k, str) and k.split(".")[-1] in ("weight", "bias")
                for k in state_dict):
    inner = next((state_dict[k] for k in _WRAPPER_KEYS
                  if isinstance(state_dict.get(k), Mapping)), None)
    if inner is None:
      break
    state_dict = inner
  bad = [repr(k) for k in state_dict if not isinstance(k, str)]
  if bad:
    raise UserError(f"state_dict keys must be strings, not {', '.join(bad[:_MAX_LISTED])}")
  return {(k[len("module."):] if k.startswith("module.") else k): v
          for k, v in state_dict.items()}


# Architecture ----------------------------------------------------------------


def infer_architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Reads model, stem, width, num_classes and in_channels off the weights; None where unclear."""
  conv1 = _shape(state_dict.get("conv1.weight"))
  fc = _shape(state_dict.get("fc.weight"))
  inferred = {"model": None, "stem": None, "width": None, "num_classes": None, "in_channels": None}
  if len(conv1) == 4:
    inferred["width"], inferred["in_channels"] = conv1[0], conv1[1]
    inferred["stem"] = {(7, 7): "imagenet", (3, 3): "cifar"}.get(conv1[2:])
  if len(fc) == 2:
    inferred["num_classes"] = fc[0]
  inferred["model"] = _model_name(state_dict)
  return inferred


def _shape(value: Any) -> tuple[int, ...]:
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


def _model_name(state_dict: Mapping[str, Any]) -> str | None:
  """The model in `resnet.MODELS` with these blocks per stage and this block type."""
  stage_sizes = _stage_sizes(state_dict)
  block_cls = (resnet.Bottleneck if any(".conv3." in k for k in state_dict)
               else resnet.BasicBlock)
  for name, factory in resnet.MODELS.items():
    if (tuple(factory.keywords["stage_sizes"]) == stage_sizes
        and factory.keywords["block_cls"] is block_cls):
      return name
  return None


def resolve_architecture(state_dict: Mapping[str, Any], model: str | None = None,
                         stem: str | None = None, width: int | None = None,
                         num_classes: int | None = None) -> Architecture:
  """The architecture of a (normalised) state_dict; values given are checked against it.

  Each value left as None is read off the weights: the model off the blocks
  per stage, the stem off conv1's kernel size, the width off conv1's output
  channels, num_classes off fc's rows.
  """
  inferred = infer_architecture(state_dict)
  given = {"model": model, "stem": stem, "width": width, "num_classes": num_classes}
  if model is not None and model not in resnet.MODELS:
    raise UserError(f"unknown model {model!r}: choose one of {', '.join(resnet.MODELS)}")
  if stem is not None and stem not in resnet.STEMS:
    raise UserError(f"unknown stem {stem!r}: choose one of {', '.join(resnet.STEMS)}")
  resolved = {}
  for name, value in given.items():
    found = inferred[name]
    if value is not None and found is not None and value != found:
      raise UserError(f"{name}={value!r} was asked for but the weights hold {name}={found!r} "
                      f"({_describe(state_dict)}): leave {name} out to use the weights' value")
    resolved[name] = value if value is not None else found
    if resolved[name] is None:
      raise UserError(f"cannot tell the {name} from the weights ({_describe(state_dict)}): "
                      f"pass {name} (--{name}=...) or check that this is a torchvision ResNet")
  return Architecture(**resolved, in_channels=inferred["in_channels"] or 3)


def _describe(state_dict: Mapping[str, Any]) -> str:
  block = "bottleneck" if any(".conv3." in k for k in state_dict) else "basic"
  conv1 = _shape(state_dict.get("conv1.weight"))
  kernel = "x".join(map(str, conv1[2:])) if len(conv1) == 4 else "no"
  return (f"blocks per stage {_stage_sizes(state_dict)}, {block} blocks, "
          f"{kernel} conv1 kernel")


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


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch.Tensor; bfloat16 has no numpy dtype.
    return value.detach().cpu().float().numpy()
  return np.asarray(value)


def _listing(keys: Sequence[str]) -> str:
  keys = sorted(keys)
  more = f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
  return ", ".join(keys[:_MAX_LISTED]) + more


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
      raise UserError(f"{key} is not an array ({_first_line(e)})") from None
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
                   width: int, num_classes: int,
                   input_shape: Sequence[int] | None = None) -> str:
  """Writes variables as step 0 of a new workdir; returns its checkpoints directory.

  Args:
    variables: {'params': ..., 'batch_stats': ...} as `from_torch_state_dict` returns.
    output_dir: a new or empty-of-checkpoints directory; never overwritten.
    model, stem, width, num_classes: the architecture, stored in the config.
    input_shape: [H, W, C] the weights were trained at; default 224x224 (ImageNet
      stem) or 32x32 (CIFAR stem) with conv1's channels. Normalisation is
      torchvision's ImageNet mean and std for 3 channels.
  """
  directory = _free_checkpoint_dir(output_dir)
  channels = int(np.shape(variables["params"]["conv1"]["kernel"])[2])
  if input_shape is None:
    input_shape = (NATIVE_SIZE[stem], NATIVE_SIZE[stem], channels)
  # torchvision's normalisation for RGB; other channel counts get a neutral one.
  mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels,) * 2
  config = {
      "model": model, "stem": stem, "width": int(width), "num_classes": int(num_classes),
      "dataset": "converted", "mean": list(mean), "std": list(std),
      "class_names": [], "image_size": 0, "input_shape": [int(d) for d in input_shape],
  }
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  checkpointer = Checkpointer(directory)
  try:
    checkpointer.save(0, state, config, force=True)
  finally:
    checkpointer.close()
  return directory


def _free_checkpoint_dir(output_dir: str) -> str:
  """The checkpoints directory of output_dir, refused when it holds anything already."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise UserError(f"--output={output_dir} is a file, not a folder: pass a new directory")
  directory = os.path.join(os.path.abspath(output_dir), "checkpoints")
  if os.path.isdir(directory) and os.listdir(directory):
    raise UserError(f"{directory} already holds checkpoints: choose a new output directory "
                    "(conversion never overwrites)")
  return directory


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else "no message"


# Command line ----------------------------------------------------------------


def convert_file(torch_checkpoint: str, output: str, model: str | None = None,
                 stem: str | None = None, width: int | None = None,
                 num_classes: int | None = None) -> Architecture:
  """Converts a .pth/.pt/.bin/.safetensors file into a new workdir; returns the architecture."""
  if not torch_checkpoint or not output:
    raise UserError("pass --torch_checkpoint=FILE (.pth or .safetensors) and --output=DIR")
  _free_checkpoint_dir(output)  # Before the slow part, and again when writing.
  state_dict = normalize_state_dict(load_torch_file(torch_checkpoint))
  arch = resolve_architecture(state_dict, model, stem, width, num_classes)
  variables = from_torch_state_dict(state_dict, arch.model, arch.stem, arch.width,
                                    arch.num_classes)
  save_converted(variables, output, arch.model, arch.stem, arch.width, arch.num_classes)
  return arch
