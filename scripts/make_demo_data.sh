#!/usr/bin/env bash
# Builds the demo's label maps from the real volumes that scripts/setup.sh
# installs (Debian mricron-data, insighttoolkit5-examples, npm
# nifti-reader-js), with iris-labels. Usage: make_demo_data.sh BUILD_DIR OUT_DIR
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$BUILD/demo/data}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LABELS="$BUILD/iris-labels"
T=/usr/share/mricron/templates
MNI="$ROOT/third_party/npm/node_modules/nifti-reader-js/tests/data/avg152T1_LR_nifti.nii.gz"
KDIR=$(dirname "$(dpkg -L insighttoolkit5-examples | grep 'KmeansTest_T1UCharRaw.nii.gz$' | head -n 1)")
for f in "$T/ch2.nii.gz" "$T/ch2bet.nii.gz" "$T/aal.nii.gz" "$MNI" "$KDIR/KmeansTest_T1UCharRaw.nii.gz"; do
  [ -f "$f" ] || { echo "missing $f: run scripts/setup.sh" >&2; exit 1; }
done
mkdir -p "$OUT"
# Colin27 (MNI space, 1 mm): brain mask and four AAL structures.
"$LABELS" threshold --input "$T/ch2bet.nii.gz" --above 0 --output "$OUT/colin_brain.nii.gz"
# AAL: 91-116 cerebellum + vermis, 77-78 thalamus, 73-74 putamen, 71-72 caudate.
"$LABELS" map --input "$T/aal.nii.gz" --map 91-116:1,77-78:2,73-74:3,71-72:4 --output "$OUT/colin_structures.nii.gz"
# MNI152 average (2 mm): the same MNI-space masks carried onto its grid
# through world coordinates (an atlas-based, approximate ground truth).
"$LABELS" resample --input "$OUT/colin_brain.nii.gz" --like "$MNI" --output "$OUT/mni_brain.nii.gz"
"$LABELS" resample --input "$OUT/colin_structures.nii.gz" --like "$MNI" --output "$OUT/mni_structures.nii.gz"
cp "$MNI" "$OUT/mni152.nii.gz"
cp "$T/ch2.nii.gz" "$OUT/colin27.nii.gz"
# KmeansTest: another person, LSA, 2x2x3 mm. Never used for training.
cp "$KDIR/KmeansTest_T1UCharRaw.nii.gz" "$OUT/kmeans_t1.nii.gz"
"$LABELS" threshold --input "$KDIR/KmeansTest_T1RawSkullStrip.nii.gz" --above 0 --output "$OUT/kmeans_brain.nii.gz"
echo "demo data in $OUT"
