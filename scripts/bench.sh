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
#               (ms) per event, to see when a slow one was slow
#   ceiling     wrk -t1 -c32 -d5s POSTing a 900-byte body to the same endpoint
#   memory      the dispatcher's VmHWM / VmRSS after the run
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

EVENTS=${BENCH_EVENTS:-20000}
RATE=${BENCH_RATE:-2000}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-5}
FETCH_WAIT_MS=${BENCH_FETCH_WAIT_MS:-10}
WARMUP=50
STALL_SECONDS=20 # a phase gives up when no delivery completes for this long

for tool in nginx wrk kcat curl jq psql; do
  command -v "$tool" >/dev/null || die "$tool is missing (make deps installs it)"
done
for p in hookbridge-devbroker hookbridge-migrate hookbridge-dispatcher hookbridge-producer; do
  [ -x "$BIN/$p" ] || die "$BIN/$p is missing (run make)"
done

now_ms() { date +%s%3N; }

stack_init hookbridge-bench
B=$STACK_DIR

# ---------------------------------------------------------------- the stack

say "starting PostgreSQL"
stack_start_postgres
# Each dev-broker partition keeps only ~5 MiB: enough partitions that no event
# of this run is trimmed before the dispatcher and the read-back consume it.
TOTAL=$((WARMUP + EVENTS + RATE * LAT_SECONDS))
PARTITIONS=$(((TOTAL + 3999) / 4000))
[ "$PARTITIONS" -ge 6 ] || PARTITIONS=6
if [ "${KAFKA:-devbroker}" = apache ]; then # KAFKA=apache: the same on Apache Kafka
  say "starting Apache Kafka (one KRaft node) and creating the topics"
  stack_start_kafka 1
  HOOKBRIDGE_TOPIC_PARTITIONS=$PARTITIONS stack_create_topics >/dev/null
else
  say "starting the embedded Kafka broker"
  stack_start_devbroker --partitions "$PARTITIONS"
fi
say "applying migrations"
stack_migrate >/dev/null

say "starting nginx"
stack_start_nginx 204 || die "nginx did not start"
URL=$STACK_NGINX_URL
NGINX_LOG=$STACK_NGINX_LOG

# The dev broker holds a Fetch that finds no data for the whole fetch.wait.max.ms
# (librdkafka default 500 ms) even when data arrives meanwhile; a real broker
# answers as soon as there is data. A short wait keeps that artefact of the dev
# broker out of the latency figures (BENCH_FETCH_WAIT_MS=500 shows it).
say "starting the dispatcher (fetch.wait.max.ms=$FETCH_WAIT_MS)"
stack_start_dispatcher HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS="$FETCH_WAIT_MS"
stack_wait_dispatcher_ready 30 || die "the dispatcher did not become ready"
metric() { # metric NAME{LABELS} -> value (0 when absent)
  curl -fs "http://$STACK_DISPATCHER_HTTP/metrics" |
    awk -v m="$1" '$1 == m { v = $2 } END { printf "%d\n", v + 0 }'
}
finished() { # deliveries finished in any way
  curl -fs "http://$STACK_DISPATCHER_HTTP/metrics" |
    awk '$1 ~ /^hookbridge_deliveries_total\{/ { v += $2 } END { printf "%d\n", v + 0 }'
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
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$STACK_DISPATCHER_PID/stat"; }

say "warm-up: $WARMUP events (consumer group join, connections)"
produce --generate "$WARMUP" >/dev/null
wait_finished "$WARMUP" || die "the warm-up events were not delivered"

# ---------------------------------------------------------------- throughput

say "throughput: $EVENTS events, produced as fast as the producer can"
BASE=$(finished)
FAILED0=$(metric 'hookbridge_deliveries_total{outcome="failed"}')
OFF1=$(log_size)
CPU1=$(cpu_ticks)
T1=$(now_ms)
produce --generate "$EVENTS"
T_PRODUCED=$(now_ms)
TP_OK=1
wait_finished $((BASE + EVENTS)) || TP_OK=0
T2=$(now_ms)
CPU2=$(cpu_ticks)
OFF2=$(log_size)
read -r TP_POSTS TP_SPAN TP_RATE < <(tail -c +$((OFF1 + 1)) "$NGINX_LOG" | head -c $((OFF2 - OFF1)) |
  awk '$2 == "POST" { n++; if (!f || $1 < f) f = $1; if ($1 > l) l = $1 }
       END { s = l - f; printf "%d %.3f %.0f\n", n, s, (s > 0 ? (n - 1) / s : 0) }')
E2E_RATE=$(awk -v n="$TP_POSTS" -v ms=$((T2 - T1)) 'BEGIN { printf "%.0f", n * 1000 / ms }')
CLK_TCK=$(getconf CLK_TCK)
TP_CPU=$(awk -v t=$((CPU2 - CPU1)) -v hz="$CLK_TCK" -v ms=$((T2 - T1)) \
  'BEGIN { printf "%.0f", 100 * t / hz / (ms / 1000) }')
TP_FAILED=$(($(metric 'hookbridge_deliveries_total{outcome="failed"}') - FAILED0))
echo "$TP_POSTS POSTs in ${TP_SPAN}s from first to last: $TP_RATE deliveries/s" \
  "(produce took $((T_PRODUCED - T1)) ms; $((T2 - T1)) ms from producer start to the last delivery," \
  "$E2E_RATE/s; dispatcher CPU $TP_CPU% of one core; $TP_FAILED failed)"
[ "$TP_OK" = 1 ] || echo "warning: not every delivery finished" >&2

# Let the dispatcher finish writing the delivery log before the next phase.
WANT_ROWS=$((WARMUP + EVENTS))
for _ in $(seq 300); do
  ROWS=$(stack_psql -At -c "SELECT count(*) FROM hookbridge.delivery_attempts")
  [ "$ROWS" -ge "$WANT_ROWS" ] && break
  sleep 0.1
done
T_LOGGED=$(now_ms)
echo "delivery log: $ROWS of $WANT_ROWS attempts written $((T_LOGGED - T2)) ms after the last delivery"

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
  "/proc/$STACK_DISPATCHER_PID/status")

# ---------------------------------------------------------------- table

PCT=$(awk -v a="$TP_RATE" -v b="$WRK_RPS" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
printf '\n'
say "hookbridge bench ($(nproc) cores, loopback; 1 subscription to every event type, one event per POST; dispatcher fetch.wait.max.ms=$FETCH_WAIT_MS)"
printf '  %-44s %s\n' \
  "throughput, first to last POST" "$TP_RATE deliveries/s ($TP_POSTS POSTs in ${TP_SPAN}s; $PCT of wrk)" \
  "throughput, producer start to last POST" "$E2E_RATE deliveries/s" \
  "dispatcher CPU during throughput" "$TP_CPU% of one core" \
  "latency, produce -> POST at $RATE/s" "p50 $P50 ms  p90 $P90 ms  p99 $P99 ms  max $PMAX ms ($LAT_N events)" \
  "ceiling: wrk -t1 -c32 -d5s, 900-byte POST" "$WRK_RPS requests/s" \
  "dispatcher memory after the run" "VmHWM $((HWM / 1024)) MiB, VmRSS $((RSS / 1024)) MiB"
cat <<'EOF'
  latency: nginx's $msec when it answered the POST carrying the event (found by its
  webhook-id, derived from the event uuid and subscription id) minus the event's
  `published` time, set by the producer when it produced the event (ms resolution)
EOF
