#!/usr/bin/env bash
# Registry entrypoint. viam-server runs `run.sh <socket_path> [--log-level=...]`;
# `run.sh classify IMAGE...` classifies files from the command line instead.
# The first start creates the module's virtual environment beside this script.
set -euo pipefail

MODULE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$MODULE_DIR/.venv"
# The stamp records which pyproject.toml the environment was built from, so an
# upgraded module rebuilds it and an interrupted install is never mistaken for a finished one.
STAMP="$VENV/.installed-from"
LOCK="$MODULE_DIR/.venv.lock"

log() { echo "onnx-classifier: $*" >&2; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10 python; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

wanted_stamp() { cksum <"$MODULE_DIR/pyproject.toml"; }

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
    "$VENV/bin/python" -m pip install --quiet -e "$MODULE_DIR"
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
