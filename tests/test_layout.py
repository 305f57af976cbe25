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
    "checkpoints": {"config", "models", "errors"},
    "interop": {"models", "checkpoints", "errors"},
    "reporting": {"errors"},
    "evaluation": {"data", "models", "checkpoints", "config", "sharding", "errors"},
    "train": {"data", "models", "checkpoints", "config", "sharding", "errors", "interop",
              "evaluation", "reporting"},
    "cli": {"data", "models", "checkpoints", "config", "sharding", "errors", "interop",
            "evaluation", "reporting", "train"},
}
WORKER_MODULES = ("data/sources.py", "data/examples.py", "data/workers.py", "data/images.py")  # Imported by the worker processes.


def _module_imports(path: pathlib.Path) -> set[str]:
  """The resnet_jax modules (dotted, below the package) a file imports, lazy imports included."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resnet_jax":
      parts = node.module.split(".")[1:]
      # `from resnet_jax.pkg import module` names modules; `from resnet_jax.pkg.mod import x` one.
      found |= ({".".join([*parts, a.name]) for a in node.names} if len(parts) == 1
                else {".".join(parts)})
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("resnet_jax.")}
  return found


def _module_name(path: pathlib.Path) -> str:
  return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every cycle of a directed graph, each once, as a list of nodes (Tarjan's components)."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in graph.get(node, ()):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1 or node in graph.get(node, ()):
        components.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return components


def test_import_cycles_finds_a_circle_and_only_circles():
  assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert import_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_imports_itself_back_through_others():
  """No import circle between modules, inside a package as well as across packages."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
  graph = {name: {m for m in _module_imports(path) if m in modules}
           for name, path in modules.items()}
  assert import_cycles(graph) == []


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
