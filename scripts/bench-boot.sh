#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Benchmark building and booting a bootable Debian trixie disk image:
#
# 1. Builds `-t disk --bootable=yes` with linux-image-cloud-amd64, systemd,
#    systemd-boot, systemd-boot-efi, udev and dbus (KernelCommandLine=console=ttyS0,
#    firstboot settings, an extra tree with a unit that prints a marker on
#    /dev/ttyS0 and powers off). The first build warms the package cache
#    (skipped with --no-warmup); the timed build runs with --debug-timing and
#    its step breakdown is printed.
# 2. Boots the image in qemu with OVMF (the secure boot capable firmware with
#    an empty variable store, as upstream mkosi picks for Debian) and times
#    qemu start to the marker, under KVM when it really works here (a probe
#    guest runs first) else under TCG; it says which.
#
# Prints figures, asserts nothing.
#
# Usage: scripts/bench-boot.sh [--no-build] [--no-warmup] [--runs N]
#
#   --no-build    do not run cargo build first
#   --no-warmup   skip the untimed first build
#   --runs N      boots to time (default 1)
#
# Environment:
#   BENCH_DIR         work directory (default /var/cache/mkosi-ci/bench-boot)
#   PACKAGE_CACHE     package cache (default /var/cache/mkosi-ci/debian~trixie~x86-64,
#                     the one the end-to-end tests use)
#   CARGO_TARGET_DIR  where to build (default /work/target-bench if /work exists,
#                     else <repo>/target-bench, like the other bench scripts)
#   MKOSI=/path       use this mkosi binary instead of building one
#
# Run as root on Debian 12; qemu-system-x86 and ovmf are installed with
# apt-get when missing.
set -euo pipefail

BUILD=1
WARMUP=1
RUNS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0; shift ;;
        --no-warmup) WARMUP=0; shift ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n '3,/^set -euo pipefail/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "--runs needs a positive number" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run this as root" >&2; exit 2; }

. "$(dirname "$0")/bench-common.sh"
bench_paths /var/cache/mkosi-ci/bench-boot
MARKER=MKOSI-BENCH-BOOT-MARKER


bench_lock

need=()
for t in qemu-system-x86_64:qemu-system-x86 /usr/share/qemu/firmware/60-edk2-x86_64.json:ovmf; do
    case "${t%%:*}" in
        /*) [ -e "${t%%:*}" ] || need+=("${t#*:}") ;;
        *) command -v "${t%%:*}" >/dev/null || need+=("${t#*:}") ;;
    esac
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- binaries ----------------------------------------------------------------------------

if [ "$BUILD" = 1 ]; then
    log "cargo build --release (mkosi, qemu-boot)"
    (cd "$REPO" && cargo build --release -q -p mkosi --bin mkosi && cargo build --release -q -p mkosi-build --example qemu-boot)
fi
MKOSI=${MKOSI:-$CARGO_TARGET_DIR/release/mkosi}
QEMU_BOOT=$CARGO_TARGET_DIR/release/examples/qemu-boot
for b in "$MKOSI" "$QEMU_BOOT"; do
    [ -x "$b" ] || { echo "$b does not exist (run without --no-build)" >&2; exit 2; }
done

# --- configuration -----------------------------------------------------------------------

CONF=$BENCH_DIR/config
rm -rf "$CONF"
mkdir -p "$CONF/mkosi.sandbox/etc/apt/sources.list.d" "$CONF/mkosi.extra/etc/systemd/system/multi-user.target.wants"
cat > "$CONF/mkosi.conf" <<EOF
[Distribution]
Distribution=debian
Release=trixie

[Output]
Format=disk
Output=image
OutputDirectory=$BENCH_DIR/out

[Content]
Packages=linux-image-cloud-amd64,systemd,systemd-boot,systemd-boot-efi,udev,dbus
Bootable=yes
KernelCommandLine=console=ttyS0
Locale=C.UTF-8
Keymap=us
Timezone=UTC
RootPassword=mkosi

[Build]
PackageCacheDirectory=$PACKAGE_CACHE
WorkspaceDirectory=$BENCH_DIR/workspace
EOF
# The Debian archive without the debian-debug suite (as in examples/debian-directory).
cp "$REPO/examples/debian-directory/mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources" \
    "$CONF/mkosi.sandbox/etc/apt/sources.list.d/"
cat > "$CONF/mkosi.extra/etc/systemd/system/bench-marker.service" <<EOF
[Unit]
Description=Report a finished boot on the serial console

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo $MARKER >/dev/ttyS0'
ExecStartPost=/usr/bin/systemctl --no-block poweroff
EOF
ln -s ../bench-marker.service "$CONF/mkosi.extra/etc/systemd/system/multi-user.target.wants/bench-marker.service"
mkdir -p "$BENCH_DIR/out" "$BENCH_DIR/workspace"

# --- build -------------------------------------------------------------------------------

if [ "$WARMUP" = 1 ]; then
    log "warm-up build (fills the package cache)"
    "$MKOSI" -C "$CONF" -f build > "$BENCH_DIR/warmup.log" 2>&1 || {
        tail -40 "$BENCH_DIR/warmup.log"; echo "the warm-up build failed" >&2; exit 1; }
fi
log "timed build"
start=$(date +%s.%N)
"$MKOSI" -C "$CONF" -f --debug-timing build > "$BENCH_DIR/build.log" 2>&1 || {
    tail -40 "$BENCH_DIR/build.log"; echo "the build failed" >&2; exit 1; }
build_s=$(echo "$(date +%s.%N) - $start" | bc)

echo "== build of the bootable disk image (warm package cache): ${build_s}s"
sed -n '/^Step durations/,/total/p' "$BENCH_DIR/build.log"
ls -l "$BENCH_DIR/out/image.raw"

# --- boot --------------------------------------------------------------------------------

echo "== boot: qemu start to the marker"
for i in $(seq "$RUNS"); do
    cp --sparse=always "$BENCH_DIR/out/image.raw" "$BENCH_DIR/boot.raw"
    "$QEMU_BOOT" --secure-boot --serial-log "$BENCH_DIR/serial.log" "$BENCH_DIR/boot.raw" "$MARKER" ||
        echo "boot $i: no marker (serial log: $BENCH_DIR/serial.log)"
done
rm -f "$BENCH_DIR/boot.raw"
