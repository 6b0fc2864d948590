#!/usr/bin/env bash
# End-to-end benchmarks on this machine: prints one table (events/s, CPU seconds per million events,
# latency percentiles, peak RSS). Everything runs on loopback; nothing is left running.
#   N=200000 scripts/bench.sh        # events per run (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
SINGLE=${SINGLE:-20000}
cargo build --release --locked --quiet
BIN=$PWD/target/release/kcaudit
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
cpu_of() { awk -v t="$TICK" '{printf "%.3f", ($14+$15)/t}' "/proc/$1/stat"; }
rss_of() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

"$BIN" loadgen --count "$N" --out "$WORK/events.jsonl"
SIZE=$(stat -c %s "$WORK/events.jsonl")

rows=()
# 1. File replay to a blackhole (decode, dedup, detection; output to /dev/null).
read -r secs cpu rss < <(python3 - "$BIN" "$WORK/events.jsonl" <<'PY'
import resource, subprocess, sys, time
t = time.time()
subprocess.run([sys.argv[1], "replay", "--quiet", "--out", "/dev/null", sys.argv[2]], check=True, stderr=subprocess.DEVNULL)
el = time.time() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{el:.3f} {ru.ru_utime + ru.ru_stime:.3f} {ru.ru_maxrss/1024:.1f}")
PY
)
rows+=("file replay -> blackhole|$N|$(python3 -c "print(f'{$N/$secs:,.0f}')")|$(python3 -c "print(f'{$cpu/$N*1e6:.2f}')")|-|-|$rss")

start_server() {
  rm -rf "$WORK/data"
  "$BIN" serve --set "data_dir=\"$WORK/data\"" --set 'webhook.listen="127.0.0.1:18787"' --set 'log.level="warn"' >"$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:18787/readyz >/dev/null 2>&1 && return; sleep 0.1; done
  echo "kcaudit serve did not start:" >&2; cat "$WORK/serve.log" >&2; exit 1
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }

run_http() { # name count batch connections
  start_server
  local c0; c0=$(cpu_of "$SERVER_PID")
  local rep; rep=$("$BIN" loadgen --target http://127.0.0.1:18787/v1/events --count "$2" --batch "$3" --connections "$4" --max-seconds 300)
  local c1; c1=$(cpu_of "$SERVER_PID"); local rss; rss=$(rss_of "$SERVER_PID")
  local lines; lines=$(cat "$WORK"/data/audit.jsonl* | wc -l)  # rotated files included
  stop_server
  python3 - "$1" "$2" "$c0" "$c1" "$rss" "$lines" "$rep" <<'PY'
import json, sys
name, n, c0, c1, rss, lines, rep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6]), json.loads(sys.argv[7])
assert lines == rep["events_sent"], f"audit log has {lines} lines, loadgen sent {rep['events_sent']}"
print(f"{name}|{rep['events_sent']}|{rep['events_per_sec']:,.0f}|{(c1-c0)/max(rep['events_sent'],1)*1e6:.2f}|{rep['latency_ms_p50']:.2f}|{rep['latency_ms_p99']:.2f}|{rss}")
PY
}
rows+=("$(run_http 'webhook NDJSON batches (1000) -> audit log' "$N" 1000 2)")
rows+=("$(run_http 'webhook single events -> audit log' "$SINGLE" 1 16)")

echo
echo "kcaudit $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $N events of $((SIZE / N)) B average"
echo
echo "| run | events | events/s | CPU s per 1M events (kcaudit) | p50 ms | p99 ms | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "| ${r//|/ | } |"; done
