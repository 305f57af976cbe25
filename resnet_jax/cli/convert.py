"""`python -m resnet_jax.convert`: PyTorch ResNet weights to a resnet_jax workdir (flags and output)."""

import os
from collections.abc import Sequence

from resnet_jax.cli import runner
from resnet_jax.interop import convert, hub
from resnet_jax.models import zoo
from resnet_jax.models import resnet


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no flags."""
  from absl import flags
  flags.DEFINE_string("torch_checkpoint", None, "A ResNet state_dict: .pth, .pt, .bin (these "
                      "need PyTorch) or .safetensors; or published weights: "
                      "torchvision:resnet50, hf-hub:timm/resnet50.a1_in1k.")
  flags.DEFINE_string("output", None, "New directory to write the checkpoint (a workdir) to.")
  # Strings, not enums: a wrong name is a UserError (exit 2) like every other mistake.
  flags.DEFINE_string("model", None, f"One of {', '.join(resnet.MODELS)}; default: read off "
                      "the weights.")
  flags.DEFINE_string("stem", None, "'imagenet' or 'cifar'; default: read off conv1.")
  flags.DEFINE_integer("width", None, "Base channel count; default: conv1's output channels.")
  flags.DEFINE_integer("num_classes", None, "Classes; default: fc's rows.")


def main(argv: Sequence[str]) -> None:
  from absl import flags
  FLAGS = flags.FLAGS
  runner.quiet_libraries(quiet=False)  # Orbax logs each save step at INFO.
  runner.no_arguments(argv, "pass the weights as --torch_checkpoint=FILE")
  if zoo.is_pretrained_name(FLAGS.torch_checkpoint or ""):
    arch = hub.convert_named(FLAGS.torch_checkpoint, FLAGS.output)
  else:
    arch = convert.convert_file(FLAGS.torch_checkpoint, FLAGS.output, FLAGS.model, FLAGS.stem,
                                FLAGS.width, FLAGS.num_classes)
  output = os.path.abspath(FLAGS.output)
  print(f"wrote {arch.model} (stem={arch.stem}, width={arch.width}, "
        f"{arch.num_classes} classes) to {output}")
  # The trainer merges strictly, so the hint names the architecture the weights need.
  print("fine-tune from it with:\n"
        f"  python -m resnet_jax.main --config=configs/resnet18.py --config.model={arch.model} "
        f"--config.stem={arch.stem} --config.width={arch.width} "
        f"--config.init_checkpoint={output} --workdir=runs/finetune")
  print("or classify images with:\n"
        f"  python -m resnet_jax.predict --workdir={output} IMAGE_OR_FOLDER...")


def run() -> None:
  """`python -m resnet_jax.convert` and the console script `resnet-jax-convert`."""
  define_flags()
  runner.run(main)
