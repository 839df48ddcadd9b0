#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Benchmark `mkosi build` of a minimal Debian trixie directory image
# (Packages=systemd,udev,dbus) with a warm package cache: one untimed run to
# warm the cache, then N timed runs with -f. Prints the wall (and CPU) time of
# each run, our per-step breakdown (--debug-timing, mean over the timed runs)
# and — when upstream is available — upstream's time for the same
# configuration.
#
# Usage: scripts/bench-build.sh [--runs N] [--upstream-runs N] [--no-build] [--keep-logs] [--pause S]
#
#   --pause S   wait S seconds before each timed run. On ext4 without a journal
#               (this machine's root file system) the kernel does not reuse inodes
#               deleted in the last 5 s (300 s while their inode table block is
#               dirty) and scans past them, so back-to-back builds that delete and
#               create thousands of files get slower run after run (much more
#               system time); --pause 310 measures settled runs.
#
# Environment:
#   UPSTREAM=/path      upstream mkosi checkout (default /work/upstream); set
#                       UPSTREAM= (empty) to skip upstream. Upstream needs a
#                       tools tree on Debian 12 (its systemd is too old); the
#                       first upstream run builds one (ToolsTree=yes, about
#                       1.6 GiB, a few minutes) in $BENCH_DIR/upstream and
#                       later runs reuse it.
#   BENCH_DIR           persistent work directory (default /var/cache/mkosi-ci/bench)
#   PACKAGE_CACHE       our package cache (default /var/cache/mkosi-ci/debian~trixie~x86-64,
#                       the one the end-to-end tests use)
#   UPSTREAM_PACKAGE_CACHE  upstream's (default /var/cache/mkosi-ci/upstream-debian~trixie~x86-64)
#   CARGO_TARGET_DIR    where to build (default /work/target-bench if /work
#                       exists, else <repo>/target-bench)
#   MKOSI=/path/to/mkosi  benchmark this binary instead of building one
#
# Run as root (or as a user with a subordinate id range). The machine may be
# shared: the load average is printed before and after, and the CPU time
# (user+sys of mkosi and everything it ran) is less sensitive to other load
# than the wall time.
set -euo pipefail

RUNS=3
UPSTREAM_RUNS=2
BUILD=1
KEEP_LOGS=0
PAUSE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --upstream-runs) UPSTREAM_RUNS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --pause) PAUSE=$2; shift 2 ;;
        -h|--help) sed -n '3,/^set -euo pipefail/{/^#/p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

. "$(dirname "$0")/bench-common.sh"
bench_paths /var/cache/mkosi-ci/bench
UPSTREAM=${UPSTREAM-/work/upstream}
UPSTREAM_PACKAGE_CACHE=${UPSTREAM_PACKAGE_CACHE:-/var/cache/mkosi-ci/upstream-debian~trixie~x86-64}


LOGS=$(mktemp -d "${TMPDIR:-/tmp}/mkosi-bench-build.XXXXXX")
if [ "$KEEP_LOGS" = 1 ]; then
    trap 'log "logs kept in $LOGS"' EXIT
else
    trap 'rm -rf "$LOGS"' EXIT
fi

# --- our binary ---------------------------------------------------------------------

if [ -n "${MKOSI:-}" ]; then
    OURS=$MKOSI
else
    OURS=$CARGO_TARGET_DIR/release/mkosi
    if [ "$BUILD" = 1 ]; then
        log "building mkosi (release) in $CARGO_TARGET_DIR"
        (cd "$REPO" && cargo build --release --quiet -p mkosi)
    fi
fi
[ -x "$OURS" ] || { echo "no mkosi binary at $OURS" >&2; exit 2; }

# --- the configuration ----------------------------------------------------------------

