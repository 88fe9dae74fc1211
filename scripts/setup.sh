#!/usr/bin/env bash
# Creates .venv with the pinned dependency set (pyproject.toml) and the package in editable mode.
# Idempotent: a second run only checks. Needs Python 3.11 (torch 2.14.1 / torchvision 0.29.1 wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

# The real default dataset: Debian's dataset-fashion-mnist (31 MB) when apt is at hand.
FM=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FM" ] && [ -z "${SIAMIM_FASHION_MNIST:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' or put the four" \
         "IDX files in a directory and export SIAMIM_FASHION_MNIST=<dir>" >&2
  fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
# pip (not uv/poetry): it picks up the local torch wheels instead of downloading GBs.
python -m pip install -q --upgrade "pip>=24" >/dev/null
python -m pip install -q -e ".[test]"
python -c "import torch, torchvision, timm, ray, mlflow; print(f'siamim env: torch {torch.__version__}, timm {timm.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}')"
