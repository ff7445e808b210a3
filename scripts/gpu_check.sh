#!/usr/bin/env bash
# The GPU check of iris, in one command that writes one JSON file.
#
#   bash scripts/gpu_check.sh OUT_DIR [--device cuda|cpu] [--preset mass|tiny]
#        [--build-dir DIR] [--skip-build] [--iterations N] [--mass MASS_CHECKOUT]
#        [--steps build,tests,train,infer,bench,demo,toy] [--demo-seconds S]
#        [--demo-iterations N] [--demo-data DIR] [--demo-init MODEL.iris]
#        [--demo-config CONFIG.yaml]
#        [--toy-seconds S] [--toy-iterations N] [--toy-batch N]
#
# On a bare GPU node (Ubuntu, a CUDA PyTorch, 16 cores, no ITK, yaml-cpp,
# spdlog, CLI11, nlohmann-json or network), from a checkout of iris:
#   1. on a machine with Debian's packages, once:  bash scripts/gpu_carry.sh
#      (copies CLI11, nlohmann/json, GoogleTest's sources and, when fetched,
#      the author's MASS code into .gpu_carry/, which git ignores)
#   2. on the GPU node, with .gpu_carry carried along:
#        bash scripts/gpu_check.sh "$OUT"                      (about 5-8 minutes)
#      With this workplace's device tool: run(command="bash scripts/gpu_check.sh $OUT",
#      carry=[".gpu_carry"], timeout_s=600); the JSON comes back under $OUT.
#
# Steps (each recorded in OUT_DIR/gpu_check.json with ok, seconds and figures):
#   build     iris without ITK against the PyTorch's LibTorch (+ the device tests)
#   tests     tests/device on the device: the author's model in float32 and bf16,
#             sliding window against the CPU, training steps, checkpoint round trip
#   train     a 1-GPU run with train.distributed: nccl (gloo on cpu) on synthetic
#             NIfTI data, SIGUSR1 in the middle (exit 124, checkpoint), then
#             --resume=auto to the end
#   infer     iris-infer of the trained model on a NIfTI query, iris-eval of it
#   bench     iris-bench (mass preset: a training step of 2 episodes of 128^3 in
#             bf16, and the paper's workload: 1 reference, 15 classes, 10 queries)
#             next to tools/bench_mass.py (the author's code) on the same device
#   demo      (only when --steps names it) the demo model's --demo-config
#             (default configs/train/demo_brain_clean.yaml, issue 17) trained on the
#             device from the stage-1 model for at most --demo-seconds
#             (default 300), then SIGUSR1 and the checkpoint exported; the
#             model, metrics.jsonl and the log come back under OUT_DIR/demo.
#             Needs the demo data and the stage-1 model, carried:
#               here: bash scripts/make_demo_data.sh build
#                     git show 727439b:models/demo_brain.iris > build/demo/stage1.iris
#               run(command="bash scripts/gpu_check.sh $OUT --steps build,demo",
#                   carry=[".gpu_carry", "build/demo/data", "build/demo/stage1.iris"], timeout_s=600)
#             (the build plus 300 s of training plus the export fit in the 600 s
#             of one call when the build takes under 4 minutes; on a warm
#             machine that already built, --skip-build --steps demo
#             --demo-seconds 500), then score the model here:
#               IRIS_DEMO_MODEL=OUT_DIR/demo/model.iris bash scripts/demo.sh build
#             Batch 8 on cuda (2 on cpu), loader threads = cores - 2;
#             figures: iterations, step and data-wait medians, Dice loss per
#             dataset over the first and last tenth of the log.
#   toy       (only when --steps names it) issue 17's cheap first question,
#             whether the network learns to read the reference at all:
#             tools/make_toy_regions.py (needs numpy) writes 10 toy cases,
#             configs/train/toy_regions.yaml trains on cases 0-7 from scratch
#             for at most --toy-seconds (default 180) or --toy-iterations
#             (default 3000), batch --toy-batch (32 on cuda, 2 on cpu), cut and
#             exported like demo; then one-shot Dice on cases 8 and 9, each its
#             own reference, cells 1, 4, 7 and 10 (iris-labels, iris-infer,
#             iris-eval). A model that ignores the reference scores ~0.15; two
#             CPU cores reached 0.39 (3,000 it. of batch 2) and 0.44 (750 of
#             batch 8), docs/log/demo_model_2026-12.md. Nothing to carry. First GPU session:
#               run(command="bash scripts/gpu_check.sh $OUT --steps build,toy",
#                   carry=[".gpu_carry"], timeout_s=600)
#             then on the warm machine --skip-build --steps demo (above), best
#             with --demo-init on the toy model that came back (OUT/toy/model.iris,
#             carried): from it the atlas regions are learnt faster (docs/log/demo_model_2026-12.md),
#             and with --demo-config configs/train/demo_brain_toymix.yaml, which
#             keeps the toy cases in the mix (the demo step generates them).
# --device cpu --preset tiny --skip-build is the part that runs on any machine;
# tests/apps/gpu_check_test.cpp runs it in CI so this script never rots.
# Exit status: 0 when every step passed, 1 otherwise (the JSON says which).
set -uo pipefail

OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [options]}
shift
DEVICE=cuda PRESET=mass BUILD="" SKIP_BUILD=0 ITERATIONS="" MASS=""
STEPS_WANTED=build,tests,train,infer,bench DEMO_SECONDS=300 DEMO_ITERATIONS="" DEMO_DATA="" DEMO_INIT="" DEMO_CONFIG=""
TOY_SECONDS=180 TOY_ITERATIONS=3000 TOY_BATCH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift ;;
    --preset) PRESET=$2; shift ;;
    --build-dir) BUILD=$2; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --iterations) ITERATIONS=$2; shift ;;
    --mass) MASS=$2; shift ;;
    --steps) STEPS_WANTED=$2; shift ;;
    --demo-seconds) DEMO_SECONDS=$2; shift ;;
    --demo-iterations) DEMO_ITERATIONS=$2; shift ;;
    --demo-data) DEMO_DATA=$2; shift ;;
    --demo-init) DEMO_INIT=$2; shift ;;
    --demo-config) DEMO_CONFIG=$2; shift ;;
    --toy-seconds) TOY_SECONDS=$2; shift ;;
    --toy-iterations) TOY_ITERATIONS=$2; shift ;;
    --toy-batch) TOY_BATCH=$2; shift ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for step in ${STEPS_WANTED//,/ }; do
  case "$step" in
    build|tests|train|infer|bench|demo|toy) ;;
    *) echo "gpu_check: --steps: unknown step '$step' (build, tests, train, infer, bench, demo, toy)" >&2; exit 2 ;;
  esac
done
want() { [[ ",$STEPS_WANTED," == *",$1,"* ]]; }
DEMO_DATA=${DEMO_DATA:-$HERE/build/demo/data}
DEMO_INIT=${DEMO_INIT:-$HERE/build/demo/stage1.iris}
DEMO_CONFIG=${DEMO_CONFIG:-$HERE/configs/train/demo_brain_clean.yaml}
CARRY=$HERE/.gpu_carry
BUILD=${BUILD:-$HERE/build-gpu}
[ -z "$MASS" ] && [ -d "$CARRY/MASS" ] && MASS=$CARRY/MASS
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/iris_gpu_check.XXXXXX")
STEPS=$WORK/steps
mkdir -p "$STEPS"
PY=python3
NPROC=$(nproc)
if [ "$DEVICE" = cuda ]; then
  BACKEND=nccl BF16=true PATCH=64 TRAIN_PRESET=tiny ITERATIONS=${ITERATIONS:-300} VOLUME=96 REPEATS=10
  DEMO_ITERATIONS=${DEMO_ITERATIONS:-10000} DEMO_BATCH=8 DEMO_LOG_EVERY=10 DEMO_WORKERS=$((NPROC > 3 ? NPROC - 2 : 1))
  TOY_BATCH=${TOY_BATCH:-32} TOY_WORKERS=$((NPROC > 3 ? NPROC - 2 : 1))
else
  BACKEND=gloo BF16=false PATCH=32 TRAIN_PRESET=tiny ITERATIONS=${ITERATIONS:-8} VOLUME=40 REPEATS=1
  DEMO_ITERATIONS=${DEMO_ITERATIONS:-4} DEMO_BATCH=2 DEMO_LOG_EVERY=1 DEMO_WORKERS=1
  TOY_BATCH=${TOY_BATCH:-2} TOY_WORKERS=1
fi

# record NAME STATUS SECONDS [JSON-FIGURES]
record() {
  local figures=${4:-}
  [ -z "$figures" ] && figures='{}'
  printf '{"ok": %s, "seconds": %s, "figures": %s}\n' "$2" "$3" "$figures" > "$STEPS/$1.json"
}
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{printf "%.1f", $1 - $2}'; }

