"""requirements/lock.txt pins what pyproject.toml asks for: base install and `test` extra, Linux x86_64."""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The lock's target (scripts/update_lock.sh): Python 3.11 on Linux x86_64.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "platform_machine": "x86_64",
          "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _pins() -> dict[str, str]:
  text = (ROOT / "requirements" / "lock.txt").read_text()
  return {canonicalize_name(name): version
          for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE)}


def _wanted() -> list[Requirement]:
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  wanted = [Requirement(r) for r in
            project["dependencies"] + project["optional-dependencies"]["test"]]
  return [r for r in wanted if r.marker is None or r.marker.evaluate({**TARGET, "extra": ""})]


def test_every_dependency_is_pinned_within_its_bounds():
  """Fails after a dependency is added or its bound raised without `bash scripts/update_lock.sh`."""
  pins = _pins()
  missing = [str(r) for r in _wanted() if canonicalize_name(r.name) not in pins]
  assert not missing, f"not in requirements/lock.txt: {missing}: run bash scripts/update_lock.sh"
  outside = [f"{r} (locked {pins[canonicalize_name(r.name)]})" for r in _wanted()
             if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
  assert not outside, f"{outside}: run bash scripts/update_lock.sh"


def test_no_pytorch_or_cuda_in_the_lock():
  """PyTorch is installed apart (its CPU build); a pin here would pull the CUDA one."""
  pins = _pins()
  assert "jax" in pins and "tensorflow-cpu" in pins
  assert not [n for n in pins if n.startswith(("torch", "nvidia-")) or "cuda" in n]
