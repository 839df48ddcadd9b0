#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Benchmark assembling disk images (Format=disk) from an already-built Debian
# trixie tree (Packages=systemd,udev,dbus,linux-image-amd64 plus a few more to
# make it ~500 MB, see EXTRA_PACKAGES; Bootable=no).
#
# 1. Builds the tree once (Format=directory) and reuses it on later runs.
# 2. Times our disk assembly (a second configuration with BaseTrees=<tree>,
#    Format=disk, Bootable=no, a fixed Seed=, --debug-timing): one untimed
#    warm-up, then N timed runs per layout. Reports the time per partition,
#    the disk image steps (the whole image), copying in the base tree and the
#    other build steps (not assembly), and the whole build (mean/min/max).
#    Layouts:
#      default     our default layout: root ext4, CopyFiles=/, Minimize=guess
#      verity      ESP vfat 512M + root ext4 2G + usr erofs with usr-verity
#                  (Verity=data/hash, Minimize=best)
#      fixed       ESP vfat 512M + root ext4 2G (fixed sizes)
#      fixed-root  root ext4 2G alone (fixed size)
# 3. Times the host's systemd-repart (252 on Debian 12, no Minimize=) on the
#    same tree with the fixed-size layouts. 252 needs loop devices and mounts
#    each filesystem to fill it, so it also needs kernel support for it.
# 4. If a trixie tools tree with systemd-repart 257 exists (left by
#    scripts/bench-build.sh), times it (--offline=yes, like upstream mkosi)
#    on all layouts, chrooted into that tree.
# 5. Prints the details per layout and a summary table.
#
# Benchmarks print figures; nothing here asserts a time. (The issue's target:
# at most 3 s for a ~500 MB ext4 root.)
#
# Usage: scripts/bench-disk.sh [--runs N] [--no-build] [--rebuild-tree] [--keep-images] [--keep-logs]
#
#   --runs N          timed runs per layout and tool (default 3)
#   --no-build        do not run cargo build first
#   --rebuild-tree    build the base tree again even if it exists
#   --keep-images     keep the last image of every layout in $BENCH_DIR/out
#   --keep-logs       keep the logs of all runs in $BENCH_DIR/logs.<date>
#
# Environment:
#   BENCH_DIR         work directory (default /var/cache/mkosi-ci/bench-disk);
#                     nothing is written outside it except the package cache
#   PACKAGE_CACHE     package cache (default /var/cache/mkosi-ci/debian~trixie~x86-64,
#                     the one the end-to-end tests and bench-build.sh use)
#   EXTRA_PACKAGES    more packages for the base tree, to make it ~500 MB (default
#                     python3,perl,vim,locales,openssh-server,iproute2,curl,less;
#                     set it empty for the bare systemd,udev,dbus,linux-image-amd64)
#   REPART257_TOOLS   tools tree with systemd-repart 257 (default
#                     /var/cache/mkosi-ci/bench/upstream/mkosi.tools); set it
#                     empty to skip
#   CARGO_TARGET_DIR  where to build (default /work/target-bench if /work
#                     exists, else <repo>/target-bench, like bench-build.sh)
#   MKOSI=/path       benchmark this binary instead of building one
#
# Run as root on Debian 12. Missing host tools (e2fsprogs, dosfstools, mtools,
# erofs-utils, systemd-repart, util-linux) are installed with apt-get.
set -euo pipefail

RUNS=3
BUILD=1
REBUILD_TREE=0
KEEP_IMAGES=0
KEEP_LOGS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --rebuild-tree) REBUILD_TREE=1; shift ;;
        --keep-images) KEEP_IMAGES=1; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) sed -n '3,/^set -euo pipefail/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "--runs needs a positive number" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run this as root" >&2; exit 2; }

. "$(dirname "$0")/bench-common.sh"
bench_paths /var/cache/mkosi-ci/bench-disk
# systemd, udev, dbus and the kernel make a ~300 MB tree; these bring it to
# ~500 MB, the size the issue's target is about.
EXTRA_PACKAGES=${EXTRA_PACKAGES-python3,perl,vim,locales,openssh-server,iproute2,curl,less}
REPART257_TOOLS=${REPART257_TOOLS-/var/cache/mkosi-ci/bench/upstream/mkosi.tools}

# Same seed for every tool: same partition and filesystem UUIDs.
SEED=0e9a6fd3-5d1c-4a7f-9b0c-6b5a1c3f2e11
# Fixed-size layouts (for systemd-repart 252, which has no Minimize=).
ROOT_SIZE=2G
ESP_SIZE=512M


