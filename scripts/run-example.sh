#!/bin/bash
# The main job: build mkosi and build the example image with it.
#
# Usage: scripts/run-example.sh [EXAMPLE]   (default: debian-directory)
#
# examples/debian-directory is a plain Debian trixie directory tree, which
# this version of mkosi builds. examples/debian (a bootable disk image) needs
# disk images, a UKI and system configuration settings that are not
# implemented yet: `scripts/run-example.sh debian` shows which.
#
# As root the packages are cached in /var/cache/mkosi-ci (shared with the
# end-to-end tests, kept between runs); otherwise in mkosi's default cache
# (~/.cache/mkosi). Needs network access to deb.debian.org and, on a Debian
# 12 host, debian-archive-keyring (installed with apt-get as root).
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLE=${1:-debian-directory}
DIR=examples/$EXAMPLE
[ -f "$DIR/mkosi.conf" ] || { echo "no example $DIR" >&2; exit 2; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debian-archive-keyring >/dev/null
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
field() { sed -n "s/^ *$1: *//p" <<< "$summary" | head -1; }
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
