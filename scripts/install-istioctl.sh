#!/usr/bin/env bash
# Builds istioctl from the Go module proxy into the binary cache, keyed by version, for the
# kind substrate (`cdcheck substrate install --substrate kind` runs it with the pins of
# src/versions.rs; this script holds none of its own). The module and its dependencies are
# checked against Go's checksum database, so no unverified download runs; the version is
# stamped through the linker as Istio's release build does (else `istioctl version` says
# "unknown"), and checked after the build.
#
# CDCHECK_GOPROXY_FALLBACK, when set, names a file-based module proxy tried first (this
# project's CI machine needs ../shared/goproxy for a few module versions its proxy refuses;
# those paths alone skip the checksum database). A user's machine leaves it unset.
set -euo pipefail

: "${CDCHECK_ISTIO_VERSION:?set by cdcheck: Istio release, e.g. 1.30.3}"
: "${CDCHECK_ISTIO_GO_MODULE_VERSION:?set by cdcheck: Go pseudo-version of that tag}"
: "${CDCHECK_ISTIO_COMMIT:?set by cdcheck: full commit hash of that tag}"
: "${CDCHECK_ISTIOCTL_DIR:?set by cdcheck: where istioctl goes}"

log() { echo "cdcheck install: $*" >&2; }
out="$CDCHECK_ISTIOCTL_DIR"
if [[ -x "$out/istioctl" ]]; then
  log "istioctl $CDCHECK_ISTIO_VERSION cached in $out"; exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work" "$out.tmp"' EXIT
cd "$work"

if [[ -n "${CDCHECK_GOPROXY_FALLBACK:-}" ]]; then
  fallback="$(cd "$CDCHECK_GOPROXY_FALLBACK" && pwd)"
  export GOPROXY="file://$fallback,$(go env GOPROXY)"
  export GONOSUMDB=istio.io/istio,istio.io/client-go,github.com/envoyproxy/go-control-plane/envoy,github.com/envoyproxy/go-control-plane/contrib,github.com/agentgateway/agentgateway/api
  log "module proxy: $GOPROXY"
fi

log "building istioctl $CDCHECK_ISTIO_VERSION (a few minutes with a warm Go cache, 10-15 cold on 2 cores)"
go mod init cdcheck.local/istioctl-build >/dev/null 2>&1
go get "istio.io/istio/istioctl/cmd/istioctl@$CDCHECK_ISTIO_GO_MODULE_VERSION"
pkg=istio.io/istio/pkg/version
ldflags="-s -w -X $pkg.buildVersion=$CDCHECK_ISTIO_VERSION -X $pkg.buildGitRevision=$CDCHECK_ISTIO_COMMIT -X $pkg.buildStatus=Clean -X $pkg.buildTag=$CDCHECK_ISTIO_VERSION"
mkdir -p "$out.tmp"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/istioctl" istio.io/istio/istioctl/cmd/istioctl
reported="$("$out.tmp/istioctl" version --remote=false 2>&1 || true)"
grep -qF "$CDCHECK_ISTIO_VERSION" <<<"$reported" \
  || { log "built istioctl does not report version $CDCHECK_ISTIO_VERSION: $reported"; exit 1; }
rm -rf "$out"; mv "$out.tmp" "$out"
log "istioctl $CDCHECK_ISTIO_VERSION built into $out"