bench_lock
TREE=$BENCH_DIR/tree            # the base tree
OUT=$BENCH_DIR/out              # images
WS=$BENCH_DIR/workspace         # our WorkspaceDirectory=
SCRATCH=$BENCH_DIR/scratch      # temporary files of systemd-repart
LOGS=$BENCH_DIR/logs
rm -rf "$LOGS" "$OUT" "$SCRATCH"
mkdir -p "$LOGS" "$OUT" "$WS" "$SCRATCH" "$PACKAGE_CACHE"

cleanup() {
    local rc=$?
    rm -rf "$SCRATCH"
    [ "$KEEP_IMAGES" = 1 ] || rm -rf "$OUT"
    if [ "$KEEP_LOGS" = 1 ]; then
        local kept
        kept=$BENCH_DIR/logs.$(date +%Y%m%d-%H%M%S)
        mv "$LOGS" "$kept" && log "logs kept in $kept"
    elif [ "$rc" = 0 ]; then
        rm -rf "$LOGS"
    else
        log "logs of the failed run are in $LOGS"
    fi
}
trap cleanup EXIT

# --- host tools ------------------------------------------------------------------------

need=()
for t in mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools mkfs.erofs:erofs-utils \
         systemd-repart:systemd-repart losetup:util-linux unshare:util-linux du:coreutils; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- our binary ------------------------------------------------------------------------

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

LOAD_BEFORE=$(loadavg)

