# Where the sbatch scripts take the iris programs from, one rule for all:
#   IRIS_CONTAINER=path/to/iris.sif  each program runs in the Apptainer image
#                                    (apptainer exec --nv IMAGE NAME; the image
#                                    has the programs on its PATH);
#   otherwise IRIS_BIN               a build folder (default IRIS_HOME/build).
# `iris_program NAME` sets the array IRIS_CMD to the words that run NAME, or
# says what is missing and exits 2.
iris_program() {
  local name=$1
  if [ -n "${IRIS_CONTAINER:-}" ]; then
    if [ ! -f "$IRIS_CONTAINER" ]; then
      echo "iris: IRIS_CONTAINER=$IRIS_CONTAINER is not an image file (build it from containers/iris.def)" >&2
      exit 2
    fi
    if ! command -v apptainer > /dev/null 2>&1; then
      echo "iris: IRIS_CONTAINER is set but apptainer is not on PATH (module load apptainer?)" >&2
      exit 2
    fi
    IRIS_CMD=(apptainer exec --nv "$IRIS_CONTAINER" "$name")
  else
    IRIS_BIN=${IRIS_BIN:-$IRIS_HOME/build}
    if [ ! -x "$IRIS_BIN/$name" ]; then
      echo "iris: no $name in IRIS_BIN=$IRIS_BIN (build iris there, or export IRIS_BIN=/path/to/build, or IRIS_CONTAINER=/path/to/iris.sif)" >&2
      exit 2
    fi
    IRIS_CMD=("$IRIS_BIN/$name")
  fi
}
