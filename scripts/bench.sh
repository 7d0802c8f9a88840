#!/usr/bin/env bash
# make bench: end-to-end throughput and latency of the dispatcher against nginx,
# with wrk's ceiling against the same nginx measured in the same run.
#
# Starts (deploy/local/stack.sh) a throwaway PostgreSQL, the embedded broker
# (KAFKA=apache: Apache Kafka, one KRaft node),
# nginx (answers the verification challenge, 204 to every POST, and logs
# "$msec $request_method $status $http_webhook_id" per request) and the
# dispatcher; subscribes http://127.0.0.1:PORT/hook to every event type. Then:
#
#   throughput  hookbridge-producer --generate BENCH_EVENTS (default 20000);
#               deliveries/s = POSTs / (last POST - first POST) in nginx's log
#   latency     hookbridge-producer --generate RATE*SECONDS --rate RATE
#               (BENCH_RATE, default 2000/s; BENCH_LATENCY_SECONDS, default 5);
#               the events are read back from identity.events with kcat, and each
#               event's `published` time (set by the producer) is matched with the
#               $msec of its POST through its webhook-id, which is derived from the
#               event uuid and subscription id (scripts/bench_latency.py);
#               BENCH_TIMELINE=FILE also writes "produced kafka-timestamp posted"
#               (ms) per event, to see when a slow one was slow; issue 12: p99
#               <= 20 ms at 2,000 events/s (run after the reference client below)
#   efficiency  the dispatcher's CPU (utime + stime from /proc/PID/stat) from
#               the throughput phase's start to its last delivery: deliveries per
#               dispatcher CPU-second, next to the reference client's requests per
#               CPU-second (tests/bench/bench_curl_ref.c: one thread, libcurl
#               multi, 32 keep-alive connections, 900-byte POSTs, the same nginx,
#               BENCH_REF_SECONDS, default 5) and their ratio (issue 12: >= 0.7);
#               then our HTTP engine alone (tests/bench/bench_http.c: lib/hb_http.c
#               with the webhook headers and nothing else), to tell the engine's
#               share of the gap from the rest of the dispatcher's
#   log cost    PostgreSQL's CPU (the postmaster and its children, from /proc,
#               exited backends through the postmaster's cutime + cstime) from the
#               throughput phase's start until its attempts are in the delivery
#               log, divided by the attempts logged: microseconds per attempt, and
#               the client backends' share (without autovacuum, the writers, ...);
#               issue 12: at most half of main's before the work
#               (BENCH_PG_BASELINE_US, default 31: the median of 8 runs at 734d258, 26-44)
#   machine     during the throughput phase: how many of the machine's cores were
#               busy (/proc/stat) and whose they were: the dispatcher, PostgreSQL,
#               nginx, the broker, the producer (with the script's own curl and
#               psql calls); "the rest" is everything else on the machine
#   ceiling     wrk -t1 -c32 -d5s POSTing a 900-byte body to the same endpoint
#   memory      the dispatcher's VmHWM / VmRSS after the run
#   scale-out   a second dispatcher joins the same consumer group; once both own
#               partitions, BENCH_EVENTS more events: first to last POST with two
#               replicas, next to the one-replica figure (BENCH_SCALEOUT=0 skips it)
#
# BENCH_RESULTS=FILE appends the figures as "broker<TAB>figure<TAB>value<TAB>target<TAB>met"
# lines for scripts/bench_all.sh's summary table. BENCH_PERF=FILE records
# `perf record -g` of the dispatcher during the throughput phase into FILE
# (perf's overhead then lowers that phase's figures); BENCH_PERF_ARGS (default -g)
# replaces perf's options, e.g. "--call-graph dwarf,16384 -F 999" for whole stacks
# (the programs have no frame pointers, so -g stops at libc).
#
# Everything runs on loopback; everything started is stopped at exit (also on
# failure or Ctrl-C). Any HOOKBRIDGE_* setting in the environment reaches the
# dispatcher (e.g. HOOKBRIDGE_MAX_IN_FLIGHT, HOOKBRIDGE_MAX_HOST_CONNECTIONS).
# shellcheck disable=SC2119 # stack_* functions take optional arguments, not the script's
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/local/stack.sh
. deploy/local/stack.sh
BIN=$STACK_BIN
PY=/usr/bin/python3

