#!/usr/bin/env bash
# Package what the registry entrypoint needs.
#   ./build.sh                     module.tar.gz (the path meta.json names); run.sh installs the
#                                  dependencies from the package index on first start.
#   ./build.sh --wheels [--platform linux/arm64] [--python 3.11]
#                                  module-<os>-<arch>-py<version>.tar.gz, which also holds a wheelhouse
#                                  for that one target (default: this machine's platform and Python),
#                                  so run.sh installs with no network at all.
#   --out DIR                      write the tarball, and the wheelhouse's staging folder build/, into
#                                  DIR instead of this folder (the tests build into temporary folders).
set -euo pipefail
caller="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
CONTENTS=(run.sh meta.json pyproject.toml README.md src models)
# What only remaking the int8 model needs stays in the repository: its calibration photos.
EXCLUDES=(--exclude='__pycache__' --exclude='*.egg-info' --exclude='models/calibration')

usage() {
    echo "usage: $0 [--out DIR] [--wheels [--platform linux/amd64|linux/arm64|darwin/arm64] [--python 3.X]]" >&2
    exit 2
}

wheels=false target_platform="" target_python="" out="$PWD"
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=true ;;
        --out) [ $# -ge 2 ] || usage; out="$(cd "$caller" && mkdir -p "$2" && cd "$2" && pwd)"; shift ;;
        --platform) [ $# -ge 2 ] || usage; target_platform="$2"; shift ;;
        --python) [ $# -ge 2 ] || usage; target_python="$2"; shift ;;
        *) usage ;;
    esac
    shift
done
if ! $wheels; then
    [ -z "$target_platform$target_python" ] || { echo "--platform and --python need --wheels" >&2; usage; }
    rm -f "$out/module.tar.gz"
    tar -czf "$out/module.tar.gz" "${EXCLUDES[@]}" "${CONTENTS[@]}"
    echo "built $out/module.tar.gz ($(du -h "$out/module.tar.gz" | cut -f1))"
    exit 0
fi

# The defaults are this machine's, named the way Viam names platforms (run.sh computes the same
# string to check a wheelhouse against the machine it runs on).
read -r here_platform here_python < <("$PYTHON" -c '
import platform, sys
machine = platform.machine().lower()
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
print(f"{platform.system().lower()}/{arch} {sys.version_info[0]}.{sys.version_info[1]}")')
target_platform="${target_platform:-$here_platform}"
target_python="${target_python:-$here_python}"

# pip only takes wheels whose platform tag it is given literally (pip 23 expands the legacy
# manylinux2014 tag to older ones, and macOS versions downwards, but not manylinux_2_N), so every
# glibc from 2.17 (manylinux2014) to 2.28 is listed: the bundle runs on any glibc 2.28+ Linux
# (Debian 10, Ubuntu 20.04, Raspberry Pi OS bullseye and newer). macOS 14 is the oldest that
# current onnxruntime wheels support.
manylinux_tags() { local n; for n in $(seq 28 -1 17); do echo "manylinux_2_${n}_$1"; done; echo "manylinux2014_$1"; }
case "$target_platform" in
    linux/amd64) platform_tags=$(manylinux_tags x86_64) ;;
    linux/arm64) platform_tags=$(manylinux_tags aarch64) ;;
    darwin/arm64) platform_tags=macosx_14_0_arm64 ;;
    *) echo "unsupported platform '$target_platform' (linux/amd64, linux/arm64 or darwin/arm64)" >&2; exit 2 ;;
esac
case "$target_python" in
    3.1[0-9]) ;;
    *) echo "unsupported Python '$target_python' (3.10 or newer, as 3.X)" >&2; exit 2 ;;
esac

name="module-${target_platform//\//-}-py${target_python}"
stage="$out/build/$name"
rm -rf "$stage" "$out/$name.tar.gz"
mkdir -p "$stage/wheels"
platform_args=()
for tag in $platform_tags; do platform_args+=(--platform "$tag"); done
# Wheels only, even for this machine: a source distribution would have to be compiled on the robot.
# The project's dependencies, and the build backend that run.sh's editable install needs (pip
# installs it into an isolated build environment from the same wheelhouse).
build_requires=()
while IFS= read -r requirement; do build_requires+=("$requirement"); done < <("$PYTHON" -c '
try:
    import tomllib
except ImportError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))')
echo "downloading wheels for $target_platform, Python $target_python"
"$PYTHON" -m pip download --quiet --dest "$stage/wheels" --only-binary=:all: \
    "${platform_args[@]}" --python-version "$target_python" --implementation cp \
    "$PWD" "${build_requires[@]}"
# run.sh reads this to refuse a wheelhouse built for another machine, and its checksum is part of
# the environment's stamp, so a bundle with other wheels reinstalls.
{
    echo "platform=$target_platform"
    echo "python=$target_python"
    for wheel in "$stage"/wheels/*.whl; do echo "wheel=${wheel##*/}"; done
} >"$stage/wheels/manifest.txt"
tar -czf "$out/$name.tar.gz" "${EXCLUDES[@]}" "${CONTENTS[@]}" -C "$stage" wheels
echo "built $out/$name.tar.gz ($(du -h "$out/$name.tar.gz" | cut -f1))"
