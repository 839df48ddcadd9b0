#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Benchmark `mkosi summary` / `mkosi --json summary` on a generated,
# realistic configuration tree (~50 files: [Match] sections, ~25 drop-ins in
# mkosi.conf.d/ including nested directories, profiles, three subimages with
# drop-ins, mkosi.local.conf, default-path files, specifiers, Include=).
#
# Target: under 10 ms for our binary (upstream needs about 500 ms).
#
# Usage: scripts/bench-summary.sh [--runs N] [--upstream-runs N] [--keep] [--no-build] [--no-install] [--profile]
#
#   --profile   also run our `mkosi summary` under valgrind --tool=callgrind
#               (installed with apt-get when missing) and print the instruction
#               count and the most expensive functions (inclusive)
#
# Environment:
#   UPSTREAM=/path      upstream mkosi checkout (default /work/upstream); set
#                       UPSTREAM= (empty) to skip upstream timing and comparison
#   CARGO_TARGET_DIR    where to build (default /work/target-bench if /work
#                       exists, else <repo>/target-bench)
#   MKOSI=/path/to/mkosi  benchmark this binary instead of building one
#   SEED                fixed --seed for both implementations
#
# Works on a fresh Debian 12 machine: installs hyperfine and python3 with
# apt-get when missing (as root). Without hyperfine it falls back to a timed
# loop. Exit status: 0 when the figures were produced and the JSON outputs
# match (or upstream is unavailable), 1 when the JSON outputs differ.
set -euo pipefail

RUNS=200
UPSTREAM_RUNS=15
KEEP=0
BUILD=1
INSTALL=1
PROFILE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --upstream-runs) UPSTREAM_RUNS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        --profile) PROFILE=1; shift ;;
        -h|--help) sed -n '3,28p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
UPSTREAM=${UPSTREAM-/work/upstream}
SEED=${SEED:-0e9a6fe0-68f6-408c-a2b0-7a1b2ac2c9c1}
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    if [ -d /work ] && [ -w /work ]; then CARGO_TARGET_DIR=/work/target-bench; else CARGO_TARGET_DIR=$REPO/target-bench; fi
fi
export CARGO_TARGET_DIR

log() { printf '>>> %s\n' "$*" >&2; }

# --- dependencies -----------------------------------------------------------

need_pkgs=()
command -v hyperfine >/dev/null || need_pkgs+=(hyperfine)
command -v python3 >/dev/null || need_pkgs+=(python3)
[ "$PROFILE" = 1 ] && ! command -v valgrind >/dev/null && need_pkgs+=(valgrind)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
        log "apt-get install failed; continuing without ${need_pkgs[*]}"
fi
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }

# --- the configuration tree ----------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mkosi-bench.XXXXXX")
if [ "$KEEP" = 1 ]; then
    trap 'log "kept $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
TREE=$WORK/tree

# w FILE: write stdin to FILE (relative to $TREE), creating directories.
w() { mkdir -p "$(dirname "$TREE/$1")"; cat > "$TREE/$1"; }

