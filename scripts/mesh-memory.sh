#!/usr/bin/env bash
# Samples the local mesh's memory every N seconds (default 6) while a run goes on: the
# resident memory of every process outside the host's network namespace (the pods and the
# gateway), split into Envoy, pilot-agent and the rest (the apps), plus Envoys whose
# parent is gone (orphans, which a correct runner never leaves). One line per sample:
#   <unix time> apps=<MB>/<processes> pilot-agent=<MB>/<n> envoy=<MB>/<n> total_mb=<MB> orphan_envoy=<MB>/<n>
# Usage (as root, beside `cdcheck run --mesh on ...`): scripts/mesh-memory.sh [seconds] > mem.log
set -euo pipefail
period="${1:-6}"
# The host's namespace is this shell's (pid 1's may be unreadable in a sandbox).
host="$(readlink /proc/self/ns/net)"
while true; do
  orphan=0 no=0 apps=0 na=0 agent=0 ng=0 envoy=0 ne=0
  for p in /proc/[0-9]*; do
    ns="$(readlink "$p/ns/net" 2>/dev/null)" || continue
    [[ "$ns" == "$host" ]] && continue
    rss="$(awk '/^VmRSS/{print $2}' "$p/status" 2>/dev/null)" || continue
    [[ -z "$rss" ]] && continue
    case "$(cat "$p/comm" 2>/dev/null)" in
      envoy)
        if [[ "$(awk '/^PPid/{print $2}' "$p/status")" == 1 ]]; then
          orphan=$((orphan + rss)); no=$((no + 1))
        else
          envoy=$((envoy + rss)); ne=$((ne + 1))
        fi ;;
      pilot-agent) agent=$((agent + rss)); ng=$((ng + 1)) ;;
      *) apps=$((apps + rss)); na=$((na + 1)) ;;
    esac
  done
  echo "$(date +%s) apps=$((apps / 1024))/$na pilot-agent=$((agent / 1024))/$ng envoy=$((envoy / 1024))/$ne total_mb=$(((apps + agent + envoy) / 1024)) orphan_envoy=$((orphan / 1024))/$no"
  sleep "$period"
done
