#!/usr/bin/env bash
# Fills .gpu_carry/ (ignored by git) with what a bare GPU node lacks for
# scripts/gpu_check.sh: the header-only CLI11 and nlohmann/json, GoogleTest's
# sources (Debian's libcli11-dev, nlohmann-json3-dev, libgtest-dev), and the
# author's MASS code when a snapshot of it is at hand (for tools/bench_mass.py;
# never committed). Run it on a machine where scripts/setup.sh has run.
#   bash scripts/gpu_carry.sh [MASS_GIT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
rm -rf "$CARRY"
mkdir -p "$CARRY/include"
cp -r /usr/include/CLI "$CARRY/include/"
cp -r /usr/include/nlohmann "$CARRY/include/"
cp -r /usr/src/googletest "$CARRY/googletest"
MASS_GIT=${1:-/work/.mirror/Stanford-AIMI+MASS/repo}
if [ -d "$MASS_GIT" ]; then
  mkdir -p "$CARRY/MASS"
  git --git-dir="$MASS_GIT" archive HEAD models | tar -x -C "$CARRY/MASS"
fi
du -sh "$CARRY"
