#!/usr/bin/env bash
# Traffic engine benchmarks (BENCHMARKS.md, "Traffic engine"), on one loopback target: fortio's
# own server (HTTP echo and gRPC health), so both load generators hit the same code.
#  1. closed loop at equal connections and equal threads: cdcheck (`--threads T`) against
#     fortio (`GOMAXPROCS=T`) for each T in THREADS, HTTP/1.1 and gRPC
#     (grpc.health.v1.Health/Check), rounds interleaved so machine noise hits both alike;
#     throughput, latency and CPU time (user + system) per request of each run, then the
#     median of each and cdcheck's ratio to fortio per thread count;
#  2. open loop at OPEN_RATE req/s for OPEN_DURATION: achieved rate, send lag, peak RSS.
# Each line carries the load average when the run ended: the box is shared, say how busy.
# Needs fortio v1.68.2: `go install fortio.org/fortio@v1.68.2` (later releases need
# grol.io/grol, which the Go module proxy here refuses), or FORTIO=path.
# CDCHECK=path skips the release build (e.g. a binary built from this tree already).
set -euo pipefail
cd "$(dirname "$0")/.."

FORTIO="${FORTIO:-$(go env GOPATH)/bin/fortio}"
CONNECTIONS="${CONNECTIONS:-8}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-1 2}"
OPEN_RATE="${OPEN_RATE:-5000}"
OPEN_DURATION="${OPEN_DURATION:-20s}"
HTTP_PORT="${HTTP_PORT:-18080}"
GRPC_PORT="${GRPC_PORT:-18079}"

[[ -x "$FORTIO" ]] || { echo "fortio not found at $FORTIO (go install fortio.org/fortio@v1.68.2)" >&2; exit 1; }
if [[ -z "${CDCHECK:-}" ]]; then
  cargo build --release --bin cdcheck >&2
  CDCHECK="${CARGO_TARGET_DIR:-target}/release/cdcheck"
fi
work="$(mktemp -d)"
"$FORTIO" server -http-port "127.0.0.1:$HTTP_PORT" -grpc-port "127.0.0.1:$GRPC_PORT" \
  -redirect-port disabled >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
sleep 1

loadavg() { cut -d' ' -f1 /proc/loadavg; }

cdcheck_closed() { # threads url extra-args... -> "req/s p50_ms p99_ms failed cpu_us_per_request"
  local threads="$1" url="$2"; shift 2
  /usr/bin/time -f "%U %S" -o "$work/c.cpu" \
    "$CDCHECK" load "$url" --connections "$CONNECTIONS" --duration "$DURATION" \
    --threads "$threads" --json "$@" >"$work/c.json" || true
  python3 -c '
import json,sys
s=json.load(open(sys.argv[1]))["summary"]; l=s["latency"]
cpu=sum(map(float, open(sys.argv[2]).read().split()[-2:]))
print("%.0f %.3f %.3f %d %.1f" % (s["achieved_rate"], l["p50_us"]/1000, l["p99_us"]/1000, s["failed"], cpu/s["count"]*1e6))' "$work/c.json" "$work/c.cpu"
}
fortio_closed() { # threads target extra-args... -> "req/s p50_ms p99_ms failed cpu_us_per_request"
  local threads="$1" target="$2"; shift 2
  GOMAXPROCS="$threads" /usr/bin/time -f "%U %S" -o "$work/f.cpu" \
    "$FORTIO" load -qps 0 -c "$CONNECTIONS" -t "$DURATION" -p "50,99" -json "$work/f.json" "$@" "$target" >/dev/null 2>&1
  python3 -c '
import json,sys
r=json.load(open(sys.argv[1])); p={x["Percentile"]:x["Value"] for x in r["DurationHistogram"]["Percentiles"]}
codes=r.get("RetCodes",{}); ok=sum(v for k,v in codes.items() if k in ("200","SERVING"))
n=r["DurationHistogram"]["Count"]; cpu=sum(map(float, open(sys.argv[2]).read().split()[-2:]))
print("%.0f %.3f %.3f %d %.1f" % (r["ActualQPS"], p[50]*1000, p[99]*1000, n-ok, cpu/n*1e6))' "$work/f.json" "$work/f.cpu"
}

