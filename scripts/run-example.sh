#!/bin/bash
# The main job: build mkosi and build the example image with it.
#
# Usage: scripts/run-example.sh [--no-boot] [EXAMPLE]   (default: debian)
#
# examples/debian is a bootable Debian trixie disk image (systemd-boot and a
# unified kernel image): it is built, then booted in qemu with UEFI firmware
# (OVMF) until the image announces on the serial console that it booted
# (KVM when it works here, else TCG: a minute or two). --no-boot only builds.
# examples/debian-directory is a plain directory tree (shown, not booted).
#
# As root the packages are cached in /var/cache/mkosi-ci (shared with the
# end-to-end tests, kept between runs); otherwise in mkosi's default cache
# (~/.cache/mkosi). Needs network access to deb.debian.org and, on a Debian
# 12 host, debian-archive-keyring (installed with apt-get as root).
set -euo pipefail
cd "$(dirname "$0")/.."

BOOT=1
if [ "${1:-}" = --no-boot ]; then BOOT=0; shift; fi
EXAMPLE=${1:-debian}
DIR=examples/$EXAMPLE
[ -f "$DIR/mkosi.conf" ] || { echo "no example $DIR" >&2; exit 2; }

need=()
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ "$BOOT" = 1 ]; then
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
fi
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --quiet -p mkosi
MKOSI=${CARGO_TARGET_DIR:-target}/release/mkosi

args=(-C "$DIR")
if [ "$(id -u)" = 0 ]; then
    cache=/var/cache/mkosi-ci/debian~trixie~x86-64
    mkdir -p "$cache"
    args+=("--package-cache-dir=$cache")
fi

summary=$("$MKOSI" "${args[@]}" summary)
field() { sed -n "s/^ *$1: *//p" <<< "$summary" | tail -1; }
echo "Building $DIR: Format=$(field 'Output Format'), Output=$(field 'Output')"
"$MKOSI" "${args[@]}" -f build

# What came out.
outdir=$(field 'Output Directory')
case $outdir in none | "") outdir=$DIR ;; esac
output=$(field 'Output')
image=$outdir/$output

echo
echo "== $image"
ls -l "$outdir"
if [ -d "$image" ]; then
    echo "os-release:     $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' "$image/usr/lib/os-release")"
    echo "size:           $(du -sh "$image" | cut -f1)"
    echo "packages:       $(grep -c '^Status: install ok installed' "$image/var/lib/dpkg/status")"
    echo "top level:      $(ls "$image" | tr '\n' ' ')"
    [ -f "$image/etc/motd" ] && echo "/etc/motd:      $(head -1 "$image/etc/motd")"
    echo
    echo "Run it as a container: systemd-nspawn -D $image"
fi

# Boot a disk image: UEFI firmware, the serial console to a log, and the
# kernel command line extended through SMBIOS (as `mkosi vm` does) so the
# console goes to the serial port. The image is not modified (-snapshot).
if [ "$BOOT" = 1 ] && [ -f "$image" ] && [ "$(field 'Output Format')" = disk ]; then
    arch=$(uname -m)
    if [ "$arch" != x86_64 ]; then
        echo "Booting is only scripted for x86-64 here; boot $image with: mkosi -C $DIR vm" >&2
        exit 0
    fi
    work=$(mktemp -d)
    trap 'kill "${qemu_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
    # KVM only when a guest really runs under it (some machines have /dev/kvm
    # but KVM cannot run real guests): a boot sector that initializes the FPU
    # (where such machines fail) and writes "K" to the serial port must get
    # through within ten seconds.
    accel=(-accel tcg -cpu max)
    if [ -w /dev/kvm ]; then
        { printf '\x9b\xdb\xe3\xba\xf8\x03\xb0\x4b\xee\xfa\xf4\xeb\xfd'; head -c 497 /dev/zero; printf '\x55\xaa'; } > "$work/probe.img"
        timeout 12 qemu-system-x86_64 -accel kvm -nodefaults -display none -no-reboot \
            -drive format=raw,file="$work/probe.img" -serial file:"$work/probe.log" >/dev/null 2>&1 &
        probe=$!
        for _ in $(seq 20); do
            grep -q K "$work/probe.log" 2>/dev/null && break
            sleep 0.5
        done
        grep -q K "$work/probe.log" 2>/dev/null && accel=(-accel kvm -cpu host)
        kill "$probe" 2>/dev/null || true
        wait "$probe" 2>/dev/null || true
    fi
    echo
    echo "== Booting $image (${accel[1]})"
    start=$(date +%s)
    qemu-system-x86_64 -machine q35 "${accel[@]}" -smp 2 -m 2G -nographic -nodefaults \
        -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
        -drive if=pflash,format=raw,file="$work/vars.fd" \
        -drive file="$image",format=raw,if=virtio,snapshot=on \
        -smbios type=11,value=io.systemd.stub.kernel-cmdline-extra=console=ttyS0 \
        -serial file:"$work/serial.log" &
    qemu_pid=$!
    deadline=$((start + 900))
    while ! grep -aq 'mkosi-example: booted' "$work/serial.log" 2>/dev/null; do
        if ! kill -0 "$qemu_pid" 2>/dev/null || [ "$(date +%s)" -gt "$deadline" ]; then
            echo "The image did not boot; the end of its serial console:" >&2
            tail -30 "$work/serial.log" >&2
            exit 1
        fi
        sleep 2
    done
    grep -a 'mkosi-example: booted' "$work/serial.log" | head -1
    echo "booted in $(( $(date +%s) - start )) s; stopping the virtual machine"
fi
