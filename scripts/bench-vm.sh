#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Benchmark `mkosi vm` against qemu started by hand with the same options.
#
# 1. Builds (if needed) a bootable Debian trixie disk image: linux-image-cloud-amd64,
#    systemd, systemd-boot, systemd-boot-efi, udev, dbus, firstboot settings, and a
#    unit that prints a marker on /dev/console and powers the machine off.
# 2. For each run, times from starting `mkosi --tpm=no vm` to the marker on its
#    standard output, then from starting qemu by hand — the same machine, firmware
#    (the secure boot capable OVMF with a fresh copy of its variable store), disk,
#    console, credentials and kernel command line as `mkosi vm` uses — to the marker.
#    Both under KVM when it works here (mkosi's probe decides; the hand-started qemu
#    follows the same answer), else under TCG. It says which, and why KVM is not used.
#
# Prints figures, asserts nothing.
#
# Usage: scripts/bench-vm.sh [--no-build] [--rebuild] [--runs N]
#
#   --no-build    do not run cargo build first
#   --rebuild     rebuild the image even if it exists
#   --runs N      pairs of boots to time (default 2)
#
# Environment:
#   BENCH_DIR         work directory (default /var/cache/mkosi-ci/bench-vm)
#   PACKAGE_CACHE     package cache (default /var/cache/mkosi-ci/debian~trixie~x86-64)
#   CARGO_TARGET_DIR  where to build (default /work/target-bench if /work exists,
#                     else <repo>/target-bench, like the other bench scripts)
#   MKOSI=/path       use this mkosi binary instead of building one
#
# Run as root on Debian 12 (qemu-system-x86 and ovmf are installed when missing).
set -euo pipefail

BUILD=1
REBUILD=0
RUNS=2
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n '3,/^set -euo pipefail/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "--runs needs a positive number" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run this as root" >&2; exit 2; }

. "$(dirname "$0")/bench-common.sh"
bench_paths /var/cache/mkosi-ci/bench-vm
MARKER=MKOSI-BENCH-VM-MARKER


bench_lock

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -e /usr/share/qemu/firmware/50-edk2-x86_64-secure.json ] || need+=(ovmf)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$BUILD" = 1 ]; then
    log "cargo build --release (mkosi)"
    (cd "$REPO" && cargo build --release -q -p mkosi --bin mkosi)
fi
MKOSI=${MKOSI:-$CARGO_TARGET_DIR/release/mkosi}
[ -x "$MKOSI" ] || { echo "$MKOSI does not exist (run without --no-build)" >&2; exit 2; }

# --- image -------------------------------------------------------------------------------

CONF=$BENCH_DIR/config
OUT=$BENCH_DIR/out
if [ "$REBUILD" = 1 ] || [ ! -e "$OUT/image.raw" ]; then
    rm -rf "$CONF"
    mkdir -p "$CONF/mkosi.sandbox/etc/apt/sources.list.d" "$CONF/mkosi.extra/etc/systemd/system/multi-user.target.wants" \
        "$OUT" "$BENCH_DIR/workspace"
    cat > "$CONF/mkosi.conf" <<EOF
[Distribution]
Distribution=debian
Release=trixie

[Output]
Format=disk
Output=image
OutputDirectory=$OUT

[Content]
Packages=linux-image-cloud-amd64,systemd,systemd-boot,systemd-boot-efi,udev,dbus
Bootable=yes
Locale=C.UTF-8
Keymap=us
Timezone=UTC
RootPassword=mkosi

[Build]
PackageCacheDirectory=$PACKAGE_CACHE
WorkspaceDirectory=$BENCH_DIR/workspace
EOF
    cp "$REPO/examples/debian-directory/mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources" \
        "$CONF/mkosi.sandbox/etc/apt/sources.list.d/"
    cat > "$CONF/mkosi.extra/etc/systemd/system/bench-marker.service" <<EOF
[Unit]
Description=Report a finished boot on the console

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo $MARKER >/dev/console'
ExecStartPost=/usr/bin/systemctl --no-block poweroff
EOF
    ln -s ../bench-marker.service "$CONF/mkosi.extra/etc/systemd/system/multi-user.target.wants/bench-marker.service"
    log "building the image"
    "$MKOSI" -C "$CONF" -f build > "$BENCH_DIR/build.log" 2>&1 || {
        tail -40 "$BENCH_DIR/build.log"; echo "the build failed" >&2; exit 1; }
fi

# --- timing helpers ----------------------------------------------------------------------

