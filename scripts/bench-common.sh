# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Sourced by the bench-*.sh scripts: the defaults and helpers they share.

log() { printf '>>> %s\n' "$*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# bench_paths DEFAULT_BENCH_DIR: sets REPO, BENCH_DIR (unless set), PACKAGE_CACHE (unless
# set; the cache the end-to-end tests use) and CARGO_TARGET_DIR (unless set:
# /work/target-bench when /work is writable, else <repo>/target-bench), exported.
bench_paths() {
    REPO=$(cd "$(dirname "$0")/.." && pwd)
    BENCH_DIR=${BENCH_DIR:-$1}
    PACKAGE_CACHE=${PACKAGE_CACHE:-/var/cache/mkosi-ci/debian~trixie~x86-64}
    if [ -z "${CARGO_TARGET_DIR:-}" ]; then
        if [ -d /work ] && [ -w /work ]; then CARGO_TARGET_DIR=/work/target-bench; else CARGO_TARGET_DIR=$REPO/target-bench; fi
    fi
    export CARGO_TARGET_DIR
}

# bench_lock: creates BENCH_DIR (made absolute) and PACKAGE_CACHE, and holds a lock on
# BENCH_DIR for the rest of the script (fd 9), refusing a second run in it.
bench_lock() {
    mkdir -p "$BENCH_DIR" "$PACKAGE_CACHE"
    BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
    exec 9> "$BENCH_DIR/.lock"
    flock -n 9 || { echo "another $(basename "$0") is running in $BENCH_DIR" >&2; exit 2; }
}
