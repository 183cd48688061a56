#!/usr/bin/env bash
# Create or update .venv with the fork installed (editable) and test tools.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

blas=/usr/lib/x86_64-linux-gnu/libopenblas.so.0
if [ ! -e "$blas" ] && [ "$(uname -s)" = Linux ]; then
  apt_install() { "$@" apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 \
    || { "$@" apt-get update -qq >/dev/null 2>&1 && "$@" apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1; }; }
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing OpenBLAS (libopenblas0-pthread)"
    apt_install || echo "setup: WARNING: could not install libopenblas0-pthread"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "setup: installing OpenBLAS with sudo (libopenblas0-pthread)"
    apt_install sudo || echo "setup: WARNING: could not install libopenblas0-pthread"
  else
    echo "setup: WARNING: OpenBLAS is missing and this user cannot install it."
    echo "       float32 models will run ~40x slower. Ask an admin to run:"
    echo "       apt-get install libopenblas0-pthread"
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e . -r tools/requirements-dev.txt
.venv/bin/python -c "import importlib.metadata as m; print('setup: mlx-lm', m.version('mlx-lm'), '| mlx', m.version('mlx'))"