# ------------------------------------------------------------------ build
if want build; then
t=$(now)
if [ "$SKIP_BUILD" = 0 ]; then
  TORCH_PREFIX=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
  EXTRA=()
  [ -d "$CARRY/include" ] && EXTRA+=(-DIRIS_CLI11_INCLUDE_DIR="$CARRY/include" -DIRIS_JSON_INCLUDE_DIR="$CARRY/include")
  [ -d "$CARRY/googletest" ] && EXTRA+=(-DIRIS_GTEST_SOURCE_DIR="$CARRY/googletest")
  GEN=()
  command -v ninja > /dev/null && GEN=(-G Ninja)
  if cmake -S "$HERE" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DIRIS_WITH_ITK=OFF -DIRIS_WITH_YAML=OFF \
       -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "${EXTRA[@]}" > "$OUT/build.log" 2>&1 &&
     cmake --build "$BUILD" -j "$NPROC" --target iris-train iris-infer iris-eval iris-labels iris-bench iris_device_tests \
       >> "$OUT/build.log" 2>&1; then
    record build true "$(since "$t")"
  else
    record build false "$(since "$t")"
    tail -30 "$OUT/build.log" >&2
  fi
else
  [ -x "$BUILD/iris-train" ] && record build true 0 '{"skipped": true}' || record build false 0 '{"skipped": true}'
fi
fi

# ------------------------------------------------------------------ device tests
if want tests; then
t=$(now)
if IRIS_TEST_DEVICE=$DEVICE IRIS_BIN_DIR=$BUILD "$BUILD/iris_device_tests" --gtest_output="json:$WORK/device_tests.json" \
     > "$OUT/tests.log" 2>&1; then ok=true; else ok=false; fi
record tests $ok "$(since "$t")" "$($PY - "$WORK/device_tests.json" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print(json.dumps({"tests": d["tests"], "failures": d["failures"],
                      "failed": [t["name"] for s in d["testsuites"] for t in s["testsuite"] if t.get("failures")]}))
except Exception as e:
    print(json.dumps({"error": str(e)}))
EOF
)"
fi

# ------------------------------------------------------------------ data
if want train || want infer; then
# Synthetic NIfTI-1 cases (an ellipsoid with a core, noise) written with the
# standard library only: .nii, so a build without zlib reads them too.
$PY - "$WORK/data" "$VOLUME" <<'EOF'
import math, os, random, struct, sys
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
def write(path, values, datatype, bitpix, fmt):
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, n, n, n, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1, 1.5, 1.5, 1.5, 1, 1, 1, 1)
    struct.pack_into("<fff", h, 108, 352, 1, 0)
    struct.pack_into("<hh", h, 252, 1, 1)
    for r in range(3):
        struct.pack_into("<4f", h, 280 + 16 * r, *[1.5 if c == r else 0.0 for c in range(3)], 0.0)
    h[344:348] = b"n+1\0"
    with open(path, "wb") as f:
        f.write(h)
        f.write(struct.pack("<%d%s" % (len(values), fmt), *values))
for case in range(4):
    rnd = random.Random(case)
    cz, cy, cx = n / 2 + rnd.uniform(-4, 4), n / 2 + rnd.uniform(-4, 4), n / 2 + rnd.uniform(-4, 4)
    image, labels = [], []
    for z in range(n):
        for y in range(n):
            for x in range(n):
                d2 = ((x - cx) / (0.3 * n)) ** 2 + ((y - cy) / (0.25 * n)) ** 2 + ((z - cz) / (0.28 * n)) ** 2
                label = 2 if d2 <= 0.3 else 1 if d2 <= 1 else 0
                labels.append(label)
                image.append(0.8 * label + rnd.gauss(0, 0.2))
    write(os.path.join(out, "case%d.nii" % case), image, 16, 32, "f")
    write(os.path.join(out, "case%d_labels.nii" % case), labels, 2, 8, "B")
EOF
cat > "$WORK/train.yaml" <<EOF
model:
  preset: $TRAIN_PRESET
  memory_bank_size: 4