gen_tree() {
    mkdir -p "$TREE"

    w mkosi.conf <<'EOF'
# Main configuration of a benchmark image.
[Match]
Architecture=|x86-64
Architecture=|arm64
Architecture=|riscv64

[Match]
PathExists=%D/mkosi.extra

[Include]
Include=includes/common.conf

[Config]
Profiles=dev,debug
MinimumVersion=20

[Distribution]
Distribution=debian
Release=bookworm
Repositories=main,contrib
        non-free-firmware

[Output]
Format=directory
ImageId=bench
Output=%i_%v
OutputDirectory=mkosi.output
SplitArtifacts=uki,kernel

[Content]
Bootable=no
WithDocs=no
Hostname=bench-%i
Packages=
        systemd
        udev
        dbus
        # A comment in the middle of a list.
        iproute2
        openssh-server
KernelCommandLine=console=ttyS0 quiet
Locale=C.UTF-8
Timezone=UTC

[Build]
Environment=CONFDIR=%C
        IMAGE=%i
        VERSION=%v
ToolsTree=
WithNetwork=no
BuildSources=.:src

[Runtime]
RAM=2G
CPUs=2
EOF

    w mkosi.local.conf <<'EOF'
[Content]
Packages=vim-tiny
        less
[Build]
Incremental=no
[Runtime]
RAM=3G
EOF

    printf '1.2.3\n' | w mkosi.version
    printf 'hello from the extra tree\n' | w mkosi.extra/etc/motd
    printf 'skeleton\n' | w mkosi.skeleton/etc/issue
    printf '#!/bin/sh\necho postinst\n' | w mkosi.postinst
    printf '#!/bin/sh\necho build\n' | w mkosi.build
    chmod +x "$TREE/mkosi.postinst" "$TREE/mkosi.build"
    mkdir -p "$TREE/mkosi.output" "$TREE/src"

    w includes/common.conf <<'EOF'
[Include]
Include=%C/packages.conf

[Content]
RemoveFiles=/usr/share/doc
        /usr/share/man
CleanPackageMetadata=yes
EOF
    w includes/packages.conf <<'EOF'
[Content]
Packages=curl
        ca-certificates
BuildPackages=gcc
        make
EOF

    # ~25 drop-ins, flat and nested, with a mix of matching and non-matching [Match]es.
    local i
    local sections=(Content Content Content Output Build Runtime Content Validation Distribution Content)
    for i in $(seq -w 1 18); do
        local sec=${sections[$((10#$i % ${#sections[@]}))]}
        {
            echo "# drop-in $i"
            case $((10#$i % 6)) in
                0) printf '[Match]\nDistribution=debian\n\n' ;;
                1) printf '[Match]\nRelease=bookworm\nDistribution=|debian\nDistribution=|ubuntu\n\n' ;;
                2) printf '[Match]\nProfiles=dev\n\n' ;;
                3) printf '[Match]\nDistribution=fedora\n\n' ;;  # never matches
                4) printf '[TriggerMatch]\nFormat=directory\n\n[TriggerMatch]\nFormat=disk\n\n' ;;
                5) printf '[Match]\nImageId=bench\nArchitecture=!s390x\n\n' ;;
            esac
            case $sec in
                Content) printf '[Content]\nPackages=pkg-%s-a\n        pkg-%s-b\nRemovePackages=unwanted-%s\n[Build]\nEnvironment=DROPIN_%s=%%C\n' "$i" "$i" "$i" "$i" ;;
                Output) printf '[Output]\nCompressOutput=zstd\nCompressLevel=%d\nManifestFormat=json\n' "$((10#$i % 19 + 1))" ;;
                Build) printf '[Build]\nCacheOnly=metadata\nProxyUrl=\n[Content]\nBuildPackages=tool-%s\n' "$i" ;;
                Runtime) printf '[Runtime]\nKVM=auto\nKernelCommandLineExtra=dropin.%s=1\n' "$i" ;;
                Validation) printf '[Validation]\nChecksum=yes\n' ;;
                Distribution) printf '[Distribution]\nRepositoryKeyCheck=yes\nLocalMirror=\n' ;;
            esac
        } | w "mkosi.conf.d/$i-dropin.conf"
    done

    w mkosi.conf.d/30-debian/mkosi.conf <<'EOF'
[Match]
Distribution=debian

[Distribution]
Mirror=http://deb.debian.org/debian
[Content]
Packages=apt
        debian-archive-keyring
EOF
    w mkosi.conf.d/30-debian/mkosi.conf.d/10-bookworm.conf <<'EOF'
[Match]
Release=bookworm
[Content]
Packages=systemd-resolved
EOF
    w mkosi.conf.d/30-debian/mkosi.conf.d/20-trixie.conf <<'EOF'
[Match]
Release=trixie
[Content]
Packages=systemd-boot-efi
EOF
    w mkosi.conf.d/30-debian/mkosi.conf.d/30-arch/mkosi.conf <<'EOF'
[Match]
Architecture=|x86-64
Architecture=|arm64
[Content]
Packages=linux-image-cloud-%a
EOF
    w mkosi.conf.d/31-fedora/mkosi.conf <<'EOF'
[Match]
Distribution=fedora
[Content]
Packages=dnf
EOF
    w mkosi.conf.d/31-fedora/mkosi.conf.d/10-rawhide.conf <<'EOF'
[Content]
Packages=rawhide-only
EOF
    w mkosi.conf.d/40-specifiers.conf <<'EOF'
[Build]
Environment=DIST=%d REL=%r ARCH=%a FMT=%t OUT=%o ID=%i VER=%v DIR=%D CUR=%P FS=%F PCT=%%
[Output]
Output=%i_%v_%a
EOF

    # Profiles.
    w mkosi.profiles/dev.conf <<'EOF'
[Content]
Packages=gdb
        strace
Autologin=yes
[Runtime]
Ephemeral=yes
EOF
    w mkosi.profiles/debug/mkosi.conf <<'EOF'
[Content]
KernelCommandLine=debug
        systemd.log_level=debug
EOF
    w mkosi.profiles/debug/mkosi.conf.d/10-extra.conf <<'EOF'
[Match]
Profiles=debug
[Content]
Packages=valgrind
EOF
    w mkosi.profiles/release.conf <<'EOF'
[Content]
Packages=never-installed
EOF

    # Three subimages, each with a few drop-ins.
    # --seed= only reaches the main image (Seed= is not passed down to
    # subimages, which otherwise get a random one), so pin theirs here.
    local img n=0
    for img in base app addon; do
        n=$((n + 1))
        w "mkosi.images/$img/mkosi.conf" <<EOF
