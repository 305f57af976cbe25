"""`python -m resnet_jax.export`: a checkpoint to a torchvision-layout state_dict (flags and output)."""

import os
from collections.abc import Sequence

from resnet_jax.cli import runner
from resnet_jax.evaluation.prediction import checkpoint_path
from resnet_jax.interop import export, hub


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no flags."""
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training (or conversion) workdir to export the best "
                      "checkpoint of, or published weights: torchvision:resnet50, "
                      "hf-hub:timm/resnet50.a1_in1k.")
  flags.DEFINE_string("checkpoint", None, "A checkpoints/ folder or one step's folder.")
  flags.DEFINE_string("output", None, f"File to write: FILE{export.SAFETENSORS} or FILE{export.PTH} "
                      "(.pth needs PyTorch).")


def main(argv: Sequence[str]) -> None:
  from absl import flags
  FLAGS = flags.FLAGS
  runner.quiet_libraries(quiet=False)
  runner.no_arguments(argv, "pass --workdir=DIR (or --checkpoint=DIR) and --output=FILE")
  checkpoint = hub.resolve(checkpoint_path(FLAGS.workdir, FLAGS.checkpoint))
  arch, config, from_ema = export.export_checkpoint(checkpoint, FLAGS.output)
  output = os.path.abspath(FLAGS.output)
  if from_ema:
    print("exported the EMA weights (state['ema']), not the raw training weights")
  print(f"wrote {arch.model} (stem={arch.stem}, width={arch.width}, {arch.num_classes} "
        f"classes) as a torchvision-layout state_dict to {output}")
  print("load it in PyTorch with:\n  " + "\n  ".join(export.loading_snippet(arch, output)))
  if config.get("input_shape") and config.get("mean"):
    height, width, channels = config["input_shape"]
    resize = f", resized to {config['image_size']}" if config.get("image_size") else ""
    print(f"it takes {height}x{width} images with {channels} channel(s) in [0, 1]{resize}, "
          f"normalised with mean {tuple(config['mean'])} and std {tuple(config['std'])}")


def run() -> None:
  """`python -m resnet_jax.export` and the console script `resnet-jax-export`."""
  define_flags()
  runner.run(main)
