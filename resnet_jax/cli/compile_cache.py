"""JAX's persistent compilation cache, on by default: a resumed run loads its compiled steps.

  RESNET_JAX_COMPILATION_CACHE unset   <cache>/jax_compilation, where <cache> is
                                       $RESNET_JAX_CACHE (default ~/.cache/resnet_jax)
  RESNET_JAX_COMPILATION_CACHE=DIR     DIR instead
  RESNET_JAX_COMPILATION_CACHE=off     no persistent cache

A JAX_COMPILATION_CACHE_DIR set by the user (or a jax_compilation_cache_dir set
in Python before a run starts) wins over all but `off`, and then JAX's settings
are left as they are; JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS and
JAX_COMPILATION_CACHE_MAX_SIZE, where set, win over the thresholds below.
A folder that cannot be created or written costs one warning, never the run.

Several processes may share the folder. JAX (checked in jax 0.10.2,
jax/_src/lru_cache.py, `LRUCache.put`) does not write an entry atomically: it
writes it in place, with no temporary name and rename. With a maximum size set,
as here, it holds a file lock (`<folder>/.lockfile`) around every read and
write of an entry, so no process reads a half-written one; and of a multi-host
run only process 0 writes (jax/_src/compiler.py, `_cache_write`). An entry that
still cannot be read (its writer killed half way) is not trusted: JAX warns
("Error reading persistent compilation cache entry") and compiles afresh
(`_cache_read`); deleting the folder clears it.
"""

import os
import tempfile

from absl import logging

ENV = "RESNET_JAX_COMPILATION_CACHE"
OFF = "off"
SUBDIR = "jax_compilation"
# What compiles faster is not worth a file. A resumed ResNet-18 on 2 CPU cores compiled its train
# step in 7.6 s, init 4.3 s, the finiteness check 2.2 s, eval 1.3 s, two random-key functions 0.1
# and 0.25 s, four more in 20-60 ms each; JAX's default, 1 s, would leave the ones under it out.
MIN_COMPILE_TIME_S = 0.1
# Oldest-read entries go beyond this; setting a size is also what makes JAX lock (see above).
MAX_SIZE_BYTES = 2 * 2**30


def enable() -> str | None:
  """Points JAX's persistent compilation cache at its folder; returns the folder, or None (off)."""
  import jax
  value = os.environ.get(ENV, "").strip()
  if value.lower() == OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if jax.config.jax_compilation_cache_dir:  # The user's own choice, through JAX: left as set.
    if value:
      logging.info("%s ignored: JAX_COMPILATION_CACHE_DIR is set (%s)", ENV,
                   jax.config.jax_compilation_cache_dir)
    return jax.config.jax_compilation_cache_dir
  if value:
    folder = os.path.abspath(os.path.expanduser(value))
  else:
    from resnet_jax.interop import hub
    folder = os.path.join(hub.cache_dir(), SUBDIR)
  problem = _unwritable(folder)
  if problem:
    logging.warning("compilation cache off: cannot write to %s (%s); set %s=DIR to move it or "
                    "%s=off to silence this", folder, problem, ENV, ENV)
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  _set_limits(jax)
  return folder


def _set_limits(jax) -> None:
  """Our thresholds, where the user did not set JAX's own."""
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
    jax.config.update("jax_compilation_cache_max_size", MAX_SIZE_BYTES)


def _unwritable(folder: str) -> str | None:
  """Why folder cannot hold the cache, or None."""
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return None
