"""What every deployment format shares: the formats and their toolchains, output checks, writing
a file and its contract beside it all or nothing, and running an exported file by its extension.

Each exported file FILE gets FILE.json beside it (the contract: what a caller
does to a picture, what goes in and comes out); `docs/export.md` describes it.
"""

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from resnet_jax.errors import UserError

FORMATS = ("pytorch", "onnx", "tflite", "stablehlo")
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite", "stablehlo": ".stablehlo"}
QUANTIZABLE = ("onnx", "tflite")  # Post-training static int8, by each format's own tool.
CONTRACT_SUFFIX = ".json"
EXTRA = "pip install -e '.[export]'"
# (module, what installs it) for each format; torch is not in the export extra (see pyproject).
TOOLCHAINS = {
    "onnx": (("torch", "pip install torch"), ("onnx", EXTRA), ("onnxscript", EXTRA),
             ("onnxruntime", EXTRA)),
    "tflite": (("tensorflow", "pip install tensorflow-cpu"), ("ai_edge_litert", EXTRA)),
    "stablehlo": (),
}
# What running an exported file needs: its runtime alone.
RUNTIMES = {"onnx": (("onnxruntime", EXTRA),), "tflite": (("ai_edge_litert", EXTRA),),
            "stablehlo": ()}


class Deployable(NamedTuple):
  """A checkpoint ready to export: its network both ways and the contract of its input."""
  logits: Callable[[Any], Any]  # JAX: uint8 [B, H, W, C] framed pictures -> float32 logits.
  variables: dict  # {"params", "batch_stats"} for the PyTorch-layout state_dict.
  config: dict  # The checkpoint's saved config.
  contract: dict  # evaluation.deployment.contract(...): pictures in, logits out.


def check_format(name: str, quantize: str = "") -> None:
  """A UserError naming the problem when the format or its quantization is unknown or absent."""
  if name not in FORMATS:
    raise UserError(f"unknown --format={name}: choose one of {', '.join(FORMATS)}")
  if quantize and quantize != "int8":
    raise UserError(f"unknown --quantize={quantize}: the one quantization is int8 (or leave "
                    "it out for float32)")
  if quantize and name not in QUANTIZABLE:
    raise UserError(f"--quantize=int8 is for --format=onnx or tflite, not {name}: leave it out")
  require(TOOLCHAINS.get(name, ()), f"--format={name}")


def require(modules: tuple[tuple[str, str], ...], what: str) -> None:
  """A one-line UserError naming the missing modules of `modules` and what installs them."""
  missing = [(module, how) for module, how in modules if not _importable(module)]
  if missing:
    installs = sorted({how for _, how in missing})
    raise UserError(f"{what} needs {', '.join(m for m, _ in missing)}, which "
                    f"{'is' if len(missing) == 1 else 'are'} not installed: "
                    f"{' and '.join(installs)}")


def _importable(module: str) -> bool:
  import importlib.util
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def check_output(output: str | None, name: str) -> str:
  """The absolute path of an output FILE that this format may write, or a UserError."""
  extension = EXTENSIONS[name]
  if not output:
    raise UserError(f"pass --output=FILE{extension}")
  path = os.path.abspath(output)
  if os.path.isdir(path):
    raise UserError(f"--output={output} is a directory: pass a file inside it, such as "
                    f"{os.path.join(output, 'model' + extension)}")
  if not path.lower().endswith(extension):
    raise UserError(f"--output={output} does not end in {extension}: name the "
                    f"--format={name} file FILE{extension}")
  check_folder(output)
  return path


def check_folder(output: str) -> None:
  """A UserError unless the folder an output file goes in exists and can be written."""
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    state = "is not a directory" if os.path.exists(parent) else "does not exist"
    raise UserError(f"cannot write {output}: {parent} {state}; create the directory or pass "
                    "another --output")
  if not os.access(parent, os.W_OK):
    raise UserError(f"cannot write {output}: directory {parent} is read-only; pass another "
                    "--output")


def contract_path(output: str) -> str:
  return output + CONTRACT_SUFFIX


def write_all_or_nothing(files: Mapping[str, bytes]) -> None:
  """Writes each path's bytes under a temporary name in its folder, then renames them all.

  A failure leaves none of them (and no temporary file) behind.
  """
  written: list[tuple[str, str]] = []
  renamed: list[str] = []
  try:
    for path, data in files.items():
      handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                         suffix=".partial", dir=os.path.dirname(path))
      written.append((partial, path))
      with os.fdopen(handle, "wb") as f:
        f.write(data)
      os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the file from other users.
    for partial, path in written:
      os.replace(partial, path)
      renamed.append(path)
  except OSError as e:
    # A model without its contract (or the reverse) is half an export: none of it stays.
    for path in [partial for partial, _ in written] + renamed:
      if os.path.exists(path):
        os.remove(path)
    raise UserError(f"cannot write {next(iter(files))} ({e.strerror or e}): free disk space or "
                    "pass another --output") from None


def contract_bytes(contract: Mapping[str, Any], **facts: Any) -> bytes:
  return (json.dumps({**facts, **contract}, indent=2) + "\n").encode()


def read_contract(path: str) -> dict:
  """The contract beside an exported file; a UserError when it is missing or unreadable."""
  try:
    with open(contract_path(path)) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} has no {os.path.basename(contract_path(path))} beside it: export "
                    "it again with python -m resnet_jax.export") from None
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {contract_path(path)} ({e}): export {path} again") from None


def format_of(path: str) -> str:
  """The format of an exported file, by its extension; a UserError for anything else."""
  if not os.path.isfile(path):
    raise UserError(f"--evaluate={path} is not a file: pass a file that python -m "
                    "resnet_jax.export wrote")
  name = next((n for n, e in EXTENSIONS.items() if path.lower().endswith(e)), None)
  if name is None:
    raise UserError(f"{path} is not an exported model: pass a "
                    f"{', '.join(EXTENSIONS.values())} file")
  return name


def usage(name: str, file: str) -> list[str]:
  """Python lines that run an exported file without resnet_jax: `pictures` is uint8 NHWC."""
  if name == "onnx":
    return ["import onnxruntime as ort",
            f"session = ort.InferenceSession({file!r})",
            "logits = session.run(['logits'], {'images': pictures})[0]"]
  if name == "tflite":
    return ["from ai_edge_litert.interpreter import Interpreter",
            f"interpreter = Interpreter(model_path={file!r})",
            "interpreter.allocate_tensors()",
            "interpreter.set_tensor(interpreter.get_input_details()[0]['index'], "
            "pictures[:1])  # one picture a call",
            "interpreter.invoke()",
            "logits = interpreter.get_tensor(interpreter.get_output_details()[0]['index'])"]
  return ["import jax",
          f"exported = jax.export.deserialize(bytearray(open({file!r}, 'rb').read()))",
          "logits = exported.call(pictures)"]
