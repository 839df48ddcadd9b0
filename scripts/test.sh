#!/bin/bash
# Run the whole test suite: formatting, lints, unit and integration tests,
# then the end-to-end builds of real Debian images (every test target that
# follows the MKOSI_E2E=1 convention: crates/*/tests/*.rs mentioning it).
#
# Installs what it needs on a Debian 12 machine (run as root there), creates
# the user `mkosi-test` with a subordinate id range for the unprivileged
# build test, and keeps package caches in /var/cache/mkosi-ci between runs.
#
# Environment:
#   MKOSI_E2E=0   skip the end-to-end builds (default: run them as root,
#                 skip them otherwise — they need root or a subuid range, a
#                 writable /var/cache/mkosi-ci and access to deb.debian.org)
#   CARGO_TARGET_DIR  as usual
set -euo pipefail
cd "$(dirname "$0")/.."

E2E=${MKOSI_E2E:-}
if [ -z "$E2E" ]; then
    if [ "$(id -u)" = 0 ]; then E2E=1; else E2E=0; fi
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    pkgs=(openssl man-db)
    # Disk images: the filesystem tools the partitions are made with, and the tools the tests
    # check the images with (sfdisk, fsck of each filesystem, veritysetup, systemd-dissect).
    pkgs+=(fdisk e2fsprogs dosfstools mtools erofs-utils squashfs-tools btrfs-progs xfsprogs cryptsetup-bin
        systemd-container util-linux)
    pkgs+=(sbsigntool binutils)  # Secure Boot signing (sbsign, sbverify, sbvarsign) and objdump for the UKI tests
    # The end-to-end builds: the archive keyring, compressors and archivers
    # to inspect outputs, newuidmap/newgidmap and setpriv/useradd for the
    # unprivileged build, apt-ftparchive and gpg for local repositories.
    [ "$E2E" = 1 ] && pkgs+=(debian-archive-keyring ca-certificates uidmap zstd cpio xz-utils tar util-linux passwd
        apt-utils gpg qemu-system-x86 ovmf kmod swtpm swtpm-tools openssh-client)
    need=()
    for pkg in "${pkgs[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi

    if [ "$E2E" = 1 ]; then
        mkdir -p /var/cache/mkosi-ci
        if ! id mkosi-test >/dev/null 2>&1; then
            useradd --create-home --shell /bin/bash mkosi-test
        fi
        # useradd allocates subordinate ids on Debian 12; make sure anyway,
        # with a range after every existing one.
        for f in /etc/subuid /etc/subgid; do
            touch "$f"
            if ! grep -q '^mkosi-test:' "$f"; then
                start=$(awk -F: '{e = $2 + $3; if (e > m) m = e} END {print (m > 100000 ? m : 100000)}' "$f")
                flag=--add-subuids
                [ "$f" = /etc/subgid ] && flag=--add-subgids
                usermod "$flag" "$start-$((start + 65535))" mkosi-test
            fi
        done
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
env -u MKOSI_E2E cargo test --workspace

if [ "$E2E" != 1 ]; then
    echo "== end-to-end builds skipped (MKOSI_E2E=$E2E)"
    echo "== all tests passed"
    exit 0
fi

# Every test target using the MKOSI_E2E=1 convention.
start=$(date +%s)
for f in crates/*/tests/*.rs; do
    grep -q 'MKOSI_E2E' "$f" || continue
    crate=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$(dirname "$(dirname "$f")")/Cargo.toml" | head -1)
    target=$(basename "$f" .rs)
    echo "== end-to-end builds: $crate --test $target (MKOSI_E2E=1)"
    # --nocapture: show how long each build took and any warnings.
    MKOSI_E2E=1 cargo test --release -p "$crate" --test "$target" -- --test-threads=1 --nocapture
done
echo "== end-to-end builds took $(($(date +%s) - start))s"
echo "== all tests passed"
