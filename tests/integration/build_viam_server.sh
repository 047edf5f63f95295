#!/usr/bin/env bash
# Builds viam-server from rdk's Go module as pure Go (CGO_ENABLED=0, -tags no_cgo), once, and prints
# the binary's path. The rdk version is the one go.mod beside this script requires; the binary is
# cached outside the checkout, under a name made of that version and a hash of the wrapper's sources
# (go.mod, go.sum, viam-server/main.go), and reused while they are unchanged. The first build
# downloads rdk's dependencies from the Go module proxy and compiles them: many minutes on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "build_viam_server.sh: $*" >&2; }

version="$(awk '$1 == "go.viam.com/rdk" { print $2 } $1 == "require" && $2 == "go.viam.com/rdk" { print $3 }' "$here/go.mod")"
if [ -z "$version" ]; then
    log "$here/go.mod requires no go.viam.com/rdk"
    exit 1
fi
key="$(cat "$here/go.mod" "$here/go.sum" "$here/viam-server/main.go" | sha256sum | cut -c1-12)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/onnx-classifier/viam-server-$version-$key"
binary="$cache/viam-server"

if [ ! -x "$binary" ]; then
    if ! command -v go >/dev/null 2>&1; then
        log "the go command is not installed; viam-server $version is built from source and needs Go 1.25.10 or newer"
        exit 1
    fi
    log "building viam-server $version into $cache (the first time takes many minutes)"
    mkdir -p "$cache"
    started=$SECONDS
    # A partial binary never stands in for a finished one.
    if ! (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -tags no_cgo -trimpath -o "$binary.partial" ./viam-server) >&2; then
        rm -f "$binary.partial"
        log "go build failed (its errors are above)"
        exit 1
    fi
    mv "$binary.partial" "$binary"
    log "built in $((SECONDS - started)) s"
fi
echo "$binary"