train:
  iterations: $ITERATIONS
  batch: 2
  patch: $PATCH
  max_classes: 2
  warmup: 5
  lr: 0.002
  checkpoint_every: 0
  validate_every: $((ITERATIONS / 2))
  validation_episodes: 4
  log_every: 1
  device: $DEVICE
  distributed: $BACKEND
  bf16: $BF16
  loader_workers: 2
  tensorboard: false
  output_dir: $WORK/run
data:
  datasets:
    synthetic:
      layout: list
      root: $WORK/data
      classes: ["1:outer", "2:core"]
      split: [0.75, 0.25, 0]
      cases: ["case0.nii|case0_labels.nii", "case1.nii|case1_labels.nii", "case2.nii|case2_labels.nii", "case3.nii|case3_labels.nii"]
EOF
fi

# ------------------------------------------------------------------ train
if want train; then
t=$(now)
export MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29621}
"$BUILD/iris-train" "$WORK/train.yaml" > "$OUT/train_first.log" 2>&1 &
pid=$!
half=$((ITERATIONS / 2))
while kill -0 $pid 2> /dev/null; do
  lines=$(wc -l 2> /dev/null < "$WORK/run/metrics.jsonl" || echo 0)
  [ "$lines" -ge "$half" ] && break
  sleep 0.2
done
kill -USR1 $pid 2> /dev/null
wait $pid
first_rc=$?
stopped_at=$(wc -l 2> /dev/null < "$WORK/run/metrics.jsonl" || echo 0)
"$BUILD/iris-train" "$WORK/train.yaml" --resume=auto > "$OUT/train_resume.log" 2>&1
second_rc=$?
if [ "$first_rc" = 124 ] && [ "$second_rc" = 0 ] && [ -f "$WORK/run/model.iris" ]; then ok=true; else ok=false; fi
record train $ok "$(since "$t")" "$($PY - "$WORK/run/metrics.jsonl" "$first_rc" "$second_rc" "$stopped_at" "$BACKEND" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if sys.argv[1] else []
steps = [r["seconds"] for r in rows[5:]] or [0]
print(json.dumps({"backend": sys.argv[5], "first_exit": int(sys.argv[2]), "resume_exit": int(sys.argv[3]),
                  "stopped_after": int(sys.argv[4]), "iterations": len(rows),
                  "first_loss": rows[0]["loss"] if rows else None, "last_loss": rows[-1]["loss"] if rows else None,
                  "median_step_seconds": sorted(steps)[len(steps) // 2],
                  "val_dice": [[r["iteration"], r["val_dice"]] for r in rows if "val_dice" in r]}))
EOF
)"
fi

# ------------------------------------------------------------------ infer
if want infer; then
t=$(now)
if "$BUILD/iris-infer" --model "$WORK/run/model.iris" --reference "$WORK/data/case0.nii" \
     --reference-mask "$WORK/data/case0_labels.nii" --query "$WORK/data/case1.nii" --output "$WORK/pred.nii" \
     --device "$DEVICE" --preprocess mr --window-batch auto --report "$WORK/infer.json" > "$OUT/infer.log" 2>&1 &&
   "$BUILD/iris-eval" --reference "$WORK/data/case1_labels.nii" --prediction "$WORK/pred.nii" \
     --output "$WORK/eval.json" >> "$OUT/infer.log" 2>&1; then ok=true; else ok=false; fi
record infer $ok "$(since "$t")" "$($PY - "$WORK/infer.json" "$WORK/eval.json" <<'EOF'
import json, sys
out = {}
try:
    report = json.load(open(sys.argv[1]))
    out["seconds"] = report["seconds"]
    out["window_batch"] = [report.get("window_batch"), report.get("window_batch_auto")]
    out["dice"] = {k: v["Dice"] for k, v in json.load(open(sys.argv[2]))["mean"].items()}
except Exception as e:
    out["error"] = str(e)
print(json.dumps(out))
EOF
)"
fi

# ------------------------------------------------------------------ bench
if want bench; then
t=$(now)
if [ "$PRESET" = mass ]; then BPATCH=128 CLASSES=15 QUERIES=10; else BPATCH=32 CLASSES=3 QUERIES=2; fi
BF16_FLAG=()
[ "$BF16" = true ] && BF16_FLAG=(--bf16)
ok=true
"$BUILD/iris-bench" --preset "$PRESET" --device "$DEVICE" "${BF16_FLAG[@]}" --patch $BPATCH --batch 2 \
  --classes $CLASSES --queries $QUERIES --repeats $REPEATS --threads "$NPROC" --stages --output "$WORK/bench_iris.json" \
  > "$OUT/bench.log" 2>&1 || ok=false
