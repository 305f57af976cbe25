#!/usr/bin/env bash
# Refreshes requirements/lock.txt: the newest releases that satisfy pyproject.toml's base
# dependencies and its `test` and `export` extras, resolved for Python 3.11 on Linux x86_64
# (whatever machine runs this). PyTorch is not a base dependency and stays out (CI installs its
# CPU build itself).
#   bash scripts/update_lock.sh            # needs uv: pip install uv
set -euo pipefail
cd "$(dirname "$0")/.."
# requirements/resolver-constraints.txt: releases uv would pick but pip cannot install (see there).
uv pip compile pyproject.toml --extra test --extra export --upgrade \
  --constraint requirements/resolver-constraints.txt \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command "bash scripts/update_lock.sh" \
  --output-file requirements/lock.txt
