#!/usr/bin/env bash
# Nightly conformance run on the kind substrate: every scenario with the data-plane steps
# required (a skipped load or probe step fails the night), reports kept per night.
#
#   scripts/nightly-kind.sh                    # reuse the kind cluster when its fingerprint matches
#   CDCHECK_NIGHTLY_PRELOAD=1 scripts/nightly-kind.sh   # first night: pull and load every image
#   CDCHECK_NIGHTLY_REPORTS=/srv/cdcheck scripts/nightly-kind.sh
#
# Exit status: cdcheck run's (0 passed, 1 a scenario failed, 2 no substrate or bad input).
# Needs Docker (or Podman), kind, istioctl, kubectl at the pins: `cdcheck doctor` says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

reports="${CDCHECK_NIGHTLY_REPORTS:-nightly-reports}/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$reports"

cargo build --release --locked --bin cdcheck
cdcheck=./target/release/cdcheck

"$cdcheck" doctor | tee "$reports/doctor.txt"
# The in-mesh agent is cdcheck itself in an image built here (never pulled).
engine="${CDCHECK_ENGINE:-docker}"
agent_image="$("$cdcheck" versions AGENT_IMAGE)"
"$engine" build -f agent/Dockerfile \
  --build-arg BUILDER_IMAGE="$("$cdcheck" versions AGENT_BUILDER_IMAGE)" \
  --build-arg RUNTIME_IMAGE="$("$cdcheck" versions AGENT_RUNTIME_IMAGE)" \
  -t "$agent_image" . 2> >(tee "$reports/agent-build.log" >&2)
up_args=(--substrate kind --agent-image "$agent_image")
[[ -n "${CDCHECK_NIGHTLY_PRELOAD:-}" ]] && up_args+=(--preload)
"$cdcheck" up "${up_args[@]}" 2> >(tee "$reports/up.log" >&2)

status=0
"$cdcheck" run --substrate kind --require data-plane --agent-image "$agent_image" --report-dir "$reports" \
  2> >(tee "$reports/run.log" >&2) || status=$?
echo "reports kept in $reports (junit.xml, report.json, report.html, run.log)" >&2
exit "$status"