[Output]
Format=$( [ "$img" = base ] && echo directory || echo sysext )
Output=%i_${img}_%v
Seed=5eed0000-0000-4000-8000-00000000000$n
[Content]
Packages=$img-core
[Build]
Environment=SUBIMAGE=%I
EOF
        w "mkosi.images/$img/mkosi.conf.d/10-packages.conf" <<EOF
[Content]
Packages=$img-extra
        $img-libs
EOF
        w "mkosi.images/$img/mkosi.conf.d/20-match.conf" <<'EOF'
[Match]
Distribution=debian
[Content]
RemoveFiles=/usr/lib/%I
EOF
    done
    w mkosi.images/app/mkosi.conf.d/30-deps.conf <<'EOF'
[Config]
Dependencies=base
[Content]
BaseTrees=%O/bench_base_%v
EOF
    w mkosi.images/addon/mkosi.conf.d/30-deps.conf <<'EOF'
[Config]
Dependencies=base
EOF
}

gen_tree
NFILES=$(find "$TREE" -type f | wc -l)
NCONF=$(find "$TREE" -type f -name '*.conf' | wc -l)
log "generated $NFILES files ($NCONF *.conf) in $TREE"

# --- our binary --------------------------------------------------------------------

if [ -n "${MKOSI:-}" ]; then
    OURS=$MKOSI
else
    OURS=$CARGO_TARGET_DIR/release/mkosi
    if [ "$BUILD" = 1 ]; then
        command -v cargo >/dev/null || { echo "cargo is required to build mkosi (or set MKOSI=)" >&2; exit 2; }
        log "building mkosi (release) in $CARGO_TARGET_DIR"
        (cd "$REPO" && cargo build --release --quiet -p mkosi)
    fi
fi
[ -x "$OURS" ] || { echo "no mkosi binary at $OURS" >&2; exit 2; }

have_upstream=0
if [ -n "$UPSTREAM" ] && [ -f "$UPSTREAM/mkosi/__main__.py" ]; then
    have_upstream=1
    UPSTREAM=$(cd "$UPSTREAM" && pwd)
fi
upstream_cmd() { (cd "$TREE" && PYTHONPATH="$UPSTREAM" python3 -m mkosi "$@"); }

# Sanity: both must succeed on the tree before anything is timed.
(cd "$TREE" && "$OURS" --seed="$SEED" summary > "$WORK/ours.txt")
(cd "$TREE" && "$OURS" --seed="$SEED" --json summary > "$WORK/ours.json")
if [ "$have_upstream" = 1 ]; then
    upstream_cmd --seed="$SEED" --json summary > "$WORK/upstream.json"
    upstream_cmd --seed="$SEED" summary > "$WORK/upstream.txt"
fi

# --- timing ------------------------------------------------------------------------

# bench NAME RUNS SHELL CMD → prints "mean median min max cpu" in ms (cpu:
# mean user+system time, less sensitive to other load on the machine). SHELL=0 runs
# CMD without a shell (hyperfine -N: exact for millisecond commands); SHELL=1
# runs it through sh (upstream needs PYTHONPATH=), hyperfine subtracts the
# shell's own start-up time.
bench() {
    local name=$1 runs=$2 shell=$3 cmd=$4
    if command -v hyperfine >/dev/null; then
        local shellopt=(-N)
        [ "$shell" = 1 ] && shellopt=()
        hyperfine "${shellopt[@]}" --style none --warmup 3 --runs "$runs" \
            --export-json "$WORK/$name.hf.json" "$cmd" >/dev/null 2>&1
        python3 - "$WORK/$name.hf.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print("%.2f %.2f %.2f %.2f %.2f" % tuple(x * 1000 for x in (r["mean"], r["median"], r["min"], r["max"], r["user"] + r["system"])))
PY
    else
        local t0 t1 i
        : > "$WORK/$name.times"
        for ((i = 0; i < 3; i++)); do bash -c "$cmd" >/dev/null 2>&1; done
        for ((i = 0; i < runs; i++)); do
            t0=$(date +%s%N); bash -c "$cmd" >/dev/null 2>&1; t1=$(date +%s%N)
            echo $(( t1 - t0 )) >> "$WORK/$name.times"
        done
        python3 - "$WORK/$name.times" <<'PY'
import statistics, sys
t = [int(l) / 1e6 for l in open(sys.argv[1])]
print("%.2f %.2f %.2f %.2f -" % (statistics.mean(t), statistics.median(t), min(t), max(t)))
PY
    fi
}

results=()
run() {
    local label=$1 runs=$2 shell=$3 cmd=$4 r
    log "timing: $label ($runs runs)"
    r=$(bench "$(echo "$label" | tr -c 'a-zA-Z0-9' _)" "$runs" "$shell" "$cmd")
    results+=("$label|$r")
}

