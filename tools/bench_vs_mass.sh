#!/usr/bin/env bash
# One-shot inference, iris against the author's model (Stanford-AIMI/MASS), in
# one run on this machine: the same architecture, patch, classes and threads,
# both on the same PyTorch: the project's .venv torch (scripts/setup.sh) is the
# Python side of the LibTorch iris links (IRIS_PYTHON: another one). Both sides
# run with the same glibc allocator settings: iris-bench keeps freed memory
# (app::keep_freed_memory, mallopt), and the Python side gets the same three
# settings through glibc's MALLOC_* variables. Prints one JSON object with both
# medians and the ratio (MASS time / iris time: above 1, iris is faster).
#   tools/bench_vs_mass.sh BUILD_DIR MASS_CHECKOUT [PATCH] [THREADS] [REPEATS] [WARMUP] [WORKLOAD]
# WORKLOAD: inference (default), or train to time one training step as well:
# forward on a reference and a query, BCE loss, backward (no optimiser step on
# either side: for 9 M parameters it is milliseconds of a step of seconds).
# iris runs as iris-infer and iris-train run it: channels-last convolutions
# (IrisNet::set_channels_last); the author's code runs as written.
# The architecture is the author's (iris's mass preset) with the narrow
# channels 8 16 32 32 64 and 5 memory-bank rows, so that a CPU can run it:
# both sides report 8,999,061 parameters. 128^3, 3 classes, one reference
# encoded and one query segmented.
set -euo pipefail
USAGE="usage: bench_vs_mass.sh BUILD_DIR MASS_CHECKOUT [PATCH] [THREADS] [REPEATS] [WARMUP] [inference|train]"
BUILD=${1:?$USAGE}
MASS=${2:?$USAGE}
PATCH=${3:-128}
THREADS=${4:-1}
REPEATS=${5:-3}
WARMUP=${6:-1}
WORKLOAD=${7:-inference}
case "$WORKLOAD" in
  inference) STEP=(--no-backward) ;;
  train) STEP=() ;;
  *) echo "bench_vs_mass.sh: WORKLOAD '$WORKLOAD' is neither inference nor train" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$BUILD/iris-bench" ] || { echo "bench_vs_mass.sh: $BUILD/iris-bench not built" >&2; exit 2; }
[ -f "$MASS/models/iris.py" ] || { echo "bench_vs_mass.sh: $MASS is not a MASS checkout (no models/iris.py)" >&2; exit 2; }
PY=${IRIS_PYTHON:-$HERE/.venv/bin/python}
[ -x "$PY" ] || { echo "bench_vs_mass.sh: no Python at $PY (run scripts/setup.sh, or set IRIS_PYTHON)" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
MALLOC_MMAP_THRESHOLD_=$((1 << 30)) MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=$((256 << 20)) \
  "$PY" "$HERE/tools/bench_mass.py" --mass "$MASS" --patch "$PATCH" --threads "$THREADS" \
  --channels 8 16 32 32 64 --classes 3 --repeats "$REPEATS" --warmup "$WARMUP" --no-forward "${STEP[@]}" \
  > "$TMP/mass.json"
"$BUILD/iris-bench" --preset mass --set 'channels=[8,16,32,32,64]' --set memory_bank_size=5 \
  --set max_patch_size="$PATCH" --patch "$PATCH" --threads "$THREADS" --classes 3 --repeats "$REPEATS" --warmup "$WARMUP" \
  --channels-last --stages --no-forward "${STEP[@]}" > "$TMP/iris.json"
"$PY" - "$TMP/mass.json" "$TMP/iris.json" <<'PY'
import json, sys
mass, iris = (json.load(open(p)) for p in sys.argv[1:3])
m = mass["inference_one_reference"]["median_ms"]
i = iris["inference_one_reference"]["median_ms"]
print(json.dumps({"patch": iris["patch"], "threads": iris["threads"], "classes": iris["classes"],
                  "torch": {"iris": iris["torch_version"], "mass": mass["torch_version"]},
                  "parameters": {"iris": iris["parameters"], "mass": mass["parameters"]},
                  "one_shot_ms": {"iris": i, "mass": m, "ratio_mass_over_iris": round(m / i, 3)},
                  "training_step_ms": None if iris.get("forward_backward") is None else {
                      "iris": iris["forward_backward"]["median_ms"], "mass": mass["forward_backward"]["median_ms"],
                      "ratio_mass_over_iris": round(mass["forward_backward"]["median_ms"] /
                                                    iris["forward_backward"]["median_ms"], 3)},
                  "iris_stages": iris.get("stages")}, indent=2))
PY