mass_rc=skipped
if [ -n "$MASS" ] && [ -d "$MASS" ]; then
  CH="32 64 128 256 512"
  [ "$PRESET" = tiny ] && CH="8 16 32 32 64"
  if $PY "$HERE/tools/bench_mass.py" --mass "$MASS" --device "$DEVICE" "${BF16_FLAG[@]}" --patch $BPATCH --batch 2 \
       --classes $CLASSES --queries $QUERIES --repeats $REPEATS --threads "$NPROC" --channels $CH \
       > "$WORK/bench_mass.json" 2>> "$OUT/bench.log"; then mass_rc=ok; else mass_rc=failed; ok=false; fi
fi
record bench $ok "$(since "$t")" "$($PY - "$WORK/bench_iris.json" "$WORK/bench_mass.json" "$mass_rc" <<'EOF'
import json, sys
out = {"mass": sys.argv[3]}
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
iris, mass = load(sys.argv[1]), load(sys.argv[2])
out["iris"] = iris
if mass:
    out["mass_result"] = mass
    for k in ("forward_backward", "inference_one_reference", "forward"):
        if iris and k in iris and k in mass and iris[k]["median_ms"] > 0:
            out["speedup_" + k] = mass[k]["median_ms"] / iris[k]["median_ms"]
print(json.dumps(out))
EOF
)"
fi

# ------------------------------------------------------------------ timed training
# timed_train CONFIG RUN_DIR STEP_OUT SECONDS ITERATIONS [--set ...]: trains
# for at most SECONDS; when cut (SIGUSR1: checkpoint, exit 124) a run of as
# many iterations as the checkpoint holds resumes from it, has nothing left to
# do, and exports the model. The model, metrics.jsonl and config.yaml are
# copied to STEP_OUT, the log is STEP_OUT/train.log. Sets train_rc, export_rc
# and reached.
timed_train() {
  local config=$1 run=$2 log=$3/train.log seconds=$4 iterations=$5 step_out=$3
  shift 5
  train_rc=none export_rc=none reached=none
  timeout -s USR1 -k 120 "$seconds" "$BUILD/iris-train" "$config" --set "train.output_dir=$run" "$@" \
    --set "train.iterations=$iterations" > "$log" 2>&1
  train_rc=$?
  if [ "$train_rc" = 124 ] && [ -f "$run/checkpoints/last.ckpt" ]; then
    reached=$($PY - "$run/checkpoints/last.ckpt" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    print(json.loads(f.read(n))["__metadata__"]["iteration"])
EOF
)
    "$BUILD/iris-train" "$config" --set "train.output_dir=$run" "$@" --set "train.iterations=$reached" --resume >> "$log" 2>&1
    export_rc=$?
  fi
  for f in model.iris metrics.jsonl config.yaml; do
    [ -f "$run/$f" ] && cp "$run/$f" "$step_out/"
  done
}

# python3 metrics_figures.py METRICS.JSONL TRAIN_RC EXPORT_RC SECONDS_LIMIT
# BATCH REACHED: the figures of a timed run, as one JSON object.
cat > "$WORK/metrics_figures.py" <<'EOF'
import json, sys
out = {"train_exit": sys.argv[2], "export_exit": sys.argv[3], "seconds_limit": float(sys.argv[4]), "batch": int(sys.argv[5]),
       "exported_at_iteration": sys.argv[6]}
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except Exception as e:
    rows = []
    out["error"] = str(e)