cd "$TREE"
run "ours summary" "$RUNS" 0 "$OURS --seed=$SEED summary"
run "ours --json summary" "$RUNS" 0 "$OURS --seed=$SEED --json summary"
if [ "$have_upstream" = 1 ]; then
    run "upstream summary" "$UPSTREAM_RUNS" 1 "PYTHONPATH=$UPSTREAM python3 -m mkosi --seed=$SEED summary"
    run "upstream --json summary" "$UPSTREAM_RUNS" 1 "PYTHONPATH=$UPSTREAM python3 -m mkosi --seed=$SEED --json summary"
fi

echo
echo "mkosi summary benchmark: $NFILES files ($NCONF *.conf), $(nproc) CPUs, $(uname -m), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binary: $OURS"
[ "$have_upstream" = 1 ] && echo "upstream: $UPSTREAM ($(python3 --version 2>&1))"
printf '%-26s %10s %10s %10s %10s %10s\n' command "mean ms" "median ms" "min ms" "max ms" "cpu ms"
for r in "${results[@]}"; do
    IFS='|' read -r label fig <<< "$r"
    read -r mean median min max cpu <<< "$fig"
    printf '%-26s %10s %10s %10s %10s %10s\n' "$label" "$mean" "$median" "$min" "$max" "$cpu"
done

status=0
# The verdict uses the median: on a busy machine the mean is dominated by
# scheduling delays that have nothing to do with mkosi.
ours_median=$(echo "${results[0]}" | cut -d'|' -f2 | cut -d' ' -f2)
if python3 -c "import sys; sys.exit(0 if float('$ours_median') < 10 else 1)"; then
    echo "target (< 10 ms median for 'mkosi summary'): MET"
else
    echo "target (< 10 ms median for 'mkosi summary'): NOT MET"
fi

# --- JSON equality with upstream --------------------------------------------------

if [ "$have_upstream" = 1 ]; then
    if cmp -s "$WORK/ours.json" "$WORK/upstream.json"; then
        echo "--json summary: identical to upstream ($(wc -c < "$WORK/ours.json") bytes)"
    else
        echo "--json summary: DIFFERS from upstream:"
        python3 - "$WORK/upstream.json" "$WORK/ours.json" <<'PY' || true
import json, sys
up, ours = (json.load(open(p)) for p in sys.argv[1:3])
def walk(a, b, path):
    if type(a) != type(b):
        print(f"  {path}: upstream {json.dumps(a)[:200]} != ours {json.dumps(b)[:200]}"); return
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a: print(f"  {path}.{k}: only in ours: {json.dumps(b[k])[:200]}")
            elif k not in b: print(f"  {path}.{k}: only in upstream: {json.dumps(a[k])[:200]}")
            else: walk(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and len(a) == len(b) and not all(isinstance(x, str) for x in a):
        for i, (x, y) in enumerate(zip(a, b)): walk(x, y, f"{path}[{i}]")
    elif a != b:
        print(f"  {path}: upstream {json.dumps(a)[:300]} != ours {json.dumps(b)[:300]}")
walk(up, ours, "")
PY
        diff -u "$WORK/upstream.json" "$WORK/ours.json" | head -60 || true
        status=1
    fi
    # The human-readable summary is compared too, for information only.
    if cmp -s "$WORK/ours.txt" "$WORK/upstream.txt"; then
        echo "summary text: identical to upstream"
    else
        echo "summary text: differs from upstream (informational):"
        diff -u "$WORK/upstream.txt" "$WORK/ours.txt" | grep '^[-+][^-+]' | head -20 || true
    fi
else
    echo "upstream not available (UPSTREAM=$UPSTREAM): timing and JSON comparison skipped"
fi
# --- profile ------------------------------------------------------------------------

if [ "$PROFILE" = 1 ]; then
    if command -v valgrind >/dev/null; then
        echo
        echo "callgrind profile of 'mkosi summary' (instructions, inclusive):"
        (cd "$TREE" && valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
            "$OURS" --seed="$SEED" summary >/dev/null 2>"$WORK/callgrind.log") || true
        grep -o 'Collected : [0-9]*' "$WORK/callgrind.log" || true
        callgrind_annotate --inclusive=yes "$WORK/callgrind.out" 2>/dev/null |
            grep -E '^ *[0-9,]+ +\( *[0-9.]+%\) +.*(mkosi|malloc|free|hash|clap)' | head -30 | cut -c1-150 || true
        [ "$KEEP" = 1 ] && echo "callgrind output: $WORK/callgrind.out (callgrind_annotate --inclusive=yes --tree=caller)"
    else
        echo "valgrind not available: profile skipped"
    fi
fi

exit $status
