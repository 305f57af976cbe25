"""Published weights by name: `torchvision:<model>[.<weights>]` and `hf-hub:<repo>`.

Names only: what exists, at which URL, under which file name. Downloading,
verifying and converting is `resnet_jax.interop.hub`'s.

torchvision's file names end in the first hex digits of the file's SHA-256
(`resnet50-11ad3fa6.pth`), which the download is checked against. The URLs
are torchvision's `<Model>_Weights` enums (0.28), whose DEFAULT each bare
name takes; a test checks this table against the installed torchvision.
"""

TORCHVISION_PREFIX = "torchvision:"
HF_HUB_PREFIX = "hf-hub:"
_URL = "https://download.pytorch.org/models/"

# model -> {weights enum member: file name}; the first one listed is torchvision's DEFAULT.
TORCHVISION_WEIGHTS = {
    "resnet18": {"IMAGENET1K_V1": "resnet18-f37072fd.pth"},
    "resnet34": {"IMAGENET1K_V1": "resnet34-b627a593.pth"},
    "resnet50": {"IMAGENET1K_V2": "resnet50-11ad3fa6.pth",
                 "IMAGENET1K_V1": "resnet50-0676ba61.pth"},
    "resnet101": {"IMAGENET1K_V2": "resnet101-cd907fc2.pth",
                  "IMAGENET1K_V1": "resnet101-63fe2227.pth"},
    "resnet152": {"IMAGENET1K_V2": "resnet152-f82ba261.pth",
                  "IMAGENET1K_V1": "resnet152-394f9c45.pth"},
    "resnext50_32x4d": {"IMAGENET1K_V2": "resnext50_32x4d-1a0047aa.pth",
                        "IMAGENET1K_V1": "resnext50_32x4d-7cdf4587.pth"},
    "resnext101_32x8d": {"IMAGENET1K_V2": "resnext101_32x8d-110c445d.pth",
                         "IMAGENET1K_V1": "resnext101_32x8d-8ba56ff5.pth"},
    "resnext101_64x4d": {"IMAGENET1K_V1": "resnext101_64x4d-173b62eb.pth"},
    "wide_resnet50_2": {"IMAGENET1K_V2": "wide_resnet50_2-9ba9bcbe.pth",
                        "IMAGENET1K_V1": "wide_resnet50_2-95faca4d.pth"},
    "wide_resnet101_2": {"IMAGENET1K_V2": "wide_resnet101_2-d733dc28.pth",
                         "IMAGENET1K_V1": "wide_resnet101_2-32ee1156.pth"},
}


def is_pretrained_name(value: str) -> bool:
  """Whether a checkpoint argument names published weights rather than a path."""
  return isinstance(value, str) and value.startswith((TORCHVISION_PREFIX, HF_HUB_PREFIX))


def torchvision_weights(name: str) -> tuple[str, str, str] | None:
  """'resnet50' or 'resnet50.IMAGENET1K_V1' -> (model, enum member, file name); None if unknown."""
  model, _, member = name.partition(".")
  weights = TORCHVISION_WEIGHTS.get(model)
  if weights is None:
    return None
  member = member or next(iter(weights))
  return (model, member, weights[member]) if member in weights else None


def torchvision_url(file_name: str) -> str:
  return _URL + file_name


def known_torchvision_names() -> list[str]:
  return [f"{TORCHVISION_PREFIX}{model}" + (f".{member}" if i else "")
          for model, weights in TORCHVISION_WEIGHTS.items()
          for i, member in enumerate(weights)]
