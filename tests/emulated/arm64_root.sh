#!/usr/bin/env bash
# Makes an arm64 Debian bookworm root (Python 3.11, as Raspberry Pi OS bookworm has), once, and
# prints its path. It is debootstrap's minimal variant plus python3 and python3-venv, cached outside
# the checkout under a name made of a hash of this script, and reused while the script is unchanged.
# Commands run in it by chroot through QEMU user-mode emulation: the kernel's binfmt handler for
# aarch64 ELF files (Debian's qemu-user-static registers it; this script enables it, mounting
# binfmt_misc first where nothing has). QEMU_CPU (cortex-a72, cortex-a76) chooses the CPU model.
# Needs root (debootstrap, chroot), Debian's debootstrap and qemu-user-static, and Debian's mirror;
# the first build takes about 3 minutes and fills about 300 MB.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "arm64_root.sh: $*" >&2; }
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

for tool in debootstrap chroot; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool is not installed (apt-get install debootstrap qemu-user-static binfmt-support)"
        exit 1
    fi
done
if [ ! -x /usr/bin/qemu-aarch64-static ]; then
    log "/usr/bin/qemu-aarch64-static is missing (apt-get install qemu-user-static binfmt-support)"
    exit 1
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >&2
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    echo 1 >/proc/sys/fs/binfmt_misc/qemu-aarch64
fi

key="$(sha256sum "$here/arm64_root.sh" | cut -c1-12)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/onnx-classifier/arm64-$SUITE-$key"
root="$cache/root"
if [ ! -x "$root/usr/bin/python3" ]; then
    log "making an arm64 Debian $SUITE root in $root (the first time takes minutes)"
    mkdir -p "$cache"
    rm -rf "$root.partial"
    started=$SECONDS
    # A partial root never stands in for a finished one.
    if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv "$SUITE" "$root.partial" "$MIRROR" >&2; then
        rm -rf "$root.partial"
        log "debootstrap failed (its errors are above)"
        exit 1
    fi
    rm -rf "$root"
    mv "$root.partial" "$root"
    log "made in $((SECONDS - started)) s ($(du -sh "$root" | cut -f1))"
fi
echo "$root"