# write_sandbox DIR: a sandbox tree without the unreachable debian-debug suite
# (like examples/debian-directory/mkosi.sandbox).
write_sandbox() {
    mkdir -p "$1/mkosi.sandbox/etc/apt/sources.list.d"
    cat > "$1/mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources" <<'EOF'
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

# --- 1. the base tree ------------------------------------------------------------------

PACKAGES="systemd,udev,dbus,linux-image-amd64${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"
TREE_CONF=$BENCH_DIR/tree-config
mkdir -p "$TREE_CONF"
write_sandbox "$TREE_CONF"
cat > "$TREE_CONF/mkosi.conf" <<EOF
[Distribution]
Distribution=debian
Release=trixie

[Output]
Format=directory
Output=tree
OutputDirectory=$BENCH_DIR

[Content]
Packages=$PACKAGES
Bootable=no

[Build]
PackageCacheDirectory=$PACKAGE_CACHE
WorkspaceDirectory=$WS
SandboxTrees=mkosi.sandbox
EOF
# Rebuild when the package list changed.
if [ "$REBUILD_TREE" = 1 ] || [ ! -d "$TREE/usr" ] || [ "$(cat "$BENCH_DIR/tree.packages" 2>/dev/null)" != "$PACKAGES" ]; then
    log "building the base tree ($PACKAGES) in $TREE"
    rm -f "$BENCH_DIR/tree.packages"
    if ! (cd "$TREE_CONF" && "$OURS" -f --debug-timing build) > "$LOGS/tree.log" 2>&1; then
        echo "FAILED to build the base tree; last lines:" >&2
        tail -30 "$LOGS/tree.log" >&2
        exit 1
    fi
    echo "$PACKAGES" > "$BENCH_DIR/tree.packages"
    TREE_BUILT="built now, steps took $(sed -n 's/^  total  *\([0-9.]*\)s$/\1/p' "$LOGS/tree.log" | tail -1) s"
else
    TREE_BUILT="reused (--rebuild-tree to build it again)"
fi
TREE_SIZE=$(du -sh "$TREE" | cut -f1)
TREE_BYTES=$(du -sb "$TREE" | cut -f1)
USR_SIZE=$(du -sh "$TREE/usr" | cut -f1)
MODULES_SIZE=$(du -sh "$TREE/usr/lib/modules" 2>/dev/null | cut -f1)
log "base tree: $TREE_SIZE ($TREE_BYTES bytes; /usr $USR_SIZE, /usr/lib/modules ${MODULES_SIZE:-none}), $TREE_BUILT"

# --- the layouts -----------------------------------------------------------------------

LAYOUTS=(default verity fixed fixed-root)
declare -A DESC=(
    [default]="our default layout: root ext4 CopyFiles=/ Minimize=guess"
    [verity]="ESP vfat $ESP_SIZE, root ext4 $ROOT_SIZE, usr erofs + usr-verity (Verity=data/hash, Minimize=best)"
    [fixed]="ESP vfat $ESP_SIZE, root ext4 $ROOT_SIZE (fixed sizes, no Minimize=)"
    [fixed-root]="root ext4 $ROOT_SIZE alone (fixed size, no Minimize=)"
)
DEFS=$BENCH_DIR/definitions
rm -rf "$DEFS"
# definition FILE SETTING…: a repart.d file with one [Partition] section.
definition() {
    local f=$1
    shift
    mkdir -p "$(dirname "$f")"
    { echo "[Partition]"; printf '%s\n' "$@"; } > "$f"
}
esp=(Type=esp Format=vfat CopyFiles=/boot:/ CopyFiles=/efi:/ SizeMinBytes=$ESP_SIZE SizeMaxBytes=$ESP_SIZE)
root_fixed=(Type=root Format=ext4 CopyFiles=/ SizeMinBytes=$ROOT_SIZE SizeMaxBytes=$ROOT_SIZE)
# The same as our built-in default (disk.rs: default_definitions); ours uses
# the built-in one, systemd-repart this copy.
definition "$DEFS/default/10-root.conf" Type=root Format=ext4 CopyFiles=/ Minimize=guess
definition "$DEFS/verity/00-esp.conf" "${esp[@]}"
definition "$DEFS/verity/10-root.conf" "${root_fixed[@]}"
definition "$DEFS/verity/20-usr.conf" Type=usr Format=erofs CopyFiles=/usr:/ Verity=data VerityMatchKey=usr Minimize=best
definition "$DEFS/verity/21-usr-verity.conf" Type=usr-verity Verity=hash VerityMatchKey=usr Minimize=best
definition "$DEFS/fixed/00-esp.conf" "${esp[@]}"
definition "$DEFS/fixed/10-root.conf" "${root_fixed[@]}"
definition "$DEFS/fixed-root/10-root.conf" "${root_fixed[@]}"

# ours_config LAYOUT: the Format=disk configuration on top of the base tree.
ours_config() {
    local layout=$1 dir=$BENCH_DIR/configs/$1
    mkdir -p "$dir" "$OUT/ours-$layout"
    write_sandbox "$dir"
    {
        printf '[Distribution]\nDistribution=debian\nRelease=trixie\n\n'
        printf '[Output]\nFormat=disk\nOutput=image\nOutputDirectory=%s\nSeed=%s\n' "$OUT/ours-$layout" "$SEED"
        [ "$layout" = default ] || printf 'RepartDirectories=%s\n' "$DEFS/$layout"
        printf '\n[Content]\nBaseTrees=%s\nBootable=no\nPackages=\n\n' "$TREE"
        printf '[Build]\nPackageCacheDirectory=%s\nWorkspaceDirectory=%s\nSandboxTrees=mkosi.sandbox\n' \
            "$PACKAGE_CACHE" "$WS"
    } > "$dir/mkosi.conf"
    echo "$dir"
}

# --- measuring -------------------------------------------------------------------------

RESULTS=$LOGS/results.tsv       # tool, layout, metric, seconds (one line per run)
NOTES=$LOGS/notes.tsv           # tool, layout, note (failures, image sizes)
: > "$RESULTS"
: > "$NOTES"
record() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }
note() { printf '%s\t%s\t%s\n' "$@" >> "$NOTES"; }

# timed LOG CMD…: runs CMD with its output in LOG after a sync (so that the
# previous run's dirty pages are not written back during this one); prints
# "wall cpu sync" in seconds, sync being how long a sync right after took
# (the image data CMD left for the kernel to write back; not in wall).
# Returns CMD's status.
timed() {
    local out=$1
    shift
    sync
    local TIMEFORMAT='%R %U %S' t rc=0 st
    t=$( { time "$@" > "$out" 2>&1; } 2>&1 ) || rc=$?
    [ "$rc" = 0 ] || return "$rc"
    st=$( { time sync; } 2>&1 )
    awk -v s="${st%% *}" '{printf "%.3f %.3f %.3f", $1, $2 + $3, s}' <<< "$t"
}

# partitions IMAGE: "label size, …" from the partition table.
partitions() {
    sfdisk -d "$1" 2>/dev/null | awk -F'[:,]' '/^\// {
        size = 0; name = "?"
        for (i = 2; i <= NF; i++) {
            if ($i ~ /size=/) { v = $i; sub(/.*size= */, "", v); size = v * 512 }
            if ($i ~ /name=/) { v = $i; sub(/.*name="/, "", v); sub(/".*/, "", v); name = v }
        }
        printf "%s%s %.1fM", sep, name, size / 1048576; sep = ", "
    }'
}

