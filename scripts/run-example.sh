#!/bin/bash
# The main job: build mkosi and build the example image with it.
#
# Usage: scripts/run-example.sh [--no-boot] [EXAMPLE]   (default: debian)
#
# examples/debian is a bootable Debian trixie disk image (systemd-boot and a
# unified kernel image): it is built, then booted with `mkosi vm` (qemu, UEFI
# firmware) until the image announces on its console that it booted (KVM when
# it works here, else TCG: a minute or two). --no-boot only builds.
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

# Boot a disk image the way a user would: `mkosi vm` (UEFI firmware from the qemu
# descriptors, KVM when a guest really runs under it here, else TCG), on a throwaway
# copy of the image (--ephemeral), with the guest's console on mkosi's standard
# output, until the image announces that it booted; then stop it.
if [ "$BOOT" = 1 ] && [ -f "$image" ] && [ "$(field 'Output Format')" = disk ]; then
    log=$(mktemp)
    vm_pid=
    trap 'if [ -n "$vm_pid" ]; then kill -TERM -- "-$vm_pid" 2>/dev/null || true; fi; rm -f "$log"' EXIT
    echo
    echo "== Booting $image with: mkosi -C $DIR --ephemeral=yes vm"
    start=$(date +%s)
    setsid "$MKOSI" "${args[@]}" --ephemeral=yes vm < /dev/null > "$log" 2>&1 &
    vm_pid=$!
    deadline=$((start + 900))
    while ! grep -aq 'mkosi-example: booted' "$log"; do
        if ! kill -0 "$vm_pid" 2>/dev/null || [ "$(date +%s)" -gt "$deadline" ]; then
            echo "The image did not boot; the end of its console:" >&2
            tail -30 "$log" >&2
            exit 1
        fi
        sleep 2
    done
    grep -aE 'mkosi-example: booted|KVM does not work' "$log" | head -2
    echo "booted in $(( $(date +%s) - start )) s; stopping the virtual machine"
    # qemu ends on SIGTERM; mkosi waits for it and removes the ephemeral copy.
    kill -TERM -- "-$vm_pid" 2>/dev/null || true
    wait "$vm_pid" 2>/dev/null || true
fi