if rows:
    out["iterations"] = rows[-1]["iteration"] + 1
    steps = sorted(r["seconds"] for r in rows[1:]) or [0]
    waits = sorted(r["data_seconds"] for r in rows[1:]) or [0]
    out["median_step_seconds"] = steps[len(steps) // 2]
    out["median_data_wait_seconds"] = waits[len(waits) // 2]
    # Mean Dice loss per dataset over the first and the last tenth of the lines.
    tenth = max(1, len(rows) // 10)
    def mean_by_dataset(part):
        sums = {}
        for r in part:
            for k, v in r.get("dice_loss_by_dataset", {}).items():
                if v is not None:
                    sums.setdefault(k, []).append(v)
        return {k: round(sum(v) / len(v), 4) for k, v in sums.items()}
    out["datasets_seen"] = sorted({k for r in rows for k in r.get("dice_loss_by_dataset", {})})
    out["dice_loss_by_dataset_first_tenth"] = mean_by_dataset(rows[:tenth])
    out["dice_loss_by_dataset_last_tenth"] = mean_by_dataset(rows[-tenth:])
print(json.dumps(out))
EOF

# fresh_step_out DIR: DIR made, without an earlier run's model, metrics and
# config (a step passes on its model being there).
fresh_step_out() {
  mkdir -p "$1"
  rm -f "$1/model.iris" "$1/metrics.jsonl" "$1/config.yaml"
}

# make_toy_data STEP DIR LOG: the toy cases of tools/make_toy_regions.py in
# DIR (.nii.gz), with the first Python that has numpy; when that fails, says
# so (naming STEP) on stderr and in LOG, and fails.
make_toy_data() {
  local p py=$PY
  for p in "$PY" python3 /usr/bin/python3; do
    if "$p" -c "import numpy" 2> /dev/null; then py=$p; break; fi
  done
  "$py" "$HERE/tools/make_toy_regions.py" "$2" > "$3" 2>&1 && return 0
  echo "$1: tools/make_toy_regions.py failed (it needs numpy; tried $PY, python3, /usr/bin/python3): $3" | tee -a "$3" >&2
  return 1
}

# ------------------------------------------------------------------ demo
# The demo model's config (--demo-config) trained on the device for at most
# DEMO_SECONDS, then exported.
if want demo; then
t=$(now)
DEMO_OUT=$OUT/demo
DEMO_RUN=$WORK/demo_run
fresh_step_out "$DEMO_OUT"
train_rc=none export_rc=none reached=none
if [ ! -f "$DEMO_DATA/atlas_aal.nii.gz" ] || [ ! -f "$DEMO_INIT" ]; then
  echo "demo: needs the demo data in $DEMO_DATA (scripts/make_demo_data.sh) and the stage-1 model $DEMO_INIT: carry them" \
    | tee "$DEMO_OUT/train.log" >&2
else
  SETS=(--set "train.device=$DEVICE" --set "train.init_from=$DEMO_INIT"
        --set "train.batch=$DEMO_BATCH" --set "train.loader_workers=$DEMO_WORKERS" --set train.checkpoint_every=500
        --set "train.log_every=$DEMO_LOG_EVERY" --set train.tensorboard=false)
  # Every dataset reads the carried demo data, except one named toy
  # (demo_brain_toymix.yaml): its cases are generated here.
  demo_ready=1
  for name in $("$BUILD/iris-train" "$DEMO_CONFIG" --dump-config | sed -n 's/^data\.datasets\.\([^.]*\)\.root:.*/\1/p'); do
    if [ "$name" = toy ]; then
      make_toy_data demo "$WORK/demo_toy" "$DEMO_OUT/train.log" || demo_ready=0
      SETS+=(--set "data.datasets.toy.root=$WORK/demo_toy")
    else
      SETS+=(--set "data.datasets.$name.root=$DEMO_DATA")
    fi
  done
  if [ $demo_ready = 1 ]; then
    timed_train "$DEMO_CONFIG" "$DEMO_RUN" "$DEMO_OUT" "$DEMO_SECONDS" "$DEMO_ITERATIONS" "${SETS[@]}"
  fi
fi
if [ -f "$DEMO_OUT/model.iris" ]; then ok=true; else ok=false; fi
record demo $ok "$(since "$t")" \
  "$($PY "$WORK/metrics_figures.py" "$DEMO_OUT/metrics.jsonl" "$train_rc" "$export_rc" "$DEMO_SECONDS" "$DEMO_BATCH" "$reached")"
fi

# ------------------------------------------------------------------ toy
# Does the network learn to read the reference? The toy of
# configs/train/toy_regions.yaml, trained from scratch on the device for at
# most TOY_SECONDS, then one-shot on the two cases it never saw.
if want toy; then
t=$(now)
TOY_OUT=$OUT/toy
TOY_DATA=$WORK/toy_data
TOY_RUN=$WORK/toy_run
fresh_step_out "$TOY_OUT"
train_rc=none export_rc=none reached=none
# Uncompressed, so that a build without zlib reads the cases too.
if ! make_toy_data toy "$TOY_DATA" "$TOY_OUT/data.log"; then
  :
elif ! gzip -d "$TOY_DATA"/*.nii.gz 2>> "$TOY_OUT/data.log"; then
  echo "toy: gzip -d of the toy cases failed: $TOY_OUT/data.log" | tee -a "$TOY_OUT/data.log" >&2
elif ! "$BUILD/iris-train" "$HERE/configs/train/toy_regions.yaml" --dump-config > "$WORK/toy_resolved.yaml" \
       2>> "$TOY_OUT/data.log"; then
  echo "toy: iris-train --dump-config of configs/train/toy_regions.yaml failed: $TOY_OUT/data.log" \
    | tee -a "$TOY_OUT/data.log" >&2
else
  # The config resolved (its include read), with the cases' names uncompressed.
  sed 's/\.nii\.gz/.nii/g' "$WORK/toy_resolved.yaml" > "$WORK/toy_regions.yaml"
  timed_train "$WORK/toy_regions.yaml" "$TOY_RUN" "$TOY_OUT" "$TOY_SECONDS" "$TOY_ITERATIONS" \
    --set "train.device=$DEVICE" --set "data.datasets.toy.root=$TOY_DATA" --set "train.batch=$TOY_BATCH" \
    --set "train.loader_workers=$TOY_WORKERS" --set train.checkpoint_every=500 --set train.tensorboard=false \
    --set "train.threads=$NPROC"
fi
# One-shot: each unseen case is its own reference, one cell per pass.
: > "$WORK/toy_dice.tsv"
if [ -f "$TOY_OUT/model.iris" ]; then
  for case in 8 9; do
    for cell in 1 4 7 10; do
      c=$TOY_DATA/case$case
      m=$WORK/toy_c${case}_$cell
      if "$BUILD/iris-labels" map --input "${c}_lab.nii" --map "$cell:1" --output "$m.nii" >> "$TOY_OUT/score.log" 2>&1 &&
         "$BUILD/iris-infer" --model "$TOY_OUT/model.iris" --device "$DEVICE" --reference "$c.nii" --reference-mask "$m.nii" \
           --query "$c.nii" --output "${m}_pred.nii" >> "$TOY_OUT/score.log" 2>&1 &&
         "$BUILD/iris-eval" --reference "$m.nii" --prediction "${m}_pred.nii" --output "$m.json" >> "$TOY_OUT/score.log" 2>&1; then
        printf '%s\t%s\t%s\n' "$case" "$cell" "$m.json" >> "$WORK/toy_dice.tsv"
      fi
    done
  done
fi
record toy false "$(since "$t")" "$($PY - "$WORK/toy_dice.tsv" \
  "$($PY "$WORK/metrics_figures.py" "$TOY_OUT/metrics.jsonl" "$train_rc" "$export_rc" "$TOY_SECONDS" "$TOY_BATCH" "$reached")" <<'EOF'
import json, sys
out = json.loads(sys.argv[2])
dice = {}
try:
    for line in open(sys.argv[1]):
        case, cell, path = line.rstrip("\n").split("\t")
        dice["case%s_cell%s" % (case, cell)] = round(json.load(open(path))["foreground_mean"]["Dice"], 4)
except Exception as e:
    out["score_error"] = str(e)
out["one_shot_dice"] = dice
if dice:
    out["one_shot_dice_mean"] = round(sum(dice.values()) / len(dice), 4)
print(json.dumps(out))
EOF
)"
# Passed when all eight passes were scored.
$PY - "$STEPS/toy.json" <<'EOF'
import json, sys
step = json.load(open(sys.argv[1]))
step["ok"] = len(step["figures"].get("one_shot_dice", {})) == 8
json.dump(step, open(sys.argv[1], "w"))
EOF
fi

# ------------------------------------------------------------------ one JSON
$PY - "$STEPS" "$OUT/gpu_check.json" "$DEVICE" "$PRESET" <<'EOF'
import glob, json, os, subprocess, sys
steps = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))}
gpu = ""
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    pass
try:
    import torch
    torch_version = torch.__version__
except Exception:
    torch_version = None
result = {"device": sys.argv[3], "preset": sys.argv[4], "gpu": gpu, "python_torch": torch_version,
          "ok": all(s["ok"] for s in steps.values()), "steps": steps}
json.dump(result, open(sys.argv[2], "w"), indent=2)
print(json.dumps({k: v["ok"] for k, v in steps.items()}))
EOF
status=$?
rm -rf "$WORK"
[ $status = 0 ] && $PY -c "import json,sys; sys.exit(0 if json.load(open('$OUT/gpu_check.json'))['ok'] else 1)"