# image_note TOOL LAYOUT IMAGE: records the image's size and partitions.
image_note() {
    local tool=$1 layout=$2 img=$3
    [ -f "$img" ] || return 0
    note "$tool" "$layout" "image $(awk -v s="$(stat -c %s "$img")" 'BEGIN {printf "%.1fM", s / 1048576}') (allocated $(du -m "$img" | cut -f1)M): $(partitions "$img")"
}

# fail TOOL LAYOUT LOG: records a failure with the last lines of its log.
fail() {
    local why
    why=$(grep -v '^\s*$' "$3" | tail -3 | tr '\n' ' ' | cut -c1-400)
    note "$1" "$2" "FAILED: $why(log: ${3#"$BENCH_DIR"/})"
    log "$1 $2 FAILED: $why"
}

# Our steps that assemble the image; all others are "not assembly".
ASSEMBLY_STEPS='Generating disk image|Formatting ESP/XBOOTLDR partitions|Extracting partitions'

# bench_ours LAYOUT: a warm-up and RUNS timed builds; records the partition
# lines and step durations of --debug-timing.
bench_ours() {
    local layout=$1 dir i t log wall cpu st
    dir=$(ours_config "$layout")
    for ((i = 0; i <= RUNS; i++)); do
        log=$LOGS/ours.$layout.$i.log
        if ! t=$(timed "$log" bash -c 'cd "$1" && shift && exec "$@"' _ "$dir" "$OURS" -f --debug-timing build); then
            fail ours "$layout" "$log"
            return 0
        fi
        read -r wall cpu st <<< "$t"
        if [ "$i" = 0 ]; then
            log "ours $layout warm-up: ${wall}s"
            continue
        fi
        log "ours $layout run $i: ${wall}s wall, ${cpu}s cpu (load $(loadavg))"
        # "‣  Partition N (label, bytes) took Xs"
        sed -n 's/^‣  Partition \(.*\) took \([0-9.]*\)s$/partition \1\t\2/p' "$log" > "$LOGS/run.tsv"
        # The step tables (before building, and for the image): name, seconds,
        # summed per name (depmod runs twice).
        awk '/^Step durations/ {in_table = 1; next}
             in_table && /^  / {
                 v = $NF; sub(/s$/, "", v)
                 name = $0; sub(/ +[0-9.]+s$/, "", name); sub(/^  /, "", name)
                 if (name == "total") next
                 if (!(name in t)) order[++k] = name
                 t[name] += v
                 next
             }
             {in_table = 0}
             END { for (i = 1; i <= k; i++) printf "%s\t%.3f\n", order[i], t[order[i]] }' "$log" > "$LOGS/steps.tsv"
        awk -F'\t' -v re="^($ASSEMBLY_STEPS)$" '$1 ~ re {s += $2} END {printf "WHOLE IMAGE (disk image steps)\t%.3f\n", s}' \
            "$LOGS/steps.tsv" >> "$LOGS/run.tsv"
        awk -F'\t' -v re="^($ASSEMBLY_STEPS)$" '$1 ~ re {print "step: " $1 "\t" $2}' "$LOGS/steps.tsv" >> "$LOGS/run.tsv"
        awk -F'\t' -v re="^($ASSEMBLY_STEPS)$" '$1 !~ re {print "not assembly: " $1 "\t" $2}' "$LOGS/steps.tsv" >> "$LOGS/run.tsv"
        printf 'build: wall\t%s\nbuild: cpu (user+sys)\t%s\nsync afterwards (not included)\t%s\n' "$wall" "$cpu" "$st" >> "$LOGS/run.tsv"
        while IFS=$'\t' read -r metric v; do
            record ours "$layout" "$metric" "$v"
        done < "$LOGS/run.tsv"
    done
    image_note ours "$layout" "$OUT/ours-$layout/image.raw"
    [ "$KEEP_IMAGES" = 1 ] || rm -rf "${OUT:?}/ours-$layout"
}

