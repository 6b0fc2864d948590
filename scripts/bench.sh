#!/usr/bin/env bash
# End-to-end benchmarks on this machine: prints one table (events/s, CPU seconds per million events,
# latency percentiles, peak RSS) for every way events come in and go out. Everything runs on loopback
# with the real services (a private ClickHouse server and tansu Kafka broker, started by
# examples/bench_services.rs with the tests' own code; installed here when missing, as scripts/test.sh
# does: Debian's clickhouse-server, and tansu built once from crates.io); nothing is left running.
# Every run checks that every event arrived (counts), so a fast wrong run cannot pass.
#   N=200000 SINGLE=20000 scripts/bench.sh
# Micro-benchmarks of each step: cargo bench --bench steps (and enrich, detect, clickhouse, kafka).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
SINGLE=${SINGLE:-20000}
RATE_SET=${RATE:-}
RATE=${RATE:-0}
# shellcheck source=scripts/services.sh
source scripts/services.sh
if [ -z "${KCAUDIT_CLICKHOUSE_SERVER:-}" ]; then
  if clickhouse_missing; then apt_install clickhouse-server clickhouse-client; fi
  clickhouse_server_path
fi
ensure_tansu
for need in "$KCAUDIT_TANSU" "$KCAUDIT_CLICKHOUSE_SERVER"; do
  [ -x "$need" ] || { echo "scripts/bench.sh: $need is missing or not executable" >&2; exit 1; }
done

