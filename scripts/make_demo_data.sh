#!/usr/bin/env bash
# Builds the demo's label maps from the real volumes that scripts/setup.sh
# installs (Debian mricron-data, insighttoolkit5-examples, and nilearn's
# ICBM152 2009 template, copied by tools/make_test_fixtures.py), with iris-labels. Usage: make_demo_data.sh BUILD_DIR OUT_DIR
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$BUILD/demo/data}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LABELS="$BUILD/iris-labels"
T=/usr/share/mricron/templates
MNI="$ROOT/third_party/fixtures/mni152_2009.nii.gz"
KDIR=$(dirname "$(dpkg -L insighttoolkit5-examples | grep 'KmeansTest_T1UCharRaw.nii.gz$' | head -n 1)")
for f in "$T/ch2.nii.gz" "$T/ch2bet.nii.gz" "$T/aal.nii.gz" "$T/brodmann.nii.gz" "$T/AICHAmc.nii.gz" \
         "$T/JHU-WhiteMatter-labels-1mm.nii.gz" "$MNI" "$KDIR/KmeansTest_T1UCharRaw.nii.gz"; do
  [ -f "$f" ] || { echo "missing $f: run scripts/setup.sh" >&2; exit 1; }
done
mkdir -p "$OUT"
# Colin27 (MNI space, 1 mm): brain mask and four AAL structures.
"$LABELS" threshold --input "$T/ch2bet.nii.gz" --above 0 --output "$OUT/colin_brain.nii.gz"
# AAL: 91-116 cerebellum + vermis, 77-78 thalamus, 73-74 putamen, 71-72 caudate.
"$LABELS" map --input "$T/aal.nii.gz" --map 91-116:1,77-78:2,73-74:3,71-72:4 --output "$OUT/colin_structures.nii.gz"
# The ICBM152 2009c symmetric MNI152 average (1 mm, brain only): never a
# training image, only the demo's query.
cp "$MNI" "$OUT/mni152.nii.gz"
# The same MNI-space masks carried onto its grid through world coordinates
# (an atlas-based, approximate ground truth).
"$LABELS" resample --input "$OUT/colin_brain.nii.gz" --like "$MNI" --output "$OUT/mni_brain.nii.gz"
"$LABELS" resample --input "$OUT/colin_structures.nii.gz" --like "$MNI" --output "$OUT/mni_structures.nii.gz"
# Held out of every training task (configs/train/demo_brain_atlas.yaml): AAL
# hippocampus (37-38) and amygdala (41-42), shown by the demo as classes the
# model never saw.
"$LABELS" map --input "$T/aal.nii.gz" --map 37-38:1,41-42:2 --output "$OUT/colin_heldout.nii.gz"
"$LABELS" resample --input "$OUT/colin_heldout.nii.gz" --like "$MNI" --output "$OUT/mni_heldout.nii.gz"
# Label maps on Colin27's grid for in-context pretraining (tasks: regions):
# AAL (held-out values dropped by the config), Brodmann, AICHA without its
# hippocampus, parahippocampal and amygdala parcels (159-165, 173), and the
# JHU white-matter atlas. Harvard-Oxford is held out whole: not used here.
cp "$T/aal.nii.gz" "$OUT/atlas_aal.nii.gz"
cp "$T/brodmann.nii.gz" "$OUT/atlas_brodmann.nii.gz"
# AICHA and JHU put MNI space in their sform only (their qforms disagree
# with it, and ITK's rule would take the qform: JHU upside down, AICHA shifted).
"$LABELS" resample --prefer-sform --input "$T/AICHAmc.nii.gz" --like "$T/ch2.nii.gz" --output "$OUT/aicha_all.nii.gz"
"$LABELS" drop --input "$OUT/aicha_all.nii.gz" --values 159-165,173 --output "$OUT/atlas_aicha.nii.gz"
"$LABELS" resample --prefer-sform --input "$T/JHU-WhiteMatter-labels-1mm.nii.gz" --like "$T/ch2.nii.gz" --output "$OUT/atlas_jhu.nii.gz"
cp "$T/ch2.nii.gz" "$OUT/colin27.nii.gz"
# KmeansTest: another person, LSA, 2x2x3 mm. Never used for training.
cp "$KDIR/KmeansTest_T1UCharRaw.nii.gz" "$OUT/kmeans_t1.nii.gz"
"$LABELS" threshold --input "$KDIR/KmeansTest_T1RawSkullStrip.nii.gz" --above 0 --output "$OUT/kmeans_brain.nii.gz"
echo "demo data in $OUT"
