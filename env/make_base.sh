#!/usr/bin/env bash
# The CPU image's base, made locally (no registry is reachable here): a minimal Debian bookworm with
# Python 3.11 from Debian's mirror, by mmdebstrap, with a fixed SOURCE_DATE_EPOCH so the tarball is
# bit-identical for one state of the mirror. Usage: env/make_base.sh OUT.tar [EPOCH]
set -euo pipefail
out=${1:?usage: env/make_base.sh OUT.tar [SOURCE_DATE_EPOCH]}
export SOURCE_DATE_EPOCH=${2:-0}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/cache/ldconfig/aux-cache' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*' \
    bookworm "$out" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"
touch -d "@$SOURCE_DATE_EPOCH" "$out"
