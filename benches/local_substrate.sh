#!/usr/bin/env bash
# Measures the local substrate (BENCHMARKS.md "## Local substrate"): boot time with
# cached binaries, reuse time, and the timings the local_* tests print (deploy of
# the whole boutique, status change -> wait return, drain), then the suite's wall time.
# Usage: benches/local_substrate.sh [boots]   (default 3 boots)
set -euo pipefail
cd "$(dirname "$0")/.."
boots="${1:-3}"
cargo build --quiet --all-targets
cdcheck=./target/debug/cdcheck
$cdcheck substrate install >/dev/null

echo "== boot with cached binaries ($boots runs)"
for _ in $(seq "$boots"); do
  $cdcheck down >/dev/null 2>&1
  start=$(date +%s.%N)
  $cdcheck up --substrate local --nodes 3 >/dev/null 2>&1
  echo "boot: $(echo "$(date +%s.%N) - $start" | bc) s"
done
start=$(date +%s.%N)
$cdcheck up >/dev/null 2>&1
echo "reuse: $(echo "$(date +%s.%N) - $start" | bc) s"

echo "== timings printed by the tests"
cargo test --quiet --test local_deploy --test local_rollout -- --nocapture 2>&1 \
  | grep -E "deployed the full boutique|without anti-affinity|status change -> wait returned|rolling update took|broken release detected after|drained node" || true

echo "== suite wall time from no substrate"
$cdcheck down >/dev/null 2>&1
start=$(date +%s.%N)
cargo test --quiet --test 'local_*' >/dev/null 2>&1
echo "suite: $(echo "$(date +%s.%N) - $start" | bc) s"
$cdcheck down >/dev/null 2>&1