# bench_repart TOOL LAYOUT IMAGE CMD…: a warm-up and RUNS timed runs of CMD,
# which writes IMAGE (removed before each run).
bench_repart() {
    local tool=$1 layout=$2 img=$3 i t log wall cpu st
    shift 3
    for ((i = 0; i <= RUNS; i++)); do
        log=$LOGS/$tool.$layout.$i.log
        rm -f "$img"
        rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
        if ! t=$(timed "$log" "$@"); then
            fail "$tool" "$layout" "$log"
            rm -f "$img"
            return 0
        fi
        if [ "$i" = 0 ]; then
            log "$tool $layout warm-up: ${t%% *}s"
            continue
        fi
        read -r wall cpu st <<< "$t"
        log "$tool $layout run $i: ${wall}s wall, ${cpu}s cpu (load $(loadavg))"
        record "$tool" "$layout" "WHOLE IMAGE (wall)" "$wall"
        record "$tool" "$layout" "cpu (user+sys)" "$cpu"
        record "$tool" "$layout" "sync afterwards (not included)" "$st"
    done
    image_note "$tool" "$layout" "$img"
    [ "$KEEP_IMAGES" = 1 ] || rm -f "$img"
}

# repart_args LAYOUT ROOT DEFS IMAGE: the options mkosi passes, as far as they matter here.
repart_args() {
    printf '%s\n' --empty=create --size=auto --dry-run=no --no-pager --json=off "--seed=$SEED" \
        "--root=$2" "--definitions=$3/$1" "$4"
}

# --- 2. ours ---------------------------------------------------------------------------

for layout in "${LAYOUTS[@]}"; do
    log "ours: $layout (${DESC[$layout]})"
    bench_ours "$layout"
done

# --- 3. the host's systemd-repart (252 on Debian 12) -----------------------------------

R252_VERSION=$(systemd-repart --version | head -1)
# 252 has no Minimize=: only the fixed-size layouts. It needs loop devices and
# mounts each new filesystem to copy files in (no --offline= before 254), so it
# also needs the kernel to support the filesystem (vfat for the ESP). Its mount
# point under /run goes to a private tmpfs.
for layout in fixed fixed-root; do
    log "systemd-repart ($R252_VERSION): $layout (${DESC[$layout]})"
    mapfile -t args < <(repart_args "$layout" "$TREE" "$DEFS" "$OUT/r252-$layout.raw")
    bench_repart repart-252 "$layout" "$OUT/r252-$layout.raw" \
        unshare -m --propagation private bash -c 'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"' _ \
        env "TMPDIR=$SCRATCH" systemd-repart "${args[@]}"
done

# --- 4. systemd-repart 257 from a trixie tools tree ------------------------------------

R257_STATUS=
if [ -n "$REPART257_TOOLS" ] && [ -x "$REPART257_TOOLS/usr/bin/systemd-repart" ]; then
    T=$REPART257_TOOLS
    # chroot into the tools tree in a private mount namespace: the bench
    # directory on /mnt, tmpfs on /run, /tmp and /var/tmp (nothing is written
    # into the tools tree), like upstream mkosi with RepartOffline=yes.
    chroot257=(unshare -m --propagation private bash -c '
        set -e
        T=$1 B=$2
        shift 2
        mount --bind "$B" "$T/mnt"
        for d in run tmp var/tmp; do mount -t tmpfs tmpfs "$T/$d"; done
        mount -t proc proc "$T/proc"
        mount --rbind /dev "$T/dev"
        exec chroot "$T" "$@"' _ "$T" "$BENCH_DIR")
    R257_VERSION=$("${chroot257[@]}" systemd-repart --version 2>&1 | head -1)
    R257_STATUS="$R257_VERSION in $T"
    for layout in "${LAYOUTS[@]}"; do
        log "systemd-repart ($R257_VERSION): $layout (${DESC[$layout]})"
        mapfile -t args < <(repart_args "$layout" /mnt/tree /mnt/definitions "/mnt/out/r257-$layout.raw")
        bench_repart repart-257 "$layout" "$OUT/r257-$layout.raw" \
            "${chroot257[@]}" env TMPDIR=/mnt/scratch systemd-repart --offline=yes "${args[@]}"
    done
else
    R257_STATUS="skipped: no $REPART257_TOOLS/usr/bin/systemd-repart (run scripts/bench-build.sh once to get a trixie tools tree)"
    log "systemd-repart 257: $R257_STATUS"
fi

# --- 5. report -------------------------------------------------------------------------

LOAD_AFTER=$(loadavg)

# stats TOOL LAYOUT: "metric<TAB>runs mean min max" in the order first recorded.
stats() {
    awk -F'\t' -v tool="$1" -v layout="$2" '$1 == tool && $2 == layout {
            m = $3; v = $4 + 0
            if (!(m in n)) { order[++k] = m; min[m] = v; max[m] = v }
            n[m]++; s[m] += v
            if (v < min[m]) min[m] = v
            if (v > max[m]) max[m] = v
        }
        END { for (i = 1; i <= k; i++) { m = order[i]; printf "%s\t%d %.3f %.3f %.3f\n", m, n[m], s[m] / n[m], min[m], max[m] } }' "$RESULTS"
}
# mean TOOL LAYOUT METRIC: the mean (2 decimals), "failed" or "-".
mean() {
    local v
    v=$(stats "$1" "$2" | awk -F'\t' -v m="$3" '$1 == m {split($2, a, " "); printf "%.2f", a[2]}')
    if [ -n "$v" ]; then
        echo "$v"
    elif notes "$1" "$2" | grep -q FAILED; then
        echo failed
    else
        echo -
    fi
}
notes() {
    awk -F'\t' -v tool="$1" -v layout="$2" '$1 == tool && $2 == layout {print $3}' "$NOTES"
}

