#!/usr/bin/env bash
# Registry entrypoint. viam-server runs `run.sh <socket_path> [--log-level=...]`;
# `run.sh COMMAND ...` (`run.sh classify IMAGE...`) runs a command instead, and `run.sh --help` lists them.
# The first start creates the module's virtual environment beside this script.
set -euo pipefail

MODULE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$MODULE_DIR/.venv"
# The stamp records which pyproject.toml (and which bundled wheelhouse, if any) the environment was
# built from, so an upgraded module rebuilds it and an interrupted install is never mistaken for a
# finished one.
STAMP="$VENV/.installed-from"
LOCK="$MODULE_DIR/.venv.lock"
# An offline bundle (build.sh --wheels) carries every wheel for one platform and Python version;
# its manifest names them.
WHEELS="$MODULE_DIR/wheels"
MANIFEST="$WHEELS/manifest.txt"

log() { echo "onnx-classifier: $*" >&2; }

# Reads platform= and python= from the wheelhouse manifest into wheels_platform and wheels_python.
read_manifest() {
    local key value
    wheels_platform="" wheels_python=""
    while IFS='=' read -r key value; do
        case "$key" in
            platform) wheels_platform="$value" ;;
            python) wheels_python="$value" ;;
        esac
    done <"$MANIFEST"
}

find_python() {
    local candidate preferred=""
    # With a wheelhouse, the Python it was built for is the one that can use it, if installed.
    if [ -f "$MANIFEST" ]; then
        read_manifest
        preferred="python$wheels_python"
    fi
    for candidate in "${PYTHON:-}" $preferred python3 python3.13 python3.12 python3.11 python3.10 python; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

wanted_stamp() {
    cksum <"$MODULE_DIR/pyproject.toml"
    if [ -f "$MANIFEST" ]; then cksum <"$MANIFEST"; fi
}

# "linux/amd64 3.11": this machine's platform as Viam names it (as build.sh does) and the Python version.
describe_target() {
    "$1" -c '
import platform, sys
machine = platform.machine().lower()
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
print(f"{platform.system().lower()}/{arch} {sys.version_info[0]}.{sys.version_info[1]}")'
}

# pip for an offline install: the bundled wheels and nothing else, whatever the caller's pip
# settings say (PIP_* variables, pip.conf files: Raspberry Pi OS's /etc/pip.conf adds an index, and
# a find-links folder this machine lacks makes pip warn once per dependency). The install's own
# build step runs pip again and inherits the same environment.
offline_pip() {
    (
        local name
        for name in $(compgen -e); do
            case "$name" in PIP_*) unset "$name" ;; esac
        done
        PIP_CONFIG_FILE=/dev/null exec "$VENV/bin/python" -m pip --isolated "$@"
    )
}

# Installs the module with its dependencies: from the bundled wheelhouse with the index switched off
# when the bundle was built for this machine, from the package index otherwise. A wheelhouse for
# another machine falls back to the index rather than failing: a bundle that no longer matches the
# robot's Python (an OS upgrade) still installs wherever the index is reachable.
install_module() {
    local here_platform here_python
    if [ -f "$MANIFEST" ]; then
        read_manifest
        read -r here_platform here_python < <(describe_target "$VENV/bin/python")
        if [ "$here_platform $here_python" = "$wheels_platform $wheels_python" ]; then
            log "installing from the bundled wheels (no network needed)"
            if ! offline_pip install --quiet --no-index --find-links "$WHEELS" -e "$MODULE_DIR"; then
                log "installing from the bundled wheels in $WHEELS failed (pip's error is above)"
                exit 1
            fi
            return 0
        fi
        log "the bundled wheels are for $wheels_platform Python $wheels_python, but this machine is $here_platform Python $here_python; installing from the package index instead"
        log "for an offline install, upload a bundle built with: ./build.sh --wheels --platform $here_platform --python $here_python"
    fi
    if ! "$VENV/bin/python" -m pip install --quiet -e "$MODULE_DIR"; then
        log "installing from the package index failed (pip's error is above); is the network up?"
        exit 1
    fi
}

environment_ready() { [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(wanted_stamp)" ]; }

build_environment() {
    local python
    if ! python="$(find_python)"; then
        log "Python 3.10 or newer is required but none was found (found: $(python3 --version 2>&1 || echo 'no python3'))."
        log "Install Python 3.10+ (e.g. 'sudo apt install python3') and restart the module, or set PYTHON=/path/to/python3."
        exit 1
    fi
    if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        log "$python cannot create virtual environments: the venv module (with ensurepip) is missing."
        log "On Debian/Ubuntu: sudo apt install python3-venv  (or python3.X-venv for your version), then restart the module."
        exit 1
    fi
    log "setting up the Python environment in $VENV (first start only; this takes a minute)"
    # An environment whose Python no longer runs is rebuilt from nothing; any other (an interrupted
    # install, a developer's .venv) is completed in place.
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$VENV"
    fi
    "$python" -m venv "$VENV"
    install_module
    wanted_stamp >"$STAMP"
    log "environment ready"
}

if ! environment_ready; then
    # mkdir is atomic everywhere (flock is not on macOS): whoever creates the lock
    # builds; a second start waits and then finds the environment ready.
    until mkdir "$LOCK" 2>/dev/null; do
        holder="$(cat "$LOCK/pid" 2>/dev/null || true)"
        if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then
            log "removing a stale lock left by process $holder"
            rm -rf "$LOCK"
            continue
        fi
        sleep 1
    done
    echo $$ >"$LOCK/pid"
    trap 'rm -rf "$LOCK"' EXIT
    environment_ready || build_environment
    rm -rf "$LOCK"
    trap - EXIT
fi

exec "$VENV/bin/python" -m onnx_classifier "$@"
