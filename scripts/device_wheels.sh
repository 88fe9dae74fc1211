#!/usr/bin/env bash
# Prepares what the device kit (scripts/device_check.sh) needs beyond a bare GPU image, in .device/
# (ignored by git; carried to the GPU machine by naming it):
#   .device/wheels/         the config's pure-Python + binary wheels for Python 3.12 manylinux x86_64
#                           (pydantic and its dependencies; the image has torch, timm, numpy, pyyaml)
#   .device/fashion-mnist/  the four Fashion-MNIST IDX files (31 MB) for the end-to-end run and the grid
# Usage (on a machine with the registry, from the repository root): bash scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHEELS=.device/wheels
DATA=.device/fashion-mnist
# pydantic and what it needs, at the versions this project's environment resolved (pyproject.toml pins
# pydantic; scripts/setup.sh installed it): one version of each, so the offline install has no choice to make.
PACKAGES=($("$PY" - <<'PYEOF'
import importlib.metadata as md
print(" ".join(f"{n}=={md.version(n)}" for n in
               ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")))
PYEOF
))
echo "wheels for Python 3.12 manylinux x86_64: ${PACKAGES[*]}"
rm -rf "$WHEELS" && mkdir -p "$WHEELS" "$DATA"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEELS" "${PACKAGES[@]}"
SRC=${SIAMIM_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ -f "$SRC/$f.gz" ]; then cp "$SRC/$f.gz" "$DATA/"; elif [ -f "$SRC/$f" ]; then gzip -c "$SRC/$f" >"$DATA/$f.gz"
  else echo "missing $SRC/$f(.gz): install dataset-fashion-mnist or set SIAMIM_FASHION_MNIST" >&2; exit 1; fi
done
ls -l "$WHEELS" "$DATA"
du -sh .device