# The same number of connections to the one receiver as the references
# (wrk -c32, bench_curl_ref's 32): the default cap of 16 per host would make
# the dispatcher wait for connections, not for CPU.
export HOOKBRIDGE_MAX_HOST_CONNECTIONS=${HOOKBRIDGE_MAX_HOST_CONNECTIONS:-32}
EVENTS=${BENCH_EVENTS:-20000}
RATE=${BENCH_RATE:-2000}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-5}
FETCH_WAIT_MS=${BENCH_FETCH_WAIT_MS:-10}
WARMUP=50
STALL_SECONDS=20 # a phase gives up when no delivery completes for this long
REF_SECONDS=${BENCH_REF_SECONDS:-5}
# PostgreSQL CPU per logged attempt measured on main at 734d258 (before issue 12's
# work) with this script (both brokers): the target is half of it.
PG_BASELINE_US=${BENCH_PG_BASELINE_US:-31}
SCALEOUT=${BENCH_SCALEOUT:-1}
RESULTS=${BENCH_RESULTS:-/dev/null}
BROKER=${KAFKA:-devbroker}

for tool in nginx wrk kcat curl jq psql; do
  command -v "$tool" >/dev/null || die "$tool is missing (make deps installs it)"
done
for p in hookbridge-devbroker hookbridge-migrate hookbridge-dispatcher hookbridge-producer; do
  [ -x "$BIN/$p" ] || die "$BIN/$p is missing (run make)"
done
REF=${BENCH_BUILD:-build}/tests/bench/bench_curl_ref
[ -x "$REF" ] || die "$REF is missing (run make)"
ENGINE=${BENCH_BUILD:-build}/tests/bench/bench_http
[ -x "$ENGINE" ] || die "$ENGINE is missing (run make)"

now_ms() { date +%s%3N; }

stack_init hookbridge-bench
B=$STACK_DIR

# ---------------------------------------------------------------- the stack

say "starting PostgreSQL"
stack_start_postgres
# Each dev-broker partition keeps only ~5 MiB: enough partitions that no event
# of this run is trimmed before the dispatcher and the read-back consume it.
TOTAL=$((WARMUP + EVENTS + RATE * LAT_SECONDS + (SCALEOUT ? 4 * WARMUP + EVENTS : 0)))
PARTITIONS=$(((TOTAL + 3999) / 4000))
[ "$PARTITIONS" -ge 6 ] || PARTITIONS=6
if [ "${KAFKA:-devbroker}" = apache ]; then # KAFKA=apache: the same on Apache Kafka
  say "starting Apache Kafka (one KRaft node) and creating the topics"
  stack_start_kafka 1
  BROKER_PID=$STACK_LAST_PID
  HOOKBRIDGE_TOPIC_PARTITIONS=$PARTITIONS stack_create_topics >/dev/null
else
  say "starting the embedded Kafka broker"
  stack_start_devbroker --partitions "$PARTITIONS"
  BROKER_PID=$STACK_LAST_PID
fi
say "applying migrations"
stack_migrate >/dev/null

say "starting nginx"
stack_start_nginx 204 || die "nginx did not start"
NGINX_PID=$STACK_LAST_PID
URL=$STACK_NGINX_URL
NGINX_LOG=$STACK_NGINX_LOG

