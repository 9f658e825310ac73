#!/usr/bin/env bash
# Download, here (with network), the cp312 manylinux wheels the GPU machine lacks, into bench/gpu/wheels/
# (git-ignored; must stay <= 64 MB, the device tool's carry limit). The GPU image (docs: KINDS.md) has torch,
# numpy, tensorboard, rich, typer, tqdm, xxhash, pyyaml, transformers, safetensors, psutil, jinja2; it lacks
# megatron-core and the kit's pydantic stack, orjson and zstandard.
#   bash bench/gpu/fetch_wheels.sh [DEST]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/wheels}"
mkdir -p "$dest"
PY="${PYTHON:-python3}"
# name==version, one each (two versions of one package stop the install there)
WHEELS=(
  megatron-core==0.16.1
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  orjson==3.13.0 zstandard==0.25.0
)
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do plat+=(--platform "$p"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$dest" "${WHEELS[@]}"
size=$(du -sm "$dest" | cut -f1)
echo "wheels in $dest: $(ls "$dest" | wc -l) files, ${size} MB"
if [ "$size" -gt 64 ]; then echo "ERROR: $dest is ${size} MB, over the 64 MB carry limit" >&2; exit 1; fi
