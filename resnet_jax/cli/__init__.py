"""The command line: the one runner that turns exceptions into `error:` lines and exit codes
(runner.py), joining a multi-process run (distributed.py), JAX's persistent compilation cache
(compile_cache.py), and the flags and output of each program (predict.py, convert.py,
export.py, plot.py; training is `resnet_jax/main.py`).

Imports from any package; nothing imports it but the entry points.
"""
