#!/usr/bin/env bash
# Traffic engine benchmarks (BENCHMARKS.md, "Traffic engine"), on one loopback target: fortio's
# own server (HTTP echo and gRPC health), so both load generators hit the same code.
#  1. closed loop, equal connections: cdcheck vs fortio throughput and latency, HTTP/1.1 and gRPC
#     (grpc.health.v1.Health/Check), rounds interleaved so machine noise hits both alike;
#  2. open loop at 5000 req/s for 60 s: achieved rate, send lag, and cdcheck's peak RSS.
# cdcheck runs with its default worker threads (half the CPUs, at least one); fortio with its
# default GOMAXPROCS (all CPUs).
# Needs fortio: `go install fortio.org/fortio@v1.68.2` (later releases need grol.io/grol,
# which the Go module proxy here refuses).
set -euo pipefail
cd "$(dirname "$0")/.."

FORTIO="${FORTIO:-$(go env GOPATH)/bin/fortio}"
CONNECTIONS="${CONNECTIONS:-8}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-5}"
OPEN_RATE="${OPEN_RATE:-5000}"
OPEN_DURATION="${OPEN_DURATION:-60s}"
HTTP_PORT="${HTTP_PORT:-18080}"
GRPC_PORT="${GRPC_PORT:-18079}"

[[ -x "$FORTIO" ]] || { echo "fortio not found at $FORTIO (go install fortio.org/fortio@v1.68.2)" >&2; exit 1; }
cargo build --release --bin cdcheck >&2
CDCHECK=target/release/cdcheck
work="$(mktemp -d)"
"$FORTIO" server -http-port "127.0.0.1:$HTTP_PORT" -grpc-port "127.0.0.1:$GRPC_PORT" \
  -redirect-port disabled >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
sleep 1

cdcheck_closed() { # url extra-args... -> "qps p50_ms p99_ms"
  local url="$1"; shift
  /usr/bin/time -f "%U %S" -o "$work/c.cpu" \
    "$CDCHECK" load "$url" --connections "$CONNECTIONS" --duration "$DURATION" --json "$@" >"$work/c.json" || true
  python3 -c '
import json,sys
s=json.load(open(sys.argv[1]))["summary"]; l=s["latency"]
cpu=sum(map(float, open(sys.argv[2]).read().split()[-2:]))
print("%.0f %.3f %.3f %d %.1f" % (s["achieved_rate"], l["p50_us"]/1000, l["p99_us"]/1000, s["failed"], cpu/s["count"]*1e6))' "$work/c.json" "$work/c.cpu"
}
fortio_closed() { # target extra-args... -> "qps p50_ms p99_ms"
  local target="$1"; shift
  /usr/bin/time -f "%U %S" -o "$work/f.cpu" \
    "$FORTIO" load -qps 0 -c "$CONNECTIONS" -t "$DURATION" -p "50,99" -json "$work/f.json" "$@" "$target" >/dev/null 2>&1
  python3 -c '
import json,sys
r=json.load(open(sys.argv[1])); p={x["Percentile"]:x["Value"] for x in r["DurationHistogram"]["Percentiles"]}
codes=r.get("RetCodes",{}); ok=sum(v for k,v in codes.items() if k in ("200","SERVING"))
n=r["DurationHistogram"]["Count"]; cpu=sum(map(float, open(sys.argv[2]).read().split()[-2:]))
print("%.0f %.3f %.3f %d %.1f" % (r["ActualQPS"], p[50]*1000, p[99]*1000, n-ok, cpu/n*1e6))' "$work/f.json" "$work/f.cpu"
}

# Warm-up, discarded: the first run after the server starts is slower for whichever tool
# goes first (cold caches, the server's goroutines and buffers growing).
DURATION=2s cdcheck_closed "http://127.0.0.1:$HTTP_PORT/" >/dev/null
DURATION=2s fortio_closed "http://127.0.0.1:$HTTP_PORT/" >/dev/null
DURATION=2s cdcheck_closed "http://127.0.0.1:$GRPC_PORT" --grpc grpc.health.v1.Health/Check >/dev/null
DURATION=2s fortio_closed "127.0.0.1:$GRPC_PORT" -grpc >/dev/null

echo "closed loop, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds (req/s p50_ms p99_ms failed cpu_us_per_request)"
for round in $(seq "$ROUNDS"); do
  echo "round $round http/1.1 cdcheck $(cdcheck_closed "http://127.0.0.1:$HTTP_PORT/")"
  echo "round $round http/1.1 fortio  $(fortio_closed "http://127.0.0.1:$HTTP_PORT/")"
  echo "round $round grpc     cdcheck $(cdcheck_closed "http://127.0.0.1:$GRPC_PORT" --grpc grpc.health.v1.Health/Check)"
  echo "round $round grpc     fortio  $(fortio_closed "127.0.0.1:$GRPC_PORT" -grpc)"
done

echo "open loop, $OPEN_RATE req/s for $OPEN_DURATION (HTTP/1.1)"
/usr/bin/time -f "%M" -o "$work/rss" "$CDCHECK" load "http://127.0.0.1:$HTTP_PORT/" \
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
