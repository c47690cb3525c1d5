#!/usr/bin/env bash
# Builds the local substrate's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok) from the Go module proxy into a cache keyed by version.
# Versions come from the environment; `cdcheck substrate install` passes the pins of
# src/versions.rs, so this script holds none of its own.
set -euo pipefail

: "${CDCHECK_K8S_VERSION:?set by cdcheck: Kubernetes version, e.g. v1.36.5}"
: "${CDCHECK_ETCD_VERSION:?set by cdcheck: etcd version, e.g. v3.6.16}"
: "${CDCHECK_KWOK_VERSION:?set by cdcheck: kwok version, e.g. v0.8.0}"
: "${CDCHECK_BIN_CACHE:?set by cdcheck: cache root for built binaries}"
: "${CDCHECK_INSTALL_ONLY:=all}"   # all | kubernetes | etcd | kwok

staging_version="v0${CDCHECK_K8S_VERSION#v1}"   # v1.36.5 -> v0.36.5
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log() { echo "cdcheck install: $*" >&2; }

build_kubernetes() {
  local out="$CDCHECK_BIN_CACHE/kubernetes-$CDCHECK_K8S_VERSION"
  if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/kube-scheduler" ]]; then
    log "kubernetes $CDCHECK_K8S_VERSION cached in $out"; return
  fi
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $CDCHECK_K8S_VERSION (tens of minutes cold)"
  local mod="$work/kubernetes"; mkdir -p "$mod"; cd "$mod"
  go mod download -json "k8s.io/kubernetes@$CDCHECK_K8S_VERSION" > dl.json
  local upstream_mod; upstream_mod="$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' dl.json)"
  local go_line; go_line="$(grep -m1 '^go ' "$upstream_mod")"
  {
    echo "module cdcheck.local/kubernetes-build"
    echo
    echo "$go_line"
    grep '^godebug' "$upstream_mod" || true
    echo
    echo "require k8s.io/kubernetes $CDCHECK_K8S_VERSION"
    echo
    # The upstream go.mod replaces each staging repo with ./staging/...; a module
    # consumer must point them at their published versions instead.
    grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$upstream_mod" \
      | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  cat > tools.go <<GO
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
  GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$CDCHECK_K8S_VERSION"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$CDCHECK_K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$CDCHECK_K8S_VERSION" | cut -d. -f2)"
  mkdir -p "$out.tmp"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    log "go build $cmd"
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$out.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_etcd() {
  local out="$CDCHECK_BIN_CACHE/etcd-$CDCHECK_ETCD_VERSION"
  if [[ -x "$out/etcd" ]]; then log "etcd $CDCHECK_ETCD_VERSION cached in $out"; return; fi
  log "building etcd $CDCHECK_ETCD_VERSION"
  local mod="$work/etcd"; mkdir -p "$mod"; cd "$mod"
  go mod init cdcheck.local/etcd-build >/dev/null 2>&1
  GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$CDCHECK_ETCD_VERSION"
  mkdir -p "$out.tmp"
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_kwok() {
  local out="$CDCHECK_BIN_CACHE/kwok-$CDCHECK_KWOK_VERSION"
  if [[ -x "$out/kwok" ]]; then log "kwok $CDCHECK_KWOK_VERSION cached in $out"; return; fi
  log "building kwok $CDCHECK_KWOK_VERSION"
  mkdir -p "$out.tmp"
  GOBIN="$out.tmp" CGO_ENABLED=0 go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$CDCHECK_KWOK_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

mkdir -p "$CDCHECK_BIN_CACHE"
case "$CDCHECK_INSTALL_ONLY" in
  all) build_etcd; build_kwok; build_kubernetes ;;
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  kwok) build_kwok ;;
  *) log "unknown CDCHECK_INSTALL_ONLY=$CDCHECK_INSTALL_ONLY"; exit 2 ;;
esac
log "done"
