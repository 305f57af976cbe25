"""`python -m resnet_jax.predict`: classify images or folders with a checkpoint (flags and output)."""

import os
from collections.abc import Sequence

from resnet_jax.cli import compile_cache, runner
from resnet_jax.errors import UserError
from resnet_jax.evaluation import explain, prediction
from resnet_jax.interop import hub


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no flags."""
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training (or conversion) workdir to load the best "
                      "checkpoint of, or published weights: torchvision:resnet50, "
                      "hf-hub:timm/resnet50.a1_in1k.")
  flags.DEFINE_string("checkpoint", None, "A checkpoints/ folder or one step's folder.")
  flags.DEFINE_integer("top_k", 5, "Classes to show per file.", lower_bound=1)
  flags.DEFINE_integer("batch_size", prediction.DEFAULT_BATCH_SIZE,
                       "Images read and classified at a time.", lower_bound=1)
  flags.DEFINE_string("output", None, "Also write the predictions to FILE.json or FILE.csv.")
  flags.DEFINE_string("explain", None, "Also write a Grad-CAM heat map over each picture, for "
                      "its top class, as DIR/<name>.png.")
  flags.DEFINE_string("tta", None, "Test-time augmentation: none, flip or flip_translate; "
                      "default: the run's eval_tta.")
  flags.DEFINE_float("threshold", None, "A multi-label run lists every class whose sigmoid "
                     "probability is above this; default: the run's multi_label_threshold.")


def main(argv: Sequence[str]) -> int:
  from absl import flags
  FLAGS = flags.FLAGS
  runner.quiet_libraries(quiet=False)  # Orbax logs each restore at INFO.
  compile_cache.enable()
  if len(argv) < 2:
    raise UserError("pass image files or folders to classify: python -m resnet_jax.predict "
                    "--workdir=DIR IMAGE_OR_FOLDER...")
  # A published name (torchvision:resnet50, hf-hub:timm/...) becomes its cached conversion.
  checkpoint = hub.resolve(prediction.checkpoint_path(FLAGS.workdir, FLAGS.checkpoint))
  if FLAGS.output:
    prediction.check_output(FLAGS.output)  # Before the slow part, and again when writing.
  if FLAGS.explain:
    explain.check_directory(FLAGS.explain)
  files = prediction.expand_paths(argv[1:])
  predictor = prediction.load_predictor(checkpoint, FLAGS.tta, FLAGS.threshold)
  results = []
  for result in prediction.classify(predictor, files, FLAGS.top_k, FLAGS.batch_size):
    print_result(result, predictor.threshold if predictor.multi_label else None)
    results.append(result)
  if FLAGS.output:
    prediction.write_results(FLAGS.output, results)
    print(f"wrote {os.path.abspath(FLAGS.output)}")
  if FLAGS.explain:
    written = explain.explain_files(predictor, files, FLAGS.explain, FLAGS.batch_size)
    print(f"wrote {len(written)} Grad-CAM heat map(s) to {os.path.abspath(FLAGS.explain)}")
  return 1 if any("error" in r for r in results) else 0


def print_result(result: dict, threshold: float | None = None) -> None:
  """A file and its predictions; `threshold` for a multi-label run, which may list none."""
  if "error" in result:
    runner.print_error(result["error"])
    return
  print(result["file"])
  for p in result["predictions"]:
    print(f"  {p['probability']:.4f}  {p['class']}")
  if threshold is not None and not result["predictions"]:
    print(f"  (no class above {threshold:g})")


def run() -> None:
  """`python -m resnet_jax.predict` and the console script `resnet-jax-predict`."""
  define_flags()
  runner.run(main)
