#!/usr/bin/env bash
# GPU machines lent for a session often have no package mirror. On this (Debian) machine,
# download the packages the build needs into .gpu-debs/ (ignored by git) so they can travel
# with the working tree (the device tool: carry [".gpu-debs"]); `make test-gpu` and
# `make bench-gpu` unpack them there (tests/gpu/unpack-debs.sh) when the libraries are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PKGS="libconfig-dev libconfig9 libzstd-dev libzstd1 libxxhash-dev libxxhash0 libjansson-dev libjansson4
      libopenblas-openmp-dev libopenblas0-openmp libopenblas-dev libopenblas0 libgfortran5 libquadmath0 libpmi2-0-dev libpmi2-0 pkg-config"
mkdir -p .gpu-debs
cd .gpu-debs
# shellcheck disable=SC2086
apt-get download $PKGS
ls -la
