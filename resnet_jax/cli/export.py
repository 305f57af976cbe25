"""`python -m resnet_jax.export`: a checkpoint to a torchvision-layout state_dict (the default),
an ONNX, LiteRT or StableHLO file with its contract beside it (float32, or int8 for ONNX and
LiteRT), and the eval-split metrics of such a file (`--evaluate=FILE --workdir=RUN`)."""

import os
from collections.abc import Sequence

import jax.numpy as jnp

from resnet_jax.checkpoints import restore
from resnet_jax.cli import runner
from resnet_jax.config import configuration
from resnet_jax.errors import UserError
from resnet_jax.evaluation import deployment, evaluator
from resnet_jax.evaluation.prediction import checkpoint_path
from resnet_jax.interop import artifacts, export, hub, runtimes

DEFAULT_CALIBRATION_IMAGES = 256
QUANTIZATION_TOOLS = {
    "onnx": "onnxruntime.quantization.quantize_static: QDQ, int8 weights per output channel, "
            "uint8 activations, MinMax ranges",
    "tflite": "TFLiteConverter, Optimize.DEFAULT with a representative dataset: int8 weights "
              "and activations"}


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no flags."""
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training (or conversion) workdir to export the best "
                      "checkpoint of, or published weights: torchvision:resnet50, "
                      "hf-hub:timm/resnet50.a1_in1k. With --evaluate: the run whose eval split "
                      "to measure on.")
  flags.DEFINE_string("checkpoint", None, "A checkpoints/ folder or one step's folder.")
  flags.DEFINE_string("format", "pytorch", f"What to write: {', '.join(artifacts.FORMATS)}.")
  flags.DEFINE_string("output", None, f"File to write: pytorch FILE{export.SAFETENSORS} or "
                      f"FILE{export.PTH} (.pth needs PyTorch); onnx FILE.onnx; tflite "
                      "FILE.tflite; stablehlo FILE.stablehlo. FILE.json is written beside "
                      "the last three.")
  flags.DEFINE_string("quantize", "", "int8: post-training static quantization (onnx, tflite), "
                      "calibrated on the run's training pictures.")
  flags.DEFINE_integer("calibration_images", DEFAULT_CALIBRATION_IMAGES,
                       "Training pictures that calibrate --quantize=int8.")
  flags.DEFINE_string("evaluate", None, "An exported .onnx, .tflite or .stablehlo file: print "
                      "its metrics on --workdir's eval split, as --mode=eval does.")
  flags.DEFINE_integer("batch_size", 256, "Pictures per call with --evaluate.", lower_bound=1)
  flags.DEFINE_string("data_dir", "", "Where the run's dataset is now (default: the run's).")
  flags.DEFINE_string("manual_dir", "", "Where its archives are now (default: the run's).")


def main(argv: Sequence[str]) -> None:
  from absl import flags
  FLAGS = flags.FLAGS
  runner.quiet_libraries(quiet=False)
  runner.no_arguments(argv, "pass --workdir=DIR (or --checkpoint=DIR) and --output=FILE")
  if FLAGS.evaluate:
    evaluate_file(FLAGS.evaluate, FLAGS.workdir or FLAGS.checkpoint, FLAGS.batch_size,
                  FLAGS.data_dir, FLAGS.manual_dir)
    return
  artifacts.check_format(FLAGS.format, FLAGS.quantize)
  if FLAGS.format == "pytorch":
    export_state_dict(hub.resolve(checkpoint_path(FLAGS.workdir, FLAGS.checkpoint)), FLAGS.output)
    return
  output = artifacts.check_output(FLAGS.output, FLAGS.format)  # Before the slow part.
  checkpoint = hub.resolve(checkpoint_path(FLAGS.workdir, FLAGS.checkpoint))
  export_file(checkpoint, FLAGS.format, output, FLAGS.quantize,
              FLAGS.calibration_images, FLAGS.data_dir, FLAGS.manual_dir)


def export_state_dict(checkpoint: str, output: str) -> None:
  arch, config, from_ema = export.export_checkpoint(checkpoint, output)
  output = os.path.abspath(output)
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


def run_config(path: str, checkpoint_config: dict, data_dir: str = "", manual_dir: str = ""):
  """The run's config, as --mode=eval reads it, with the data moved where the flags say."""
  config = evaluator.eval_config(path, checkpoint_config, None) if checkpoint_config.get(
      "dataset") != "converted" else configuration.from_json(checkpoint_config)
  for field, value in (("data_dir", data_dir), ("manual_dir", manual_dir)):
    if value:
      config[field] = value
  return config


