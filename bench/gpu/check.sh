#!/usr/bin/env bash
# The prepared GPU check (issues 19 and 31). On the GPU machine, from the repository root:
#   bash bench/gpu/check.sh OUT --part 1 --commit SHA      (first: 1B BF16 kit vs bare, FP8 at 1B)
#   bash bench/gpu/check.sh OUT --part 2 --commit SHA      (second: 3B BF16 vs FP8, fusions, deterministic)
# installs bench/gpu/wheels/*.whl (bench/gpu/fetch_wheels.sh, run beforehand where there is network) into a
# target folder on PYTHONPATH, then runs bench/gpu/check.py. --dry-run stops before the first CUDA call.
set -euo pipefail
out="${1:?usage: check.sh OUT --part 1|2|repeat [--commit SHA] [--dry-run] [--only k8,b8]}"; shift
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PY="${PYTHON:-python3}"
site="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/gpu-check-site}"
if ! ls "$here"/wheels/*.whl >/dev/null 2>&1; then
  echo "ERROR: no wheels in $here/wheels; run bash bench/gpu/fetch_wheels.sh first (where there is network)" >&2
  exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$here"/wheels/*.whl
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
"$PY" -c "
import sys, importlib.metadata as md
def v(n):
    try: return md.version(n)
    except md.PackageNotFoundError: return 'missing'
print('python', sys.version.split()[0], *(f'{n} {v(n)}' for n in ('torch', 'megatron-core', 'pydantic', 'numpy')))
import glob, importlib.util, pydantic, orjson, zstandard  # the carried compiled wheels load here
so = [f for p in sys.path for f in glob.glob(p + '/megatron/core/datasets/helpers_cpp*.so')][0]
importlib.util.module_from_spec(importlib.util.spec_from_file_location('helpers_cpp', so))
"
cd "$repo"
exec "$PY" bench/gpu/check.py --out "$out" "$@"