# write_config DIR [EXTRA…]: the benchmark configuration (plus extra [Build]
# lines) and a sandbox tree without the unreachable debian-debug suite.
write_config() {
    local dir=$1
    shift
    mkdir -p "$dir/mkosi.sandbox/etc/apt/sources.list.d"
    {
        printf '[Distribution]\nDistribution=debian\nRelease=trixie\n\n'
        printf '[Output]\nFormat=directory\n\n'
        printf '[Content]\nPackages=systemd,udev,dbus\n'
        if [ $# -gt 0 ]; then
            printf '\n[Build]\n'
            printf '%s\n' "$@"
        fi
    } > "$dir/mkosi.conf"
    cat > "$dir/mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

# timed NAME DIR CMD…: run CMD in DIR, append "wall user sys" (seconds) to
# $LOGS/NAME.times and its output to $LOGS/NAME.N.log. Fails loudly.
timed() {
    local name=$1 dir=$2
    shift 2
    local n
    n=1
    [ -f "$LOGS/$name.times" ] && n=$(($(wc -l < "$LOGS/$name.times") + 1))
    local out=$LOGS/$name.$n.log
    local TIMEFORMAT='%R %U %S'
    local t
    if ! t=$( { time (cd "$dir" && "$@" > "$out" 2>&1) ; } 2>&1 ); then
        echo "FAILED: $* (in $dir); last lines of its output:" >&2
        tail -30 "$out" >&2
        exit 1
    fi
    echo "$t" >> "$LOGS/$name.times"
    read -r wall user sys <<< "$t"
    log "$name run $n: ${wall}s wall, $(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.1f", u + s}')s cpu (load $(loadavg))"
}

# stats FILE: "mean median min max cpu_mean" of a .times file.
stats() {
    sort -n "$1" | awk '{w[NR]=$1; c+=$2+$3; s+=$1}
        END {m = (NR % 2) ? w[(NR+1)/2] : (w[NR/2] + w[NR/2+1]) / 2;
             printf "%.1f %.1f %.1f %.1f %.1f", s/NR, m, w[1], w[NR], c/NR}'
}

LOAD_BEFORE=$(loadavg)
mkdir -p "$BENCH_DIR" "$PACKAGE_CACHE"

# --- ours ------------------------------------------------------------------------------

OURS_DIR=$BENCH_DIR/ours
write_config "$OURS_DIR"
ours=("$OURS" "--package-cache-dir=$PACKAGE_CACHE")
log "ours: warming the package cache ($OURS_DIR)"
timed ours-warm "$OURS_DIR" "${ours[@]}" -f build
for ((i = 0; i < RUNS; i++)); do
    [ "$PAUSE" -gt 0 ] && { log "pausing ${PAUSE}s"; sleep "$PAUSE"; }
    timed ours "$OURS_DIR" "${ours[@]}" -f --debug-timing build
done

# --- upstream --------------------------------------------------------------------------

have_upstream=0
if [ -n "$UPSTREAM" ] && [ -f "$UPSTREAM/mkosi/__main__.py" ] && command -v python3 >/dev/null; then
    have_upstream=1
    UPSTREAM=$(cd "$UPSTREAM" && pwd)
    UP_DIR=$BENCH_DIR/upstream
    write_config "$UP_DIR" ToolsTree=yes ToolsTreeRelease=trixie ToolsTreeSandboxTrees=mkosi.sandbox
    mkdir -p "$UPSTREAM_PACKAGE_CACHE"
    upstream=(env "PYTHONPATH=$UPSTREAM" python3 -m mkosi "--package-cache-dir=$UPSTREAM_PACKAGE_CACHE")
    if [ -d "$UP_DIR/mkosi.tools" ]; then
        log "upstream: warming the package cache ($UP_DIR, tools tree exists)"
    else
        log "upstream: building its tools tree and warming the package cache ($UP_DIR, takes minutes)"
    fi
    timed upstream-warm "$UP_DIR" "${upstream[@]}" -f build
    for ((i = 0; i < UPSTREAM_RUNS; i++)); do
        [ "$PAUSE" -gt 0 ] && { log "pausing ${PAUSE}s"; sleep "$PAUSE"; }
        timed upstream "$UP_DIR" "${upstream[@]}" -f build
    done
fi

# --- report ----------------------------------------------------------------------------

LOAD_AFTER=$(loadavg)
echo
echo "mkosi build benchmark: Debian trixie, Format=directory, Packages=systemd,udev,dbus, warm package cache"
echo "machine: $(nproc) CPUs, $(uname -m), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo "ours: $OURS"
[ "$have_upstream" = 1 ] && echo "upstream: $UPSTREAM ($(python3 --version 2>&1)), tools tree $UP_DIR/mkosi.tools"
printf '%-22s %5s %9s %9s %9s %9s %9s\n' "" runs "mean s" "median s" "min s" "max s" "cpu s"
row() {
    local label=$1 file=$2
    [ -f "$file" ] || return 0
    read -r mean median min max cpu <<< "$(stats "$file")"
    printf '%-22s %5s %9s %9s %9s %9s %9s\n' "$label" "$(wc -l < "$file")" "$mean" "$median" "$min" "$max" "$cpu"
}
row "ours (warm-up)" "$LOGS/ours-warm.times"
row "ours -f" "$LOGS/ours.times"
if [ "$have_upstream" = 1 ]; then
    row "upstream (warm-up)" "$LOGS/upstream-warm.times"
    row "upstream -f" "$LOGS/upstream.times"
fi

echo
echo "our steps (--debug-timing, mean of $RUNS runs, seconds):"
cat "$LOGS"/ours.*.log | sed -n 's/^‣  \(.*\) took \([0-9.]*\)s$/\2\t\1/p' |
    awk -F'\t' -v runs="$RUNS" '{t[$2] += $1} END {for (s in t) printf "%9.3f  %s\n", t[s] / runs, s}' |
    sort -rn | awk '$1 >= 0.0005'
steps_total=$(cat "$LOGS"/ours.*.log | sed -n 's/^  total  *\([0-9.]*\)s$/\1/p' | awk -v runs="$RUNS" '{t += $1} END {printf "%.3f", t / runs}')
wall_mean=$(awk '{s += $1} END {printf "%.3f", s / NR}' "$LOGS/ours.times")
printf '%9.3f  %s\n' "$steps_total" "total of the steps"
printf '%9.3f  %s\n' "$(awk -v w="$wall_mean" -v t="$steps_total" 'BEGIN {print w - t}')" \
    "outside the steps (parsing, becoming root, workspace cleanup…)"
if [ "$have_upstream" = 0 ]; then
    echo
    echo "upstream not available (UPSTREAM=$UPSTREAM): skipped"
fi