# The dev broker holds a Fetch that finds no data for the whole fetch.wait.max.ms
# (librdkafka default 500 ms) even when data arrives meanwhile; a real broker
# answers as soon as there is data. A short wait keeps that artefact of the dev
# broker out of the latency figures (BENCH_FETCH_WAIT_MS=500 shows it).
say "starting the dispatcher (fetch.wait.max.ms=$FETCH_WAIT_MS)"
stack_start_dispatcher HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS="$FETCH_WAIT_MS"
stack_wait_dispatcher_ready 30 || die "the dispatcher did not become ready"
D1_PID=$STACK_DISPATCHER_PID
D1_HTTP=$STACK_DISPATCHER_HTTP
DISPATCHERS=("$D1_HTTP") # every replica's /metrics address
metric() { # metric NAME{LABELS} -> value summed over the replicas (0 when absent)
  local h
  for h in "${DISPATCHERS[@]}"; do curl -fs "http://$h/metrics" || true; done |
    awk -v m="$1" '$1 == m { v += $2 } END { printf "%d\n", v + 0 }'
}
finished() { # deliveries finished in any way, summed over the replicas
  local h
  for h in "${DISPATCHERS[@]}"; do curl -fs "http://$h/metrics" || true; done |
    awk '$1 ~ /^hookbridge_deliveries_total\{/ { v += $2 } END { printf "%d\n", v + 0 }'
}
# result FIGURE VALUE TARGET [MET]: one line of scripts/bench_all.sh's summary
result() { printf '%s\t%s\t%s\t%s\t%s\n' "$BROKER" "$1" "$2" "$3" "${4:-}" >>"$RESULTS"; }
met() { # met AWK-CONDITION A [B] -> yes / no, the condition on the numbers a and b
  awk -v a="$2" -v b="${3:-0}" "BEGIN { print (($1) ? \"yes\" : \"no\") }" </dev/null
}

say "subscribing $URL to every event type"
TYPES=$(grep -v '^#' schema/event_types.txt | cut -f1 | grep -v '^$' | paste -sd,)
SUB=$(stack_register bench "$URL" "$TYPES" '{}')
stack_verify "$SUB" || { stack_log_tail dispatcher; die "verification: $STACK_VERIFICATION"; }
stack_activate "$SUB"
for _ in $(seq 50); do
  [ "$(metric hookbridge_subscriptions)" -ge 1 ] && break
  sleep 0.1
done
echo "subscription $SUB: $(echo "$TYPES" | tr ',' '\n' | wc -l) event types, verified, active"

# Waits until `finished` reaches $1; gives up after STALL_SECONDS without progress.
wait_finished() {
  local want=$1 last=-1 cur stall=0
  while :; do
    cur=$(finished)
    [ "$cur" -ge "$want" ] && return 0
    if [ "$cur" = "$last" ]; then
      stall=$((stall + 1))
      if [ "$stall" -ge $((STALL_SECONDS * 10)) ]; then
        echo "no progress for ${STALL_SECONDS}s: $cur of $want deliveries finished" >&2
        return 1
      fi
    else
      stall=0
      last=$cur
    fi
    sleep 0.1
  done
}
produce() { # produce ARGS... -> runs the producer, prints its summary line
  "$BIN/hookbridge-producer" "$@" >"$B/producer.out" 2>&1 ||
    { cat "$B/producer.out"; die "hookbridge-producer $* failed"; }
  echo "producer: $(grep -E 'produced [0-9]+' "$B/producer.out" | tail -1)"
}
log_size() { stat -c %s "$NGINX_LOG"; }
cpu_ticks() { # utime + stime of the processes $@, in clock ticks
  local p
  for p in "$@"; do cat "/proc/$p/stat"; done | sed 's/^.*) //' | awk '{ t += $12 + $13 } END { print t + 0 }'
}
# PostgreSQL's CPU in clock ticks: "total clients", where total is the
# postmaster (with the exited children it reaped: cutime + cstime) and every live
# child (backends, autovacuum, walwriter, ...), and clients is the client
# backends alone (process title "postgres: USER DB HOST(PORT) ..."), each pid's
# ticks listed as "pid ticks" in $1 so that a later snapshot subtracts them.
pg_cpu_snapshot() {
  local pm pid title ticks
  pm=$(head -1 "$STACK_PG_DATA/postmaster.pid")
  : >"$1"
  # (a process may end between listing and reading it: skip it)
  for pid in $(ps -o pid= --ppid "$pm") "$pm"; do
    ticks=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null |
      awk -v pm="$pm" -v pid="$pid" '{ print $12 + $13 + (pid == pm ? $14 + $15 : 0) }') || continue
    [ -n "$ticks" ] || continue
    title=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    case $title in
    *"("[0-9]*")"*) echo "$pid client $ticks" ;;
    *) echo "$pid other $ticks" ;;
    esac
  done >>"$1"
}
# pg_cpu_delta BEFORE AFTER -> "total_ticks client_ticks" between two snapshots
pg_cpu_delta() {
  awk 'NR == FNR { was[$1] = $3; next }
       { d = $3 - ($1 in was ? was[$1] : 0); t += d; if ($2 == "client") c += d }
       END { print t + 0, c + 0 }' "$1" "$2"
}
CLK_TCK=$(getconf CLK_TCK)
# first-to-last POST rate in nginx's log between byte offsets $1 and $2: "posts span rate"
post_rate() {
  tail -c +$(($1 + 1)) "$NGINX_LOG" | head -c $(($2 - $1)) |
    awk '$2 == "POST" { n++; if (!f || $1 < f) f = $1; if ($1 > l) l = $1 }
       END { s = l - f; printf "%d %.3f %.0f\n", n, s, (s > 0 ? (n - 1) / s : 0) }'
}

