"""The package tree is the architecture: imports run one way, from the entry points down."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "resnet_jax"
ENTRY_POINTS = {"main", "predict", "convert", "export", "plot"}
# What each package may import, as its __init__ says.
ALLOWED = {
    "errors": set(),
    "sharding": set(),
    "models": {"errors"},
    "config": {"models", "errors"},
    "data": {"sharding", "errors"},
    "checkpoints": {"config", "errors"},
    "interop": {"models", "checkpoints", "errors"},
    "reporting": {"errors"},
    "evaluation": {"data", "models", "checkpoints", "config", "sharding", "errors"},
    "train": {"data", "models", "checkpoints", "config", "sharding", "errors", "interop",
              "evaluation", "reporting"},
    "cli": {"data", "models", "checkpoints", "config", "sharding", "errors", "interop",
            "evaluation", "reporting", "train"},
}
WORKER_MODULES = ("data/sources.py", "data/examples.py", "data/workers.py", "data/images.py")  # Imported by the worker processes.


def _imports(path: pathlib.Path) -> set[str]:
  """The top-level resnet_jax names (packages or modules) that a file imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resnet_jax":
      parts = node.module.split(".")
      found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("resnet_jax.")}
  return found


def _owner(path: pathlib.Path) -> str:
  relative = path.relative_to(PACKAGE)
  return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_every_module_belongs_to_a_known_package_or_is_an_entry_point():
  owners = {_owner(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
  assert owners <= set(ALLOWED) | ENTRY_POINTS, owners - set(ALLOWED) - ENTRY_POINTS


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
  owner = _owner(path)
  if owner in ENTRY_POINTS or owner == "__init__":
    return
  upward = _imports(path) - ALLOWED[owner] - {owner}
  assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}, above {owner}"


def test_entry_points_are_thin():
  for name in ENTRY_POINTS:
    lines = (PACKAGE / f"{name}.py").read_text().splitlines()
    assert len(lines) <= 70, f"resnet_jax/{name}.py has {len(lines)} lines"


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_worker_modules_import_neither_jax_nor_tensorflow_at_top_level(module):
  tree = ast.parse((PACKAGE / module).read_text())
  top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
  names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
  names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
  assert not names & {"jax", "tensorflow", "flax", "grain"}, names


def test_worker_processes_load_neither_jax_nor_grain():
  """What a worker imports (the forkserver's preload and the transform's pickle) stays light."""
  code = ("import sys; import resnet_jax.data.workers, resnet_jax.data.examples, "
          "resnet_jax.data.sources; "
          "print(sorted(m for m in ('jax', 'grain', 'tensorflow', 'flax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=PACKAGE.parent).stdout.strip()
  assert out == "[]", out


def test_no_module_is_over_400_lines():
  long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > 400}
  assert not long, long
