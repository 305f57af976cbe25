"""Where a run's state is written and read back.

checkpointing.py: Orbax checkpoints, the latest N and the best, saved asynchronously.
checksums.py: one sum per array, to catch changed bytes.
restore.py: the one read path: a checkpoint's network and weights (`load_model`) for eval,
  predict, features, export and fine-tuning.
pins.py: a reader's hard links to the step it reads, out of reach of the pruning.
workdir.py: the run directory: checks, the lock.
processes.py: atomic JSON naming a process, and whether it runs (the lock's and the pins' leaf).

May import `config`, `models` and `errors`.
"""
