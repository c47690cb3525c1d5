#!/usr/bin/env bash
# Builds Istio's control plane (pilot-discovery, i.e. istiod) and its sidecar agent
# (pilot-agent, with the Envoy bootstrap template of the same module) from the Go module
# proxy into the binary cache, keyed by version, for the local substrate's mesh.
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
template=envoy_bootstrap.json
missing=()
[[ -x "$out/pilot-discovery" ]] || missing+=(pilot-discovery)
[[ -x "$out/pilot-agent" && -f "$out/$template" ]] || missing+=(pilot-agent)
if [[ ${#missing[@]} -eq 0 ]]; then
  log "istiod (pilot-discovery) and pilot-agent $CDCHECK_ISTIO_VERSION cached in $out"; exit 0
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

log "building ${missing[*]} $CDCHECK_ISTIO_VERSION (istiod 10-15 minutes cold on 2 cores, pilot-agent 1-3 more)"
go mod init cdcheck.local/istiod-build >/dev/null 2>&1
# Istio stamps its version only through the linker; without it `version` says "unknown"
# and the proxies' ISTIO_VERSION would not match istiod's.
pkg=istio.io/istio/pkg/version
ldflags="-s -w -X $pkg.buildVersion=$CDCHECK_ISTIO_VERSION -X $pkg.buildGitRevision=$CDCHECK_ISTIO_COMMIT -X $pkg.buildStatus=Clean -X $pkg.buildTag=$CDCHECK_ISTIO_VERSION"
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
for binary in "${missing[@]}"; do
  go get "istio.io/istio/pilot/cmd/$binary@$CDCHECK_ISTIO_GO_MODULE_VERSION"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$binary" "istio.io/istio/pilot/cmd/$binary"
  reported="$("$out.tmp/$binary" version 2>&1 || true)"
  grep -qF "Version:\"$CDCHECK_ISTIO_VERSION\"" <<<"$reported" \
    || { log "built $binary does not report version $CDCHECK_ISTIO_VERSION: $reported"; exit 1; }
done
if [[ " ${missing[*]} " == *" pilot-agent "* ]]; then
  # The template pilot-agent fills in for Envoy, from the module it was built from.
  module_dir="$(go list -m -f '{{.Dir}}' istio.io/istio)"
  cp "$module_dir/tools/packaging/common/envoy_bootstrap.json" "$out.tmp/$template"
fi
mkdir -p "$out"
chmod u+w "$out.tmp"/*
mv "$out.tmp"/* "$out"/
log "${missing[*]} $CDCHECK_ISTIO_VERSION built into $out"
