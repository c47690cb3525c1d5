#!/usr/bin/env bash
# `cdcheck run` on the local substrate, every built-in scenario (the control-plane
# parts; the data-plane steps are skipped there), cached binaries: wall time of
# the run and per-scenario times, from report.json. Target: under 60 s on 2 cores.
#   usage: ROUNDS=3 JOBS=4 benches/run.sh [path/to/cdcheck]
set -euo pipefail
cd "$(dirname "$0")/.."
cdcheck="${1:-./target/release/cdcheck}"
[[ -x "$cdcheck" ]] || { echo "build it first: cargo build --release (or pass a binary)" >&2; exit 2; }
rounds="${ROUNDS:-3}"; jobs="${JOBS:-4}"
report="$(mktemp -d)"; trap 'rm -rf "$report"' EXIT
"$cdcheck" up >/dev/null   # boot (or reuse) the substrate outside the measurement
echo "cdcheck run --jobs $jobs, $rounds rounds, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
  start=$(date +%s.%N)
  "$cdcheck" run --jobs "$jobs" --report-dir "$report" >/dev/null 2>&1 || true
  end=$(date +%s.%N)
  python3 - "$report/report.json" "$round" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"round {sys.argv[2]}: wall {wall:.1f} s (run {r['duration']/1000:.1f} s), verdict {r['verdict']}, "
      f"checks {r['check_totals']['passed']} passed / {r['check_totals']['skipped']} skipped / "
      f"{r['check_totals']['failed']} failed")
print("  " + ", ".join(f"{s['name']} {s['duration']/1000:.1f}" for s in sorted(r['scenarios'], key=lambda s: -s['duration'])))
PY
done
