#!/usr/bin/env bash
# Builds Istio's control plane (pilot-discovery, i.e. istiod) from the Go module proxy
# into the binary cache, keyed by version, for the local substrate's mesh.
# Versions come from the environment; `cdcheck substrate install --mesh` passes the
# pins of src/versions.rs, so this script holds none of its own.
#
# CDCHECK_GOPROXY_FALLBACK, when set, names a file-based module proxy tried before the
# normal one (this project's CI uses ../shared/goproxy, which holds the few module
# versions its machine's proxy refuses); a user's machine leaves it unset.
set -euo pipefail

: "${CDCHECK_ISTIO_VERSION:?set by cdcheck: Istio release, e.g. 1.30.3}"
: "${CDCHECK_ISTIO_GO_MODULE_VERSION:?set by cdcheck: Go pseudo-version of that tag}"
: "${CDCHECK_ISTIO_COMMIT:?set by cdcheck: full commit hash of that tag}"
: "${CDCHECK_BIN_CACHE:?set by cdcheck: cache root for built binaries}"

log() { echo "cdcheck install: $*" >&2; }
out="$CDCHECK_BIN_CACHE/istio-$CDCHECK_ISTIO_VERSION"
if [[ -x "$out/pilot-discovery" ]]; then
  log "istiod (pilot-discovery) $CDCHECK_ISTIO_VERSION cached in $out"; exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work" "$out.tmp"' EXIT
cd "$work"

if [[ -n "${CDCHECK_GOPROXY_FALLBACK:-}" ]]; then
  fallback="$(cd "$CDCHECK_GOPROXY_FALLBACK" && pwd)"
  export GOPROXY="file://$fallback,$(go env GOPROXY)"
  # The fallback's module versions are not in the checksum database (its lookups
  # answer 404 here); only these module paths skip it. Their hashes still land in go.sum.
  export GONOSUMDB=istio.io/istio,istio.io/client-go,github.com/envoyproxy/go-control-plane/envoy,github.com/envoyproxy/go-control-plane/contrib,github.com/agentgateway/agentgateway/api
  log "module proxy: $GOPROXY"
fi

log "building istiod (pilot-discovery) $CDCHECK_ISTIO_VERSION (10-15 minutes cold on 2 cores)"
go mod init cdcheck.local/istiod-build >/dev/null 2>&1
go get "istio.io/istio/pilot/cmd/pilot-discovery@$CDCHECK_ISTIO_GO_MODULE_VERSION"
# Istio stamps its version only through the linker; without it `version` says "unknown"
# and the proxies' ISTIO_VERSION would not match istiod's.
pkg=istio.io/istio/pkg/version
ldflags="-s -w -X $pkg.buildVersion=$CDCHECK_ISTIO_VERSION -X $pkg.buildGitRevision=$CDCHECK_ISTIO_COMMIT -X $pkg.buildStatus=Clean -X $pkg.buildTag=$CDCHECK_ISTIO_VERSION"
mkdir -p "$out.tmp"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/pilot-discovery" istio.io/istio/pilot/cmd/pilot-discovery
reported="$("$out.tmp/pilot-discovery" version 2>&1 || true)"
grep -qF "Version:\"$CDCHECK_ISTIO_VERSION\"" <<<"$reported" \
  || { log "built pilot-discovery does not report version $CDCHECK_ISTIO_VERSION: $reported"; exit 1; }
rm -rf "$out"; mv "$out.tmp" "$out"
log "istiod $CDCHECK_ISTIO_VERSION built into $out"