# time_to_marker LOG CMD…: run CMD (stdin /dev/null, output to LOG) in its own process
# group and print the seconds from its start to the marker in LOG ("-" if it never came).
time_to_marker() {
    local logf=$1; shift
    : > "$logf"
    local start now pid
    start=$(date +%s.%N)
    setsid "$@" < /dev/null > "$logf" 2>&1 &
    pid=$!
    while true; do
        if grep -q "$MARKER" "$logf"; then
            now=$(date +%s.%N)
            echo "$now - $start" | bc
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then echo "-"; break; fi
        if [ "$(echo "$(date +%s.%N) - $start > 900" | bc)" = 1 ]; then echo "-"; break; fi
        sleep 0.05
    done
    # The guest powers itself off after the marker; give it a moment, then stop it.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# --- the hand-started qemu -----------------------------------------------------------------

KVM_NOTE=$("$MKOSI" -C "$CONF" --kvm=auto --tpm=no vm -- -version 2>&1 >/dev/null | grep -o 'KVM does not work here.*' | head -1 || true)
FW_JSON=/usr/share/qemu/firmware/50-edk2-x86_64-secure.json
CODE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['mapping']['executable']['filename'])" "$FW_JSON")
VARS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['mapping']['nvram-template']['filename'])" "$FW_JSON")
if [ -n "$KVM_NOTE" ] || [ ! -w /dev/kvm ]; then ACCEL=(-cpu max -accel tcg); ACCEL_NAME=tcg; else ACCEL=(-cpu host -accel kvm); ACCEL_NAME=kvm; fi
TZ_NAME=$(timedatectl show -p Timezone --value 2>/dev/null || echo UTC)
COLS=80; ROWS=24
EXTRA="systemd.wants=network.target SYSTEMD_SULOGIN_FORCE=1 rw module_blacklist=vmw_vmci \
systemd.tty.columns.hvc0=$COLS systemd.tty.rows.hvc0=$ROWS systemd.tty.term.hvc0=dumb \
ip=enc0:any ip=enp0s1:any ip=enp0s2:any ip=host0:any ip=none loglevel=4 systemd.tty.term.console=dumb \
systemd.tty.columns.console=$COLS systemd.tty.rows.console=$ROWS console=hvc0 TERM=dumb"

plain_qemu() {
    local vars=$BENCH_DIR/plain-vars.fd
    cp "$VARS" "$vars"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    exec qemu-system-x86_64 -machine type=q35,smm=on,hpet=off -smp 1 -m 2048M \
        -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0,id=rng-device0 \
        -device virtio-balloon,free-page-reporting=on -no-user-config \
        -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$port-:22" "${ACCEL[@]}" \
        -nographic -nodefaults -chardev stdio,mux=on,id=console,signal=off \
        -device virtio-serial-pci,id=mkosi-virtio-serial-pci -device virtconsole,chardev=console -mon console \
        -drive "if=pflash,format=raw,readonly=on,file=$CODE" -drive "file=$vars,if=pflash,format=raw" \
        -global ICH9-LPC.disable_s3=1 -global driver=cfi.pflash01,property=secure,value=on \
        -blockdev "driver=raw,node-name=mkosi,discard=unmap,file.driver=file,file.filename=$OUT/image.raw,file.aio=io_uring,cache.direct=yes,cache.no-flush=no" \
        -device virtio-blk-pci,drive=mkosi,bootindex=1 \
        -smbios "type=11,value=io.systemd.credential.binary:firstboot.locale=$(printf C.UTF-8 | base64 -w0)" \
        -smbios "type=11,value=io.systemd.credential.binary:firstboot.timezone=$(printf %s "$TZ_NAME" | base64 -w0)" \
        -smbios "type=11,value=io.systemd.stub.kernel-cmdline-extra=$EXTRA" \
        -smbios "type=11,value=io.systemd.boot.kernel-cmdline-extra=$EXTRA"
}
export -f plain_qemu
export BENCH_DIR VARS CODE OUT EXTRA TZ_NAME
export ACCEL_STR="${ACCEL[*]}"

echo "== accelerator: $ACCEL_NAME${KVM_NOTE:+ ($KVM_NOTE)}"
echo "== start to marker, seconds (mkosi vm | qemu by hand)"
for i in $(seq "$RUNS"); do
    m=$(time_to_marker "$BENCH_DIR/mkosi-vm.log" "$MKOSI" -C "$CONF" --tpm=no --cpus=1 vm)
    p=$(time_to_marker "$BENCH_DIR/plain-qemu.log" bash -c 'read -ra ACCEL <<< "$ACCEL_STR"; plain_qemu')
    echo "run $i: $m | $p"
done
echo "(logs: $BENCH_DIR/mkosi-vm.log, $BENCH_DIR/plain-qemu.log)"
