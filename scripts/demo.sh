#!/usr/bin/env bash
# The main job on the embedded default: one-shot segmentation of a brain iris
# has never seen (KmeansTest: another person, LSA, 2x2x3 mm) with Colin27 and
# its brain mask as the only reference, then an honest Dice report next to
# two baselines that need no learning. Also transfers four atlas structures
# from Colin27 to the MNI152 average, one-shot (one class per pass and all
# four in one pass, also with --tta) and with in-context tuning, and two structures held out
# of the AAL and AICHA training tasks (hippocampus, amygdala; docs/demo.md
# says which overlapping regions of other atlases the shipped model saw),
# one-shot and tuned.
# Usage: scripts/demo.sh [BUILD_DIR]
# (IRIS_DEMO_MODEL: another model file; IRIS_DEMO_OUT: another output folder)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
OUT="${IRIS_DEMO_OUT:-$BUILD/demo}"
DATA="$BUILD/demo/data"
export IRIS_THREADS=${IRIS_THREADS:-$(nproc)}
cd "$ROOT"
bash scripts/make_demo_data.sh "$BUILD" "$DATA" >/dev/null

MODEL="${IRIS_DEMO_MODEL:-$ROOT/models/demo_brain.iris}"
if [ ! -f "$MODEL" ]; then
  echo "== no shipped model: training one (configs/train/demo_brain.yaml, ~20 min on 2 cores)"
  "$BUILD/iris-train" configs/train/demo_brain.yaml --set train.output_dir="$OUT/train" --set data.datasets.brain.root="$DATA" --set data.datasets.structures.root="$DATA"
  MODEL="$OUT/train/model.iris"
fi

# The HTML reports are this script's own: iris-eval replaces an iris report but
# refuses any other folder, such as one an older iris wrote (no .iris-report).
rm -rf "$OUT/report_brain" "$OUT/report_structures" "$OUT/report_structures_one_pass" "$OUT/report_heldout" "$OUT/one_pass_tta"
mkdir -p "$OUT/pred/brain" "$OUT/gt/brain" "$OUT/pred/structures" "$OUT/gt/structures" \
         "$OUT/one_pass/structures" "$OUT/one_pass_tta/structures" "$OUT/pred/heldout" "$OUT/gt/heldout" \
         "$OUT/baseline_world/brain" "$OUT/baseline_otsu/brain" "$OUT/baseline_world/structures" "$OUT/img/brain" "$OUT/img/structures" \
         "$OUT/tuned/structures" "$OUT/tuned/heldout"
echo "== 1. brain mask of KmeansTest from one reference (Colin27 + brain mask)"
"$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_brain.nii.gz" \
  --query "$DATA/kmeans_t1.nii.gz" --output "$OUT/pred/brain/kmeans.nii.gz" --keep-largest --report "$OUT/infer_brain.json" --quiet
cp "$DATA/kmeans_brain.nii.gz" "$OUT/gt/brain/kmeans.nii.gz"
cp "$DATA/kmeans_t1.nii.gz" "$OUT/img/brain/kmeans.nii.gz"
# Baselines: the reference mask carried through world coordinates, and Otsu.
"$BUILD/iris-labels" resample --input "$DATA/colin_brain.nii.gz" --like "$DATA/kmeans_t1.nii.gz" --output "$OUT/baseline_world/brain/kmeans.nii.gz"
"$BUILD/iris-labels" otsu --input "$DATA/kmeans_t1.nii.gz" --output "$OUT/baseline_otsu/brain/kmeans.nii.gz" 2>/dev/null

echo "== 2. four AAL structures from Colin27 to the MNI152 average"
# One class per pass first (each structure alone), then all four in one pass (2b).
# No --keep-largest: each structure is a left and a right part.
"$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_structures.nii.gz" \
  --query "$DATA/mni152.nii.gz" --output "$OUT/pred/structures/mni152.nii.gz" --classes-per-pass 1 \
  --report "$OUT/infer_structures.json" --quiet
cp "$DATA/mni_structures.nii.gz" "$OUT/gt/structures/mni152.nii.gz"
cp "$DATA/mni152.nii.gz" "$OUT/img/structures/mni152.nii.gz"
"$BUILD/iris-labels" resample --input "$DATA/colin_structures.nii.gz" --like "$DATA/mni152.nii.gz" --output "$OUT/baseline_world/structures/mni152.nii.gz"

echo "== 2b. the same four structures in one pass, and two held-out structures"
# In one pass the four classes' tokens attend to each other in the decoder.
"$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_structures.nii.gz" \
  --query "$DATA/mni152.nii.gz" --output "$OUT/one_pass/structures/mni152.nii.gz" --report "$OUT/infer_structures_one_pass.json" --quiet
# With --tta: averaged with the query's left-right mirror image, the axis the
# shipped model learnt mirror invariance on (train.augment_mirror [x]). A
# model that learnt none (IRIS_DEMO_MODEL, or one trained above) refuses
# --tta with exit 2 and that reason: the row is then left out.
TTA=yes
if ! "$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_structures.nii.gz" \
  --query "$DATA/mni152.nii.gz" --output "$OUT/one_pass_tta/structures/mni152.nii.gz" --tta \
  --report "$OUT/infer_structures_one_pass_tta.json" --quiet 2> "$OUT/infer_structures_one_pass_tta.log"; then
  if grep -q "not trained with mirror augmentation" "$OUT/infer_structures_one_pass_tta.log"; then
    TTA=no
    echo "(no --tta row: $MODEL learnt no mirror invariance)"
  else
    cat "$OUT/infer_structures_one_pass_tta.log" >&2
    exit 1
  fi
