#!/usr/bin/env bash
# The device kit on a bare GPU machine: every GPU figure in one call, under 8 minutes on one H100/H200.
#   bash scripts/device_check.sh OUT_DIR [kit flags: --smoke, --sections step,views, --device cpu]
# Needs, beside the image's python3 with torch, timm, numpy, pyyaml: pydantic (installed here from the
# wheels in .device/wheels when missing) and Fashion-MNIST (.device/fashion-mnist when the default
# location is empty). Prepare both with `bash scripts/device_wheels.sh` where the registry is reachable
# and carry .device along (docs/benchmarks.md). Writes OUT_DIR/kit.json, kit.md, kit.log and the grid's CSVs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/device_check.sh OUT_DIR [kit flags]}
shift
mkdir -p "$OUT"
PY=${PYTHON:-python3}  # the image's python3 holds torch; here: PYTHON=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if [ ! -d .device/wheels ]; then
    echo "pydantic is missing and there is no .device/wheels: run scripts/device_wheels.sh and carry .device" >&2
    exit 2
  fi
  SITE=${SIAMIM_DEVICE_SITE:-/tmp/siamim-site}
  "$PY" -m pip install --quiet --no-index --find-links .device/wheels --target "$SITE" --no-compile \
    --disable-pip-version-check pydantic || exit 2
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
if [ -z "${SIAMIM_FASHION_MNIST:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .device/fashion-mnist ]; then
  export SIAMIM_FASHION_MNIST="$PWD/.device/fashion-mnist"
fi
"$PY" -c "import pydantic, yaml; print('pydantic', pydantic.VERSION, 'from', pydantic.__file__)" 2>&1 | tee "$OUT/kit.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 2
"$PY" -m benchmarks.device_kit --out "$OUT" "$@" 2>&1 | tee -a "$OUT/kit.log"
exit "${PIPESTATUS[0]}"