def export_file(checkpoint: str, name: str, output: str, quantize: str = "",
                calibration_images: int = DEFAULT_CALIBRATION_IMAGES, data_dir: str = "",
                manual_dir: str = "") -> dict:
  """Writes the checkpoint as `name` to output and its contract beside it; returns the contract."""
  loaded = restore.load_model(checkpoint, action="exporting", dtype=jnp.float32)
  contract = deployment.contract(loaded.config, loaded.step, loaded.weights)
  deployable = artifacts.Deployable(
      deployment.logits_function(loaded.model, loaded.variables, loaded.config),
      loaded.variables, loaded.config, contract)
  calibration = None
  if quantize:
    config = run_config(checkpoint, loaded.restored.config, data_dir, manual_dir)
    calibration = deployment.calibration_pictures(config, calibration_images)
    contract["quantization"] = {
        "type": "int8, post-training static", "tool": QUANTIZATION_TOOLS[name],
        "calibration_pictures": len(calibration),
        "calibration_split": config.train_split,
        "calibration_framing": "as evaluation frames pictures (the contract's framing)"}
  if name == "onnx":
    from resnet_jax.interop import onnx_export, quantize as onnx_quantize
    data = onnx_export.onnx_bytes(deployable)
    if calibration is not None:
      data = onnx_quantize.quantize_int8(data, calibration)
  elif name == "tflite":
    from resnet_jax.interop import litert_export
    data = litert_export.tflite_bytes(deployable, calibration)
  else:
    from resnet_jax.interop import stablehlo_export
    data = stablehlo_export.stablehlo_bytes(deployable)
  file = os.path.basename(output)
  facts = {"format": name, "file": file, "quantization": None,
           "usage": artifacts.usage(name, file)}
  if name == "tflite":  # One picture a call: see litert_export.
    contract["input"]["shape"][0] = litert_export.FILE_BATCH
  artifacts.write_all_or_nothing({output: data, artifacts.contract_path(output):
                                  artifacts.contract_bytes(contract, **facts)})
  source = contract["source"]
  print(f"wrote {source['model']} (stem={source['stem']}, width={source['width']}, "
        f"{source['num_classes']} classes, step {source['step']}, {source['weights']} weights) "
        f"as {name}{' int8' if quantize else ''} to {output} ({len(data) / 2**20:.2f} MiB), "
        f"and what it takes and gives to {artifacts.contract_path(output)}")
  batch, height, width, channels = contract["input"]["shape"]
  print(f"it takes uint8 NHWC pictures [{batch or 'batch'}, {height}, {width}, {channels}] "
        "framed as the contract says, and gives logits; run it with:\n  "
        + "\n  ".join(artifacts.usage(name, output)))
  return contract


def evaluate_file(path: str, workdir: str | None, batch_size: int, data_dir: str = "",
                  manual_dir: str = "") -> dict:
  """Prints (and returns) an exported file's metrics on the run's eval split, as --mode=eval."""
  if not workdir:
    raise UserError(f"--evaluate={path} measures on a run's eval split: pass --workdir=RUN too")
  artifacts.format_of(path)
  contract = artifacts.read_contract(path)
  logits_of = runtimes.load_runner(path)
  saved = configuration.read_saved(workdir) or restore.load_variables(workdir).config
  config = run_config(workdir, saved, data_dir, manual_dir)
  expected = list(contract["input"]["shape"][1:])
  if [int(d) for d in config.input_shape] != expected:
    raise UserError(f"{path} takes {expected} pictures but {workdir} frames them as "
                    f"{list(config.input_shape)}: evaluate it on the run it was exported from")
  totals = deployment.evaluate_logits(config, logits_of, batch_size)
  source = contract.get("source", {})
  result = {"step": source.get("step"), "checkpoint": os.path.abspath(path),
            "eval_split": config.eval_split, **evaluator.summarize(totals),
            "eval_weights": source.get("weights"), "eval_tta": "none",
            "class_names": list(contract.get("class_names") or config.get("class_names") or [])}
  print(evaluator.format_eval(result))
  return result


def run() -> None:
  """`python -m resnet_jax.export` and the console script `resnet-jax-export`."""
  define_flags()
  runner.run(main)
