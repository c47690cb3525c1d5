#!/usr/bin/env bash
# The local mesh's figures (BENCHMARKS.md, "Local mesh"): `up --mesh` until the gateway
# serves; istiod, gateway Envoy and stand-in memory with the boutique deployed; the delay
# from a VirtualService apply to the gateway serving the change; and a rolling update of
# the frontend under load, end to end (`cdcheck run --filter zero-downtime-rolling`).
# Runs on a private state directory (root: the mesh creates a network namespace) and
# stops it at the end. Needs `cdcheck substrate install --mesh` first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
bin="$PWD/target/debug/cdcheck"
state="$(mktemp -d)/state"
trap '"$bin" down --state-dir "$state" >/dev/null 2>&1 || true' EXIT
ms() { date +%s%3N; }

echo "== up --mesh (cold substrate, cached binaries) until the gateway serves"
t0=$(ms)
"$bin" up --mesh --state-dir "$state" >/dev/null
echo "up --mesh: $(( $(ms) - t0 )) ms"
export KUBECONFIG="$state/kubeconfig"

echo "== memory with one Online Boutique environment deployed"
"$bin" render --env bench 2>/dev/null | kubectl apply --server-side -f - >/dev/null
kubectl -n bench wait --for=condition=Available deployment --all --timeout=180s >/dev/null
rss() { ps -o rss= -p "$1" | awk '{printf "%.0f", $1/1024}'; }
pss() { awk '/^Pss:/ {s+=$2} END {printf "%.1f", s/1024}' "/proc/$1/smaps_rollup"; }
istiod=$(pgrep -f "pilot-discovery discovery.*$state" | head -1)
gateway=$(pgrep -f "envoy -c $state/mesh/pods/istio-system_istio-ingressgateway" | head -1)
echo "istiod: RSS $(rss "$istiod") MB"
echo "gateway Envoy: RSS $(rss "$gateway") MB"
standins=$(pgrep -f "cdcheck standin" | tr '\n' ' ')
n=0; total=0
for p in $standins; do n=$((n + 1)); total=$(awk -v t="$total" -v a="$(pss "$p")" 'BEGIN {print t + a}'); done
echo "stand-ins: $n processes, PSS total $total MB, $(awk -v t="$total" -v n="$n" 'BEGIN {printf "%.1f", t / n}') MB each"

echo "== VirtualService apply -> served by the gateway (10 rounds)"
for round in $(seq 1 10); do
  cat > /tmp/cdcheck-bench-vs.yaml <<YAML
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: frontend, namespace: bench}
spec:
  gateways: [istio-system/ingressgateway]
  hosts: [bench.boutique.test]
  http:
  - headers: {response: {set: {x-bench-round: "$round"}}}
    route:
    - destination: {host: frontend.bench.svc.cluster.local, port: {number: 80}}
YAML
  kubectl apply --server-side --force-conflicts -f /tmp/cdcheck-bench-vs.yaml >/dev/null
  t0=$(ms)
  until curl -s -o /dev/null -D - -H 'Host: bench.boutique.test' http://127.0.0.1:30080/_healthz \
      | grep -qi "x-bench-round: $round"; do :; done
  echo "round $round: $(( $(ms) - t0 )) ms"
done

echo "== rolling update of the frontend under load, end to end (scenario zero-downtime-rolling)"
t0=$(ms)
"$bin" run --state-dir "$state" --mesh on --require data-plane --filter zero-downtime-rolling --exact \
  --report-dir "$(dirname "$state")/report" >/dev/null 2>&1 || echo "(the scenario failed: see the report)"
echo "scenario: $(( $(ms) - t0 )) ms"
python3 - "$(dirname "$state")/report/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for scenario in report["scenarios"]:
    for load in scenario["loads"]:
        print(f"load {load['name']}: {load['requests']} requests, {load['failed']} failed, "
              f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, max {load['max_ms']:.1f} ms")
PY
