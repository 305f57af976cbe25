"""A resnet_jax checkpoint to deployable files: `python -m resnet_jax.export --help`.

  --format=pytorch (default): a torchvision-layout state_dict (.safetensors or .pth).
  --format=onnx|tflite|stablehlo: uint8 pictures in, logits out, FILE.json beside it saying
    how to frame a picture; --quantize=int8 for onnx and tflite.
  --evaluate=FILE --workdir=RUN: an exported file's metrics on the run's eval split.

The program's flags and output are in `resnet_jax.cli.export`; docs/export.md has the details.
"""

if __name__ == "__main__":
  from resnet_jax.cli import export
  export.run()