say "warm-up: $WARMUP events (consumer group join, connections)"
produce --generate "$WARMUP" >/dev/null
wait_finished "$WARMUP" || die "the warm-up events were not delivered"

# ---------------------------------------------------------------- throughput

PERF_PID=""
stack_on_exit() { # a perf record still running when the script fails
  if [ -n "$PERF_PID" ] && kill -0 "$PERF_PID" 2>/dev/null; then
    kill -INT "$PERF_PID"
    wait "$PERF_PID" 2>/dev/null
  fi
}
say "throughput: $EVENTS events, produced as fast as the producer can"
BASE=$(finished)
FAILED0=$(metric 'hookbridge_deliveries_total{outcome="failed"}')
for _ in $(seq 100); do # the warm-up's attempts in the log first: they are not this phase's
  ROWS0=$(stack_psql -At -c "SELECT count(*) FROM hookbridge.delivery_attempts")
  [ "$ROWS0" -ge "$WARMUP" ] && break
  sleep 0.1
done
if [ -n "${BENCH_PERF:-}" ]; then
  # shellcheck disable=SC2086 # BENCH_PERF_ARGS is a list of perf options
  perf record -q ${BENCH_PERF_ARGS:--g} -p "$D1_PID" -o "$BENCH_PERF" >"$B/perf.log" 2>&1 &
  PERF_PID=$!
  sleep 0.5 # perf attaches