fi
# Hippocampus and amygdala (AAL 37-38, 41-42): held out of the AAL and AICHA tasks.
"$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_heldout.nii.gz" \
  --query "$DATA/mni152.nii.gz" --output "$OUT/pred/heldout/mni152.nii.gz" --report "$OUT/infer_heldout.json" --quiet
cp "$DATA/mni_heldout.nii.gz" "$OUT/gt/heldout/mni152.nii.gz"

echo "== 3. the same four structures with in-context tuning (about 2 min on 2 cores)"
# The network stays frozen; each structure's task embedding is optimised to
# segment Colin27 itself (100 Adam steps), then applied to MNI152.
"$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_structures.nii.gz" \
  --query "$DATA/mni152.nii.gz" --output "$OUT/tuned/structures/mni152.nii.gz" --strategy tuning --classes-per-pass 1 \
  --tuned-task-out "$OUT/structures_tuned.task" --report "$OUT/infer_structures_tuned.json" --quiet

# In-context tuning is the method's strategy for a class the model never
# saw: the same optimisation on Colin27's hippocampus and amygdala.
"$BUILD/iris-infer" --model "$MODEL" --reference "$DATA/colin27.nii.gz" --reference-mask "$DATA/colin_heldout.nii.gz" \
  --query "$DATA/mni152.nii.gz" --output "$OUT/tuned/heldout/mni152.nii.gz" --strategy tuning --classes-per-pass 1 \
  --report "$OUT/infer_heldout_tuned.json" --quiet

printf '1 brain\n' > "$OUT/brain_names.tsv"
printf '1 cerebellum\n2 thalamus\n3 putamen\n4 caudate\n' > "$OUT/structure_names.tsv"
printf '1 hippocampus\n2 amygdala\n' > "$OUT/heldout_names.tsv"
echo
echo "== Dice report: KmeansTest brain mask (iris, one-shot)"
"$BUILD/iris-eval" --reference "$OUT/gt/brain" --prediction "$OUT/pred/brain" --label-names "$OUT/brain_names.tsv" \
  --output "$OUT/eval_brain.json" --html "$OUT/report_brain" --image "$OUT/img/brain"
echo "-- baseline: reference mask copied through world coordinates"
"$BUILD/iris-eval" --reference "$OUT/gt/brain" --prediction "$OUT/baseline_world/brain" --label-names "$OUT/brain_names.tsv" --output "$OUT/eval_brain_world.json"
echo "-- baseline: Otsu threshold"
"$BUILD/iris-eval" --reference "$OUT/gt/brain" --prediction "$OUT/baseline_otsu/brain" --label-names "$OUT/brain_names.tsv" --output "$OUT/eval_brain_otsu.json"
echo
echo "== Dice report: AAL structures, Colin27 -> MNI152 (iris, one-shot)"
"$BUILD/iris-eval" --reference "$OUT/gt/structures" --prediction "$OUT/pred/structures" --label-names "$OUT/structure_names.tsv" \
  --output "$OUT/eval_structures.json" --html "$OUT/report_structures" --image "$OUT/img/structures"
echo "-- iris, all four in one pass"
"$BUILD/iris-eval" --reference "$OUT/gt/structures" --prediction "$OUT/one_pass/structures" --label-names "$OUT/structure_names.tsv" \
  --output "$OUT/eval_structures_one_pass.json" --html "$OUT/report_structures_one_pass" --image "$OUT/img/structures"
if [ "$TTA" = yes ]; then
  echo "-- iris, all four in one pass, with its left-right mirror image (--tta)"
  "$BUILD/iris-eval" --reference "$OUT/gt/structures" --prediction "$OUT/one_pass_tta/structures" --label-names "$OUT/structure_names.tsv" \
    --output "$OUT/eval_structures_one_pass_tta.json"
fi
echo "-- iris with in-context tuning (--strategy tuning)"
"$BUILD/iris-eval" --reference "$OUT/gt/structures" --prediction "$OUT/tuned/structures" --label-names "$OUT/structure_names.tsv" \
  --output "$OUT/eval_structures_tuned.json"
echo "-- baseline: world-coordinate copy (equals the ground truth by construction, see docs/demo.md)"
"$BUILD/iris-eval" --reference "$OUT/gt/structures" --prediction "$OUT/baseline_world/structures" --label-names "$OUT/structure_names.tsv" --output "$OUT/eval_structures_world.json"
echo
echo "== Dice report: held-out structures (hippocampus, amygdala), Colin27 -> MNI152 (iris, one-shot)"
"$BUILD/iris-eval" --reference "$OUT/gt/heldout" --prediction "$OUT/pred/heldout" --label-names "$OUT/heldout_names.tsv" \
  --output "$OUT/eval_heldout.json" --html "$OUT/report_heldout" --image "$OUT/img/structures"
echo "-- iris with in-context tuning (--strategy tuning)"
"$BUILD/iris-eval" --reference "$OUT/gt/heldout" --prediction "$OUT/tuned/heldout" --label-names "$OUT/heldout_names.tsv" \
  --output "$OUT/eval_heldout_tuned.json"
echo
echo "HTML reports (outlines on the query): $OUT/report_brain/index.html, $OUT/report_structures/index.html" \
  "(each structure alone), $OUT/report_structures_one_pass/index.html (all four in one pass)," \
  "$OUT/report_heldout/index.html"
