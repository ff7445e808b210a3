#!/usr/bin/env bash
# Proves containers/iris.def without Apptainer (which cannot run here): a
# Debian root made by debootstrap as the definition says (OSVersion,
# MirrorURL), its %files copied in, its own %post run in it by chroot, then
# its %environment and %test. The sections are read from the definition, not
# from a copy. Needs root and debootstrap (apt-get install debootstrap).
#   sudo bash scripts/container_check.sh [--root DIR] [--keep] [--ccache DIR]
# --ccache DIR lends the host's compiler cache to the build inside (bind
# mount), so that a re-check does not compile everything again.
# Exit 0 when %test passes; otherwise non-zero, naming the step that failed.
# The root is removed afterwards (--keep leaves it, and says where).
set -euo pipefail
cd "$(dirname "$0")/.."
DEF=containers/iris.def
ROOT="" KEEP=0 CCACHE_HOST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift ;;
    --keep) KEEP=1 ;;
    --ccache) CCACHE_HOST=$2; shift ;;
    *) echo "container_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "container_check: run as root (debootstrap and chroot need it)" >&2; exit 2; }
command -v debootstrap > /dev/null || { echo "container_check: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
ROOT=${ROOT:-$(mktemp -d /var/tmp/iris-container.XXXXXX)}
mkdir -p "$ROOT"

# One section of the definition: the lines after "%NAME" up to the next "%".
section() { awk -v want="%$1" '/^%[a-z]+/ {on = ($1 == want); next} on' "$DEF"; }
header() { sed -n "s/^$1:[[:space:]]*//p" "$DEF" | head -n 1; }
OS=$(header OSVersion) MIRROR=$(header MirrorURL)
[ "$(header Bootstrap)" = debootstrap ] || { echo "container_check: $DEF does not bootstrap from debootstrap" >&2; exit 2; }

mounted=()
cleanup() {
  local rc=$?
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2> /dev/null || true; done
  if [ "$KEEP" = 1 ]; then
    echo "container_check: the root is kept at $ROOT"
  else
    rm -rf --one-file-system "$ROOT"  # no half-made root is left behind
  fi
  exit $rc
}
trap cleanup EXIT
step() { echo "container_check: $*"; }
fail() { echo "container_check: FAILED at $1 (exit $2)" >&2; exit "$2"; }

t0=$(date +%s)
step "debootstrap $OS from $MIRROR into $ROOT"
debootstrap --variant=minbase "$OS" "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 || fail "debootstrap (log: $ROOT.debootstrap.log)" $?
rm -f "$ROOT.debootstrap.log"

step "%files"
while read -r from to; do
  [ -z "${from:-}" ] && continue
  mkdir -p "$ROOT$(dirname "$to")"
  cp -a "$from" "$ROOT$to" || fail "%files ($from)" $?
done < <(section files | sed 's/#.*//')

for m in proc sys dev dev/pts; do
  mkdir -p "$ROOT/$m"
  mount --bind "/$m" "$ROOT/$m"
  mounted+=("$ROOT/$m")
done
# As Apptainer binds them into %post: without /etc/hosts, "localhost" does not
# resolve and the two-rank (Gloo) tests of %post's ctest wait forever.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
# The build host's own certificate authorities (a network that inspects TLS
# has its CA there): %post's ca-certificates adds them to the root's bundle,
# and pip is told to use that bundle rather than its built-in one.
env_tls=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  env_tls=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt)
fi
env_ccache=()
if [ -n "$CCACHE_HOST" ]; then
  mkdir -p "$ROOT/var/cache/iris-ccache"
  mount --bind "$CCACHE_HOST" "$ROOT/var/cache/iris-ccache"
  mounted+=("$ROOT/var/cache/iris-ccache")
  env_ccache=(CCACHE_DIR=/var/cache/iris-ccache)
fi

# %post exactly as written, each command traced, so that a failure names it.
step "%post"
section post > "$ROOT/.iris-post.sh"
t1=$(date +%s)
chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin "${env_ccache[@]}" "${env_tls[@]}" \
  /bin/bash -euxo pipefail /.iris-post.sh > "$ROOT.post.log" 2>&1 || {
  rc=$?
  tail -n 20 "$ROOT.post.log" >&2
  fail "%post, at: $(grep '^+' "$ROOT.post.log" | tail -n 1) (log: $ROOT.post.log)" $rc
}
step "%post done in $(( $(date +%s) - t1 )) s"

step "%test"
{ section environment; section test; } > "$ROOT/.iris-test.sh"
chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -eu /.iris-test.sh || fail "%test" $?
[ -d "$ROOT/opt/iris/src" ] && fail "%post (the image still holds the source checkout /opt/iris/src)" 1
rm -f "$ROOT.post.log"
step "passed in $(( $(date +%s) - t0 )) s (image size $(du -sh --exclude=proc --exclude=sys --exclude=dev "$ROOT" 2> /dev/null | cut -f1))"