fi
# Where the machine's CPU goes during the phase: every CPU's busy time from
# /proc/stat, and the parts we can name: a process with its descendants (nginx's
# workers, the broker's JVM), and this script's reaped children (the producer,
# and the curl and psql calls that watch the run).
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
tree_pids() { # PID and its descendants
  local c
  echo "$1"
  for c in $(pgrep -P "$1"); do tree_pids "$c"; done
}
# shellcheck disable=SC2046 # one pid per word
tree_ticks() { cpu_ticks $(tree_pids "$1") 2>/dev/null || echo 0; }
reaped_ticks() { sed 's/^.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }
OFF1=$(log_size)
MACH1=$(machine_ticks)
NGX1=$(tree_ticks "$NGINX_PID")
BRK1=$(tree_ticks "$BROKER_PID")
KIDS1=$(reaped_ticks)
pg_cpu_snapshot "$B/pg.cpu1m"
CPU1=$(cpu_ticks "$D1_PID")
WAIT1=$(awk '{ print $2 }' "/proc/$D1_PID/schedstat")
pg_cpu_snapshot "$B/pg.cpu1"
T1=$(now_ms)
produce --generate "$EVENTS"
T_PRODUCED=$(now_ms)
TP_OK=1
wait_finished $((BASE + EVENTS)) || TP_OK=0
T2=$(now_ms)
CPU2=$(cpu_ticks "$D1_PID")
MACH2=$(machine_ticks)
NGX2=$(tree_ticks "$NGINX_PID")
BRK2=$(tree_ticks "$BROKER_PID")
KIDS2=$(reaped_ticks)
pg_cpu_snapshot "$B/pg.cpu2m"
WAIT2=$(awk '{ print $2 }' "/proc/$D1_PID/schedstat")
OFF2=$(log_size)
if [ -n "$PERF_PID" ]; then
  kill -INT "$PERF_PID"
  wait "$PERF_PID" || true
  PERF_PID=""
  echo "perf record: $BENCH_PERF"
fi
read -r TP_POSTS TP_SPAN TP_RATE < <(post_rate "$OFF1" "$OFF2")
E2E_RATE=$(awk -v n="$TP_POSTS" -v ms=$((T2 - T1)) 'BEGIN { printf "%.0f", n * 1000 / ms }')
# The delivery loop's thread (the main thread: /proc/PID/schedstat is the
# thread-group leader's) runnable but waiting for a CPU, as a share of the phase:
# how much the machine's other load held the dispatcher back.
TP_WAIT=$(awk -v ns=$((WAIT2 - WAIT1)) -v ms=$((T2 - T1)) 'BEGIN { printf "%.0f", 100 * ns / 1e6 / ms }')
TP_CPU=$(awk -v t=$((CPU2 - CPU1)) -v hz="$CLK_TCK" -v ms=$((T2 - T1)) \
  'BEGIN { printf "%.0f", 100 * t / hz / (ms / 1000) }')
TP_CPU_S=$(awk -v t=$((CPU2 - CPU1)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
TP_PER_CPU=$(awk -v n="$TP_POSTS" -v c="$TP_CPU_S" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
TP_FAILED=$(($(metric 'hookbridge_deliveries_total{outcome="failed"}') - FAILED0))
echo "$TP_POSTS POSTs in ${TP_SPAN}s from first to last: $TP_RATE deliveries/s" \
  "(produce took $((T_PRODUCED - T1)) ms; $((T2 - T1)) ms from producer start to the last delivery," \
  "$E2E_RATE/s; dispatcher CPU $TP_CPU% of one core; $TP_FAILED failed)"
echo "dispatcher: ${TP_CPU_S} CPU-seconds for $TP_POSTS deliveries: $TP_PER_CPU deliveries per CPU-second"
read -r PGM_TICKS _ < <(pg_cpu_delta "$B/pg.cpu1m" "$B/pg.cpu2m")
MACH_LINE=$(awk -v m=$((MACH2 - MACH1)) -v d=$((CPU2 - CPU1)) -v p="$PGM_TICKS" -v x=$((NGX2 - NGX1)) \
  -v k=$((BRK2 - BRK1)) -v c=$((KIDS2 - KIDS1)) -v ms=$((T2 - T1)) -v hz="$CLK_TCK" \
  -v cores="$(nproc)" 'BEGIN {
    s = ms / 1000 * hz # clock ticks per core over the phase
    printf "%.2f of %d cores busy: dispatcher %.2f, PostgreSQL %.2f, nginx %.2f, broker %.2f, producer and watchers %.2f, the rest %.2f",
      m / s, cores, d / s, p / s, x / s, k / s, c / s, (m - d - p - x - k - c) / s }')
echo "machine during throughput: $MACH_LINE"
[ "$TP_OK" = 1 ] || echo "warning: not every delivery finished" >&2

# Let the dispatcher finish writing the delivery log before the next phase.
WANT_ROWS=$((ROWS0 + EVENTS))
for _ in $(seq 300); do
  ROWS=$(stack_psql -At -c "SELECT count(*) FROM hookbridge.delivery_attempts")
  [ "$ROWS" -ge "$WANT_ROWS" ] && break
  sleep 0.1
done
pg_cpu_snapshot "$B/pg.cpu2"
T_LOGGED=$(now_ms)
echo "delivery log: $((ROWS - ROWS0)) of $EVENTS attempts written $((T_LOGGED - T2)) ms after the last delivery"
# The polling psql above costs the server a little too: one short query per 0.1 s.
read -r PG_TICKS PG_CLIENT_TICKS < <(pg_cpu_delta "$B/pg.cpu1" "$B/pg.cpu2")
PG_CPU_S=$(awk -v t="$PG_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
PG_US=$(awk -v t="$PG_TICKS" -v hz="$CLK_TCK" -v n=$((ROWS - ROWS0)) 'BEGIN { printf "%.1f", (n > 0 ? 1e6 * t / hz / n : 0) }')
PG_CLIENT_US=$(awk -v t="$PG_CLIENT_TICKS" -v hz="$CLK_TCK" -v n=$((ROWS - ROWS0)) 'BEGIN { printf "%.1f", (n > 0 ? 1e6 * t / hz / n : 0) }')
echo "PostgreSQL: ${PG_CPU_S} CPU-seconds for $((ROWS - ROWS0)) logged attempts: $PG_US us per attempt" \
  "($PG_CLIENT_US us in the client backends, the rest in autovacuum, the writers, ...)"

# ---------------------------------------------------------------- reference client

say "reference: tests/bench/bench_curl_ref, one thread, 32 connections, 900-byte POSTs, ${REF_SECONDS}s"
"$REF" "$URL" 32 "$REF_SECONDS" 900 >"$B/ref.out" || { cat "$B/ref.out"; die "bench_curl_ref failed"; }
read -r REF_N _ REF_RPS REF_CPU_S REF_PER_CPU REF_FAILED <"$B/ref.out"
RATIO=$(awk -v a="$TP_PER_CPU" -v b="$REF_PER_CPU" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
echo "reference client: $REF_N requests, $REF_RPS/s, $REF_CPU_S CPU-seconds: $REF_PER_CPU requests" \
  "per CPU-second ($REF_FAILED failed); dispatcher / reference = $RATIO"
# Our HTTP engine alone (lib/hb_http.c, the same requests with the webhook
# headers, nothing else): splits the gap between the dispatcher and the
# reference into the engine's share and everything else's.
"$ENGINE" "$URL" 32 "$REF_SECONDS" 900 >"$B/engine.out" || { cat "$B/engine.out"; die "bench_http failed"; }
read -r _ _ ENG_RPS _ ENG_PER_CPU _ <"$B/engine.out"
ENG_RATIO=$(awk -v a="$ENG_PER_CPU" -v b="$REF_PER_CPU" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
echo "HTTP engine alone (bench_http): $ENG_RPS requests/s, $ENG_PER_CPU per CPU-second; engine / reference = $ENG_RATIO"

# ---------------------------------------------------------------- latency

LAT_EVENTS=$((RATE * LAT_SECONDS))
say "latency: $LAT_EVENTS events at $RATE/s"
OFF3=$(log_size)
BASE=$(finished)
T3=$(now_ms)
produce --generate "$LAT_EVENTS" --rate "$RATE"
T4=$(now_ms)
LAT_OK=1
wait_finished $((BASE + LAT_EVENTS)) || LAT_OK=0
[ "$LAT_OK" = 1 ] || echo "warning: not every delivery finished" >&2
timeout 60 kcat -C -q -e -o beginning -b "$HOOKBRIDGE_KAFKA_BROKERS" -t identity.events \
  -f '%p %o %T %S\n%s\n' >"$B/events.dump" || die "kcat could not read identity.events back"
"$PY" scripts/bench_latency.py "$B/events.dump" "$NGINX_LOG" "$OFF3" "$SUB" "$T3" \
  "$((T4 + 1))" >"$B/latency.out" 2>"$B/latency.check" ||
  { cat "$B/latency.check"; die "the latency computation failed"; }
read -r LAT_N LAT_MISSING P50 P90 P99 PMAX PMEAN <"$B/latency.out"
echo "$LAT_N events matched to their POST ($LAT_MISSING not delivered):" \
  "p50 $P50 ms, p90 $P90 ms, p99 $P99 ms, max $PMAX ms, mean $PMEAN ms"
sed 's/^/  /' "$B/latency.check"

# ---------------------------------------------------------------- ceiling

say "ceiling: wrk -t1 -c32 -d5s, 900-byte POSTs to the same nginx endpoint"
cat >"$B/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["webhook-id"] = "wrk"
local head = '{"eventType":"com.okta.event_hook","eventTypeVersion":"1.0","data":{"events":[{"pad":"'
local tail = '"}]}}'
wrk.body = head .. string.rep("x", 900 - #head - #tail) .. tail
EOF
wrk -t1 -c32 -d5s -s "$B/post.lua" "$URL" >"$B/wrk.out" 2>&1 || { cat "$B/wrk.out"; die "wrk failed"; }
WRK_RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$B/wrk.out")
WRK_P50=$(awk '$1 == "Latency" { print $2; exit }' "$B/wrk.out")
echo "wrk: $WRK_RPS requests/s (mean latency $WRK_P50)"

# ---------------------------------------------------------------- memory

read -r HWM RSS < <(awk '/^VmHWM:/ { h = $2 } /^VmRSS:/ { r = $2 } END { print h, r }' \
  "/proc/$D1_PID/status")

# ---------------------------------------------------------------- scale-out

SO_RATE="-"
SO_LINE="skipped (BENCH_SCALEOUT=0)"
if [ "$SCALEOUT" = 1 ]; then
  say "scale-out: a second dispatcher replica in the same consumer group"
  stack_start_dispatcher HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS="$FETCH_WAIT_MS"
  D2_PID=$STACK_DISPATCHER_PID
  stack_wait_dispatcher_ready 30 || die "the second dispatcher did not become ready"
  DISPATCHERS+=("$STACK_DISPATCHER_HTTP")
  # Both replicas own partitions once the second one reports the lag of some.
  owns() { curl -fs "http://$1/metrics" | grep -c '^hookbridge_consumer_lag{topic="identity.events"'; }
  for _ in $(seq 300); do
    [ "$(owns "$STACK_DISPATCHER_HTTP")" -ge 1 ] && break
    sleep 0.1
  done
  [ "$(owns "$STACK_DISPATCHER_HTTP")" -ge 1 ] || die "the second dispatcher got no partition in 30 s"
  # Warm-up until each replica has delivered (the rebalance is over, connections are open).
  SO_OK=0
  for _ in 1 2 3 4; do
    BASE=$(finished)
    produce --generate "$WARMUP" >/dev/null
    wait_finished $((BASE + WARMUP)) || die "the scale-out warm-up events were not delivered"
    D1_DONE=$(curl -fs "http://$D1_HTTP/metrics" | awk '$1 ~ /^hookbridge_deliveries_total\{/ { v += $2 } END { print v + 0 }')
    D2_DONE=$(curl -fs "http://$STACK_DISPATCHER_HTTP/metrics" | awk '$1 ~ /^hookbridge_deliveries_total\{/ { v += $2 } END { print v + 0 }')
    if [ "$D2_DONE" -gt 0 ] && [ "$D1_DONE" -gt $((WARMUP + EVENTS + LAT_EVENTS)) ]; then
      SO_OK=1
      break
    fi
    sleep 1
  done
  [ "$SO_OK" = 1 ] || echo "warning: one replica delivered nothing during the scale-out warm-up" >&2
  say "scale-out: $EVENTS events, two replicas"
  BASE=$(finished)
  OFF5=$(log_size)
  SCPU1=$(cpu_ticks "$D1_PID" "$D2_PID")
  T5=$(now_ms)
  produce --generate "$EVENTS"
  wait_finished $((BASE + EVENTS)) || echo "warning: not every delivery finished" >&2
  T6=$(now_ms)
  SCPU2=$(cpu_ticks "$D1_PID" "$D2_PID")
  OFF6=$(log_size)
  read -r SO_POSTS SO_SPAN SO_RATE < <(post_rate "$OFF5" "$OFF6")
  SO_CPU=$(awk -v t=$((SCPU2 - SCPU1)) -v hz="$CLK_TCK" -v ms=$((T6 - T5)) \
    'BEGIN { printf "%.0f", 100 * t / hz / (ms / 1000) }')
  SO_LINE="$SO_RATE deliveries/s with two replicas, $TP_RATE with one ($SO_POSTS POSTs in ${SO_SPAN}s; both replicas' CPU $SO_CPU% of one core)"
  echo "$SO_LINE"
fi

# ---------------------------------------------------------------- table

PCT=$(awk -v a="$TP_RATE" -v b="$WRK_RPS" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
printf '\n'
say "hookbridge bench ($(nproc) cores, loopback, $BROKER; 1 subscription to every event type, one event per POST; dispatcher fetch.wait.max.ms=$FETCH_WAIT_MS; load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-44s %s\n' \
  "throughput, first to last POST" "$TP_RATE deliveries/s ($TP_POSTS POSTs in ${TP_SPAN}s; $PCT of wrk)" \
  "throughput, producer start to last POST" "$E2E_RATE deliveries/s" \
  "dispatcher CPU during throughput" "$TP_CPU% of one core: $TP_PER_CPU deliveries per CPU-second; its loop waited for a CPU $TP_WAIT% of the time" \
  "machine during throughput" "$MACH_LINE" \
  "reference client (bench_curl_ref, 32 conns)" "$REF_RPS requests/s, $REF_PER_CPU per CPU-second" \
  "efficiency: dispatcher / reference" "$RATIO (per CPU-second)" \
  "HTTP engine alone (bench_http, 32 conns)" "$ENG_RPS requests/s, $ENG_PER_CPU per CPU-second: $ENG_RATIO of the reference" \
  "PostgreSQL CPU per logged attempt" "$PG_US us ($PG_CLIENT_US in client backends; ${PG_CPU_S} CPU-s for $((ROWS - ROWS0)) attempts)" \
  "latency, produce -> POST at $RATE/s" "p50 $P50 ms  p90 $P90 ms  p99 $P99 ms  max $PMAX ms ($LAT_N events)" \
  "ceiling: wrk -t1 -c32 -d5s, 900-byte POST" "$WRK_RPS requests/s" \
  "dispatcher memory after the run" "VmHWM $((HWM / 1024)) MiB, VmRSS $((RSS / 1024)) MiB" \
  "scale-out: two replicas, first to last POST" "$SO_LINE"
cat <<'EOF'
  latency: nginx's $msec when it answered the POST carrying the event (found by its
  webhook-id, derived from the event uuid and subscription id) minus the event's
  `published` time, set by the producer when it produced the event (ms resolution)
EOF

PG_TARGET=$(awk -v b="$PG_BASELINE_US" 'BEGIN { printf "%.1f", b / 2 }')
result "throughput, first to last POST (deliveries/s)" "$TP_RATE" ">= 20000" "$(met 'a >= 20000' "$TP_RATE")"
result "dispatcher CPU; its loop waiting for a CPU (% of the phase)" "$TP_CPU% of one core; $TP_WAIT%" "(shown)"
result "machine during throughput (cores)" "$MACH_LINE" "(shown)"
result "efficiency: per CPU-second, dispatcher / reference client" \
  "$RATIO ($TP_PER_CPU vs $REF_PER_CPU)" ">= 0.7" "$(met 'a >= 0.7' "$RATIO")"
result "HTTP engine alone (bench_http) per CPU-second / reference" "$ENG_RATIO ($ENG_PER_CPU)" "(shown)"
result "PostgreSQL CPU per logged attempt (us; in client backends)" "$PG_US; $PG_CLIENT_US" \
  "<= $PG_TARGET (half of main's $PG_BASELINE_US)" \
  "$(met 'a <= b' "$PG_US" "$PG_TARGET")"
result "latency p99 produce->POST at $RATE/s (ms)" "$P99" "<= 20" "$(met 'a <= 20' "$P99")"
if [ "$SCALEOUT" = 1 ]; then
  result "scale-out: one -> two replicas (deliveries/s)" "$TP_RATE -> $SO_RATE" "two > one" \
    "$(met 'b > a' "$TP_RATE" "$SO_RATE")"
fi
result "ceiling: wrk -t1 -c32 (requests/s)" "$WRK_RPS" "(reference)"