http_url="http://127.0.0.1:$HTTP_PORT/"
grpc_url="http://127.0.0.1:$GRPC_PORT"
health=(--grpc grpc.health.v1.Health/Check)

# Warm-up, discarded: the first run after the server starts is slower for whichever tool
# goes first (cold caches, the server's goroutines and buffers growing).
DURATION="$WARMUP" cdcheck_closed 1 "$http_url" >/dev/null
DURATION="$WARMUP" fortio_closed 1 "$http_url" >/dev/null
DURATION="$WARMUP" cdcheck_closed 1 "$grpc_url" "${health[@]}" >/dev/null
DURATION="$WARMUP" fortio_closed 1 "127.0.0.1:$GRPC_PORT" -grpc >/dev/null

echo "closed loop, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds, threads: $THREADS"
echo "threads round protocol generator req/s p50_ms p99_ms failed cpu_us_per_request loadavg"
for threads in $THREADS; do
  for round in $(seq "$ROUNDS"); do
    echo "$threads $round http/1.1 cdcheck $(cdcheck_closed "$threads" "$http_url") $(loadavg)"
    echo "$threads $round http/1.1 fortio $(fortio_closed "$threads" "$http_url") $(loadavg)"
    echo "$threads $round grpc cdcheck $(cdcheck_closed "$threads" "$grpc_url" "${health[@]}") $(loadavg)"
    echo "$threads $round grpc fortio $(fortio_closed "$threads" "127.0.0.1:$GRPC_PORT" -grpc) $(loadavg)"
  done
done | tee "$work/closed.txt"

echo "medians per thread count (cdcheck / fortio: throughput ratio, CPU per request ratio)"
python3 - "$work/closed.txt" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) != 10 or not parts[0].isdigit():
        continue
    threads, _, protocol, generator = parts[:4]
    runs[(threads, protocol, generator)].append([float(x) for x in parts[4:]])
for threads, protocol in sorted({(t, p) for t, p, _ in runs}):
    median = {g: [statistics.median(col) for col in zip(*runs[(threads, protocol, g)])]
              for g in ("cdcheck", "fortio")}
    c, f = median["cdcheck"], median["fortio"]
    wins = sum(a[0] > b[0] for a, b in zip(runs[(threads, protocol, "cdcheck")],
                                             runs[(threads, protocol, "fortio")]))
    print(f"threads {threads} {protocol:8} cdcheck {c[0]:8.0f} req/s {c[4]:5.1f} us/req | "
          f"fortio {f[0]:8.0f} req/s {f[4]:5.1f} us/req | throughput x{c[0] / f[0]:.2f}, "
          f"CPU/req x{c[4] / f[4]:.2f}, cdcheck ahead in {wins}/{len(runs[(threads, protocol, 'cdcheck')])} rounds")
PY

echo "open loop, $OPEN_RATE req/s for $OPEN_DURATION (HTTP/1.1, 1 thread)"
/usr/bin/time -f "%M" -o "$work/rss" "$CDCHECK" load "$http_url" --threads 1 \
  --rate "$OPEN_RATE" --duration "$OPEN_DURATION" --json >"$work/o.json" || true
python3 - "$work/o.json" "$work/rss" "$OPEN_RATE" "$OPEN_DURATION" <<'PY'
import json, sys
out = json.load(open(sys.argv[1])); s = out["summary"]
rss_mb = int(open(sys.argv[2]).read().split()[-1]) / 1024
rate = float(sys.argv[3])
planned = int(rate * float(sys.argv[4].rstrip("s")))
print(f"sent {s['count']}/{planned}, achieved {s['achieved_rate']:.1f} req/s "
      f"({(s['achieved_rate'] - rate) / rate * 100:+.2f}% of {rate:.0f}), failed {s['failed']}")
print(f"latency p50 {s['latency']['p50_us']/1000:.3f} ms p99 {s['latency']['p99_us']/1000:.3f} ms "
      f"max {s['latency']['max_us']/1000:.3f} ms")
print(f"send lag p99 {s['send_lag']['p99_us']/1000:.3f} ms max {s['send_lag']['max_us']/1000:.3f} ms")
print(f"peak RSS {rss_mb:.1f} MB")
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