echo "==> building (release)" >&2
cargo build --release --locked --quiet --bin kcaudit --example bench_services
BIN=$PWD/target/release/kcaudit
SVC=$PWD/target/release/examples/bench_services
WORK=$(mktemp -d)
# Cached enrichment, as the targets are defined: a directory snapshot in which every client, user and
# audience of the generated traffic exists (a lookup that misses costs more, and is rare in production).
DIRECTORY=$WORK/directory
SERVER_PID=
SVC_PID=
cleanup() {
  local rc=$?
  set +e # tearing down must not turn a good run into a failed one (a reaped child's status is not ours)
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  exec 3>&- 2>/dev/null || true # closing its stdin stops the services
  [ -n "$SVC_PID" ] && { sleep 1; kill "$SVC_PID" 2>/dev/null; }
  wait 2>/dev/null
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
cpu_of() { awk -v t="$TICK" '{printf "%.3f", ($14+$15)/t}' "/proc/$1/stat"; }
rss_of() { awk -v k="$2" '$1 == k":" {printf "%.1f", $2/1024}' "/proc/$1/status"; }
fmt() { python3 -c "import sys; print(f'{float(sys.argv[1]):,.0f}')" "$1"; }

"$BIN" loadgen --count "$N" --out "$WORK/events.jsonl" --directory "$DIRECTORY"
SIZE=$(stat -c %s "$WORK/events.jsonl")
# A fixed CPU task timed before the runs: shared virtual machines vary by tens of percent from hour to
# hour, and this says how fast the machine was when the table was taken.
CALIBRATION=$( { TIMEFORMAT=%U; time sha256sum "$WORK/events.jsonl" >/dev/null; } 2>&1 )

echo "==> starting ClickHouse and Kafka (loading $N events into a topic)" >&2
mkfifo "$WORK/svc.in"
"$SVC" "$WORK/events.jsonl" bench-events <"$WORK/svc.in" >"$WORK/svc.json" 2>"$WORK/svc.log" &
SVC_PID=$!
exec 3>"$WORK/svc.in"
for _ in $(seq 600); do [ -s "$WORK/svc.json" ] && break; kill -0 "$SVC_PID" 2>/dev/null || break; sleep 0.2; done
[ -s "$WORK/svc.json" ] || { echo "bench services did not start:" >&2; cat "$WORK/svc.log" >&2; exit 1; }
svc() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$WORK/svc.json" "$1"; }
CH_URL=$(svc clickhouse_url)
KAFKA=$(svc kafka_brokers)
CH_PID=$(svc clickhouse_pid)
[ "$(svc kafka_records)" = "$N" ] || { echo "the topic holds $(svc kafka_records) records, not $N" >&2; exit 1; }

rows=()
COMMON=(--set 'log.level="warn"' --set "enrich.directory=\"$DIRECTORY\"")

# File replay to a blackhole: decode, dedup, enrichment, detection; the sink discards.
replay_blackhole() {
  python3 - "$BIN" "$WORK/events.jsonl" "$WORK/replay" "$N" "${COMMON[@]}" <<'PY'
import json, resource, subprocess, sys, time
binary, events, data, n, common = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
t = time.time()
subprocess.run([binary, "replay", "--quiet", "--to-sinks", "--report", data + ".report.json", *common,
                "--set", f'data_dir="{data}"', "--set", "sinks.audit_log.enabled=false", "--set", "sinks.blackhole.enabled=true", events],
               check=True, stderr=subprocess.DEVNULL)
el = time.time() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
rep = json.load(open(data + ".report.json"))
tot = rep.get("totals", rep)
assert tot["accepted"] == n, f"replay accepted {tot['accepted']} of {n}"
print(f"file replay -> blackhole|{n}|{n/el:,.0f}|{(ru.ru_utime + ru.ru_stime)/n*1e6:.2f}|-|-|{ru.ru_maxrss/1024:.1f}")
PY
}
row=$(replay_blackhole) || exit 1
rows+=("$row")

start_server() { # extra --set arguments
  rm -rf "$WORK/data"
  "$BIN" serve --set "data_dir=\"$WORK/data\"" --set 'webhook.listen="127.0.0.1:18787"' "${COMMON[@]}" "$@" >"$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18787/readyz >/dev/null 2>&1 && return; sleep 0.1; done
  echo "kcaudit serve did not start:" >&2; cat "$WORK/serve.log" >&2; exit 1
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }
delivered() { # sink
  curl -sf http://127.0.0.1:18787/metrics | awk -v s="kcaudit_events_delivered_total{sink=\"$1\"}" '$1 == s {print $2; f=1} END {if (!f) print 0}'
}

run_http() { # name count batch connections rate sink [extra --set ...]
  local name=$1 count=$2 batch=$3 conns=$4 rate=$5 sink=$6
  shift 6
  start_server "$@"
  local c0; c0=$(cpu_of "$SERVER_PID")
  local h0; h0=$(cpu_of "$CH_PID")
  local t0; t0=$(date +%s.%N)
  local rep; rep=$("$BIN" loadgen --target http://127.0.0.1:18787/v1/events --count "$count" --batch "$batch" --connections "$conns" --rate "$rate" --max-seconds 300)
  # With the spool on, a 2xx means "on disk"; delivery follows. Wait (bounded) for the sink to catch up.
  local sent; sent=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['events_accepted'])" "$rep")
  local got=0
  for _ in $(seq 600); do got=$(delivered "$sink"); [ "${got%.*}" -ge "$sent" ] && break; sleep 0.1; done
  local c1; c1=$(cpu_of "$SERVER_PID"); local rss; rss=$(rss_of "$SERVER_PID" VmHWM)
  local h1; h1=$(cpu_of "$CH_PID"); local t1; t1=$(date +%s.%N)
  stop_server
  # The ClickHouse server shares the machine: its CPU per event says who the bottleneck is.
  [ "$sink" = clickhouse ] && python3 -c "import sys; h0, h1, t0, t1, n = map(float, sys.argv[1:]); print(f'{(h1-h0)/n*1e6:.1f} CPU s per 1M events ({(h1-h0)/(t1-t0):.2f} cores)')" "$h0" "$h1" "$t0" "$t1" "$got" >"$WORK/clickhouse_cpu"
  python3 - "$name" "$c0" "$c1" "$rss" "$got" "$rep" <<'PY'
import json, sys
name, c0, c1, rss, got, rep = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(float(sys.argv[5])), json.loads(sys.argv[6])
sent = rep["events_accepted"]
assert rep["errors"] == 0 and sent == rep["events_sent"], f"{name}: {rep['errors']} failed requests: {rep['status_counts']}"
assert got == sent, f"{name}: the sink got {got} events, loadgen had {sent} acknowledged"
print(f"{name}|{sent}|{rep['events_per_sec']:,.0f}|{(c1-c0)/max(sent,1)*1e6:.2f}|{rep['latency_ms_p50']:.2f}|{rep['latency_ms_p99']:.2f}|{rss}")
PY
}

row=$(run_http 'webhook NDJSON batches (1000) -> audit log' "$N" 1000 2 0 audit_log) || exit 1
rows+=("$row")
# The same traffic to a blackhole: the pipeline without the audit log's encoding, writes and fsyncs
# (the targets are "to a blackhole or the audit log"; Vector's figure in issue #9 is to a blackhole).
row=$(run_http 'webhook NDJSON batches (1000) -> blackhole' "$N" 1000 2 0 blackhole \
  --set sinks.audit_log.enabled=false --set sinks.blackhole.enabled=true) || exit 1
rows+=("$row")
row=$(run_http 'webhook single events, flat out (16 conns) -> audit log' "$SINGLE" 1 16 0 audit_log) || exit 1
rows+=("$row")
single_audit=$row
# The same requests to a blackhole: each audit-log batch waits for its fdatasync, and with 16
# connections a batch holds at most 16 events, so the row above is bound by the disk's flush time;
# this one shows the request path itself.
row=$(run_http 'webhook single events, flat out (16 conns) -> blackhole' "$SINGLE" 1 16 0 blackhole \
  --set sinks.audit_log.enabled=false --set sinks.blackhole.enabled=true) || exit 1
rows+=("$row")
# The latency targets are for half the achievable rate: RATE defaults to half the flat-out rate above.
[ -n "${RATE_SET:-}" ] || RATE=$(python3 -c "import sys; print(max(100, int(float(sys.argv[1].split('|')[2].replace(',', '')) / 2)))" "$single_audit")
row=$(run_http "webhook single events at $RATE/s -> audit log" "$SINGLE" 1 16 "$RATE" audit_log) || exit 1
rows+=("$row")
row=$(run_http "webhook single events at $RATE/s, spool on -> audit log" "$SINGLE" 1 16 "$RATE" audit_log --set spool.enabled=true) || exit 1
rows+=("$row")
# Without a batch wait: each request waits for its delivery, and two connections of 1,000 events
# can never fill ClickHouse's default 10,000-event batch, which would wait its full second each time
# (the default suits many senders, or the spool). Kafka -> ClickHouse below runs the defaults.
row=$(run_http 'webhook NDJSON batches (1000) -> ClickHouse server' "$N" 1000 2 0 clickhouse \
  --set sinks.audit_log.enabled=false --set sinks.clickhouse.enabled=true --set "sinks.clickhouse.urls=[\"$CH_URL\"]" \
  --set sinks.clickhouse.migrate_on_start=false --set 'sinks.clickhouse.password_env="KCAUDIT_BENCH_NO_PASSWORD"' \
  --set sinks.clickhouse.batch.max_wait_ms=0) || exit 1
rows+=("$row")

# Kafka to a blackhole: the topic was filled before kcaudit starts; timed from the first delivery to
# the last (the group join is not throughput), CPU over the same span.
# fetch.wait.max.ms: tansu holds every fetch for the full wait even when records are there (a Kafka
# broker answers as soon as fetch.min.bytes, 1, is met). With librdkafka's 500 ms default a bare
# consumer of this topic reads ~30k records/s from tansu; with 5 ms, ~350k (examples in issue #9's note).
kafka_row() { # name sink group [extra --set ...]
  local name=$1 sink=$2 group=$3
  shift 3
  start_server --set webhook.listen='"127.0.0.1:18787"' --set sinks.audit_log.enabled=false "$@" \
    --set kafka.enabled=true --set "kafka.brokers=\"$KAFKA\"" --set 'kafka.topics=["bench-events"]' --set "kafka.group_id=\"$group\"" \
    --set 'kafka.options={"fetch.wait.max.ms"="5"}'
  local t0 c0 got=0
  for _ in $(seq 3000); do got=$(delivered "$sink"); [ "${got%.*}" -gt 0 ] && break; sleep 0.01; done
  t0=$(date +%s.%N); c0=$(cpu_of "$SERVER_PID")
  local start_got=${got%.*}
  for _ in $(seq 6000); do got=$(delivered "$sink"); [ "${got%.*}" -ge "$N" ] && break; sleep 0.05; done
  local t1 c1 rss
  t1=$(date +%s.%N); c1=$(cpu_of "$SERVER_PID"); rss=$(rss_of "$SERVER_PID" VmHWM)
  stop_server
  python3 - "$name" "$N" "$start_got" "${got%.*}" "$t0" "$t1" "$c0" "$c1" "$rss" <<'PY'
import sys
name, n, g0, got, t0, t1, c0, c1, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *map(float, sys.argv[5:9]), sys.argv[9]
assert got == n, f"{name}: {got} of {n} delivered"
k = n - g0
print(f"{name}|{n}|{k/(t1-t0):,.0f}|{(c1-c0)/k*1e6:.2f}|-|-|{rss}")
PY
}
row=$(kafka_row 'Kafka (2 partitions) -> blackhole' blackhole bench --set sinks.blackhole.enabled=true) || exit 1
rows+=("$row")
# ClickHouse with its default batches (10,000 events or 1 s) while the source holds at most 5,000
# records in flight: sinks write at once while the source waits for acknowledgements.
row=$(kafka_row 'Kafka (2 partitions) -> ClickHouse server, default batches' clickhouse bench-ch \
  --set sinks.clickhouse.enabled=true --set "sinks.clickhouse.urls=[\"$CH_URL\"]" \
  --set sinks.clickhouse.migrate_on_start=false --set 'sinks.clickhouse.password_env="KCAUDIT_BENCH_NO_PASSWORD"') || exit 1
rows+=("$row")

# Idle: a fresh server with nothing to do.
start_server
sleep 2
IDLE=$(rss_of "$SERVER_PID" VmRSS)
stop_server

echo
echo "kcaudit $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $N events of $((SIZE / N)) B average; cached enrichment (directory), default rules"
echo
echo "| run | events | events/s | CPU s per 1M events (kcaudit) | p50 ms | p99 ms | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "| ${r//|/ | } |"; done
echo
echo "Calibration: sha256sum of the $((SIZE / 1000000)) MB event file took $CALIBRATION CPU s on this machine at the time."
[ -s "$WORK/clickhouse_cpu" ] && echo "The ClickHouse server itself (Debian's $(curl -sf "$CH_URL/?query=SELECT%20version()" || echo '?')) used $(cat "$WORK/clickhouse_cpu") during the ClickHouse run."
echo "Idle RSS after start: $IDLE MiB. Latency is per request as the load generator sees it (a batch request answers once every event in it is delivered)."
