#!/usr/bin/env bash
# Builds CNCF Distribution's registry server (what Docker's `registry` image runs) from the
# Go module proxy into the binary cache, keyed by version, and prints its path. The
# containers tests put it in a `FROM scratch` image built on the machine, since no image can
# be pulled there. The version is the pin of src/versions.rs (`cdcheck versions DISTRIBUTION`),
# passed in by .ci/run; this script holds none of its own.
set -euo pipefail

: "${CDCHECK_DISTRIBUTION_VERSION:?set CDCHECK_DISTRIBUTION_VERSION (cdcheck versions DISTRIBUTION)}"
cache="${CDCHECK_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdcheck/bin}"
out="$cache/registry-$CDCHECK_DISTRIBUTION_VERSION"
log() { echo "cdcheck build-registry: $*" >&2; }

if [[ ! -x "$out/registry" ]]; then
  log "building github.com/distribution/distribution/v3/cmd/registry@$CDCHECK_DISTRIBUTION_VERSION (2-3 minutes cold on 2 cores)"
  mkdir -p "$out.tmp"
  trap 'rm -rf "$out.tmp"' EXIT
  # Static (no cgo) for a `FROM scratch` image; `go install` verifies the module against the
  # checksum database. Installed into a temporary directory, moved when complete.
  CGO_ENABLED=0 GOBIN="$out.tmp" GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags='-s -w' \
    "github.com/distribution/distribution/v3/cmd/registry@$CDCHECK_DISTRIBUTION_VERSION"
  rm -rf "$out"
  mv "$out.tmp" "$out"
fi
"$out/registry" --version >&2
echo "$out/registry"