fs_support() {
    local fs out=
    for fs in ext4 vfat erofs; do
        if grep -qw "$fs" /proc/filesystems; then out+="$fs yes, "; else out+="$fs no, "; fi
    done
    echo "${out%, }"
}

echo
echo "Disk image assembly benchmark: Debian trixie tree, Format=disk, Seed=$SEED,"
echo "warm page cache, $RUNS timed runs after an untimed warm-up, sync before each run"
echo "machine: $(nproc) CPUs, $(uname -m), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM;" \
    "load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo "kernel filesystems (for systemd-repart 252, which mounts them): $(fs_support);" \
    "loop devices: $([ -e /dev/loop-control ] && echo "/dev/loop-control present" || echo "no /dev/loop-control")"
echo "base tree: $TREE ($TREE_BUILT)"
echo "  Packages=$PACKAGES"
echo "  size $TREE_SIZE (du -sh; $TREE_BYTES bytes apparent; /usr $USR_SIZE, /usr/lib/modules ${MODULES_SIZE:-none})"
echo "ours: $OURS"
echo "systemd-repart (host): $R252_VERSION"
echo "systemd-repart 257: $R257_STATUS"

for layout in "${LAYOUTS[@]}"; do
    echo
    echo "== $layout: ${DESC[$layout]}"
    for tool in ours repart-252 repart-257; do
        s=$(stats "$tool" "$layout")
        n=$(notes "$tool" "$layout")
        [ -n "$s$n" ] || continue
        echo "  $tool"
        if [ -n "$s" ]; then
            printf '    %-62s %4s %8s %8s %8s\n' "seconds" runs mean min max
            while IFS=$'\t' read -r metric rest; do
                read -r runs m lo hi <<< "$rest"
                # Leave out the build steps that take no time.
                case "$metric" in
                    "not assembly: "*) awk -v m="$m" 'BEGIN {exit !(m < 0.05)}' && continue ;;
                esac
                printf '    %-62s %4s %8s %8s %8s\n' "$metric" "$runs" "$m" "$lo" "$hi"
            done <<< "$s"
        fi
        [ -z "$n" ] || sed 's/^/    /' <<< "$n"
    done
done

echo
echo "Summary (mean seconds; \"ours image\" = our disk image steps: no process start-up, no base tree copy;"
echo "\"ours build\" = wall time of the whole mkosi build; systemd-repart = wall time of the process)"
printf '%-11s %11s %11s %11s %11s\n' layout "ours image" "ours build" "repart 252" "repart 257"
for layout in "${LAYOUTS[@]}"; do
    r252=$(mean repart-252 "$layout" "WHOLE IMAGE (wall)")
    case "$layout" in default|verity) r252="n/a" ;; esac
    printf '%-11s %11s %11s %11s %11s\n' "$layout" "$(mean ours "$layout" "WHOLE IMAGE (disk image steps)")" \
        "$(mean ours "$layout" "build: wall")" "$r252" "$(mean repart-257 "$layout" "WHOLE IMAGE (wall)")"
done
echo "n/a: systemd-repart 252 has no Minimize=, so it only gets the fixed-size layouts."
root=$(stats ours default | awk -F'\t' '$1 ~ /^partition .*root/ {print $2; exit}')
if [ -n "$root" ]; then
    read -r _ m lo _ <<< "$root"
    echo "The issue's target is <= 3 s for a ~500 MB ext4 root: our default root partition took $m s (mean), $lo s (min)."
fi
