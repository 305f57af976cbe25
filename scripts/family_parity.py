r"""The model table of docs/models.md: parameters and logit parity against torchvision and timm.

  PYTHONPATH=$PWD python scripts/family_parity.py [--size=64] [--models=resnet50,seresnet50]

For each model: the reference built by its own package (torchvision.models.X or
timm.create_model(X)) with random weights and random BatchNorm statistics,
converted with resnet_jax.convert, both run on the same random batch of 2
images; prints max |ours - theirs| / max |theirs| over the logits, and the
parameter counts of both at 1000 classes.
"""

import argparse
import sys
import types

import jax
import numpy as np

sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from resnet_jax.interop import convert  # noqa: E402
from resnet_jax.models import resnet  # noqa: E402
from tests.conftest import randomize_torch_model  # noqa: E402

TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
TIMM = ("resnet50d", "seresnet50")


def reference(name: str):
  if name in TIMM:
    return timm.create_model(name, pretrained=False, num_classes=1000), "timm"
  return getattr(torchvision.models, name)(num_classes=1000), "torchvision"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--models", default=",".join(TORCHVISION + TIMM))
  args = parser.parse_args()
  print("| model | params (ours) | params (reference) | reference | relative logit difference |")
  print("|---|---|---|---|---|")
  images = np.random.default_rng(0).normal(size=(2, args.size, args.size, 3)).astype(np.float32)
  for name in args.models.split(","):
    net, source = reference(name)
    randomize_torch_model(net, seed=0)
    with torch.no_grad():
      expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    variables = convert.from_torch_state_dict(net.state_dict())
    model = resnet.create_model(name, 1000, "imagenet")
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    difference = np.abs(logits - expected).max() / np.abs(expected).max()
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    theirs = sum(p.numel() for p in net.parameters())
    print(f"| {name} | {ours:,} | {theirs:,} | {source} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
  main()
