#!/usr/bin/env bash
# Unpack the carried build packages (tests/gpu/carry-debs.sh) on a machine without a mirror,
# only when the libraries the build links are missing. Files are added, never replaced (the
# machine's own, possibly newer, libraries stay); no maintainer scripts run, so the build names
# the OpenBLAS directories itself (Makefile).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d .gpu-debs ] || exit 0
missing=0
for h in /usr/include/libconfig.h /usr/include/zstd.h /usr/include/xxhash.h /usr/include/jansson.h \
    /usr/include/slurm/pmi2.h /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h; do
    [ -e "$h" ] || missing=1
done
[ $missing = 1 ] || exit 0
echo "unpacking carried build packages (.gpu-debs)" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in .gpu-debs/*.deb; do dpkg -x "$f" "$tmp"; done
cp -Rn "$tmp"/. /
ldconfig
