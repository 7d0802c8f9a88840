#!/usr/bin/env bash
# make bench: slow receivers, and memory with 10,000 requests in flight.
#
#   scripts/bench_slow.sh slow|memory
#
# A throwaway PostgreSQL, the embedded broker, the dispatcher and
# tests/bench/slow_receiver.py (asyncio, one thread), which listens on many
# loopback addresses (127.77.0.x: each a distinct endpoint host) and answers
# every POST with 204 after a delay. One subscription per address, each to
# every event type, so one event makes one delivery per address.
#
#   slow    delay BENCH_SLOW_DELAY (default 0.2 s), HOOKBRIDGE_MAX_IN_FLIGHT
#           BENCH_SLOW_IN_FLIGHT (default 512, the default setting), 16 hosts
#           with 64 connections each (so the in-flight limit is what binds);
#           BENCH_SLOW_DELIVERIES (default 20,000) deliveries. Throughput is
#           the receiver's first to last answer; the ceiling is
#           MAX_IN_FLIGHT / delay; the report gives the fraction reached, the
#           dispatcher's RSS while the requests are in flight and its growth
#           per in-flight request (RSS then minus RSS before, both VmRSS).
#   memory  delay BENCH_MEMORY_DELAY (default 5 s: long enough that 10,000
#           requests are outstanding at once although the receiver accepts a
#           few thousand per second), HOOKBRIDGE_MAX_IN_FLIGHT=BENCH_MEMORY_IN_FLIGHT
#           (default 10,000), 100 hosts with 100 connections each,
#           HOOKBRIDGE_MAX_QUEUE_WAIT=60s (no request leaves its queue for the
#           delay tier); 1.1 x MAX_IN_FLIGHT deliveries. Samples the
#           dispatcher's VmRSS at the moment the most requests are in flight
#           (sent and not yet answered: the receiver's count) and its VmHWM.
#
# Progress is read from the receiver (GET /stats), not from the dispatcher's
# /metrics: its libmicrohttpd polls with select() and refuses a connection whose
# socket is at or above FD_SETSIZE (1024), which it is with thousands of
# delivery connections open ("httpd: New connection socket descriptor (N) is not
# less than FD_SETSIZE" in its log); the report says n/a for what it could not read.
#
# Everything started is stopped at exit (also on failure or Ctrl-C).
# BENCH_RESULTS=FILE appends the figures for scripts/bench_all.sh's summary.
# shellcheck disable=SC2119 # stack_* functions take optional arguments, not the script's
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/local/stack.sh
. deploy/local/stack.sh
# shellcheck source=scripts/bench_lib.sh
. scripts/bench_lib.sh
BIN=$STACK_BIN
MODE=${1:-slow}

case $MODE in
slow)
  DELAY=${BENCH_SLOW_DELAY:-0.2}
  IN_FLIGHT=${BENCH_SLOW_IN_FLIGHT:-512}
  HOSTS=16
  HOST_CONNS=64
  DELIVERIES=${BENCH_SLOW_DELIVERIES:-20000}
  QUEUE_WAIT=5s
  ;;
memory)
  DELAY=${BENCH_MEMORY_DELAY:-5}
  IN_FLIGHT=${BENCH_MEMORY_IN_FLIGHT:-10000}
  HOSTS=100
  HOST_CONNS=$(((IN_FLIGHT + HOSTS - 1) / HOSTS))
  DELIVERIES=$((IN_FLIGHT * 11 / 10))
  QUEUE_WAIT=60s
  ;;
*) die "usage: bench_slow.sh slow|memory" ;;
esac
EVENTS=$(((DELIVERIES + HOSTS - 1) / HOSTS))
DELIVERIES=$((EVENTS * HOSTS))
for p in hookbridge-devbroker hookbridge-migrate hookbridge-dispatcher hookbridge-producer; do
  [ -x "$BIN/$p" ] || die "$BIN/$p is missing (run make)"
done

stack_init "hookbridge-bench-$MODE"
B=$STACK_DIR

say "$MODE receivers: starting PostgreSQL, the embedded broker, the receiver ($HOSTS hosts, ${DELAY}s)"
stack_start_postgres
stack_start_devbroker --partitions 6
stack_migrate >/dev/null
mapfile -t ADDRS < <(bench_loopback_addresses 127.77 "$HOSTS")
PORT= # set by free_port
free_port PORT
stack_spawn receiver /usr/bin/python3 tests/bench/slow_receiver.py "$PORT" "$DELAY" "${ADDRS[@]}"
RECEIVER_PID=$STACK_LAST_PID
STATS_URL="http://${ADDRS[0]}:$PORT/stats"
for _ in $(seq 100); do
  curl -fs -o /dev/null "$STATS_URL" && break
  kill -0 "$RECEIVER_PID" 2>/dev/null || break
  sleep 0.1
done
curl -fs -o /dev/null "$STATS_URL" || { stack_log_tail receiver; die "the slow receiver did not start"; }
stats() { curl -fs "$STATS_URL${1:-}"; }

say "starting the dispatcher: HOOKBRIDGE_MAX_IN_FLIGHT=$IN_FLIGHT, $HOST_CONNS connections per host"
stack_start_dispatcher HOOKBRIDGE_MAX_IN_FLIGHT="$IN_FLIGHT" HOOKBRIDGE_MAX_HOST_CONNECTIONS="$HOST_CONNS" \
  HOOKBRIDGE_MAX_HOST_QUEUE=$((DELIVERIES / HOSTS + 100)) HOOKBRIDGE_MAX_QUEUE_WAIT="$QUEUE_WAIT" \
  HOOKBRIDGE_REQUEST_TIMEOUT=60s HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS=10
D_PID=$STACK_DISPATCHER_PID
D_HTTP=$STACK_DISPATCHER_HTTP
stack_wait_dispatcher_ready 30 || die "the dispatcher did not become ready"

TYPES=$(grep -v '^#' schema/event_types.txt | cut -f1 | grep -v '^$' | paste -sd,)
say "subscribing $HOSTS endpoints (one per address) to every event type"
BENCH_N=$HOSTS bench_subscribe_many "$MODE" \
  "'http://127.77.' || ((i - 1) / 250) || '.' || ((i - 1) % 250 + 1) || ':$PORT/hook'" "$TYPES" ||
  die "the subscriptions were not verified"
for _ in $(seq 100); do
  [ "$(bench_metric "$D_HTTP" hookbridge_subscriptions)" -ge "$HOSTS" ] && break
  sleep 0.1
done
finished() { bench_metric "$D_HTTP" hookbridge_deliveries_total; }

# Warm-up: the consumer group join and one connection per host.
"$BIN/hookbridge-producer" --generate 2 >/dev/null
for _ in $(seq 300); do
  [ "$(finished)" -ge $((2 * HOSTS)) ] && break
  sleep 0.1
done
[ "$(finished)" -ge $((2 * HOSTS)) ] || die "the warm-up was not delivered"
read -r _ RSS0 < <(bench_rss "$D_PID")
stats '?reset=1' >/dev/null

say "$MODE: $EVENTS events, $DELIVERIES deliveries to $HOSTS hosts answering after ${DELAY}s"
DIVERTED0=$(bench_metric "$D_HTTP" hookbridge_endpoint_busy_total)
"$BIN/hookbridge-producer" --generate "$EVENTS" >"$B/producer.out" 2>&1 ||
  { cat "$B/producer.out"; die "the producer failed"; }
# Sample while the deliveries run: the most requests outstanding at the receiver
# (sent, not yet answered), the RSS then, and the most deliveries the dispatcher
# counts in flight (hookbridge_requests_in_flight: started or waiting for a connection).
PEAK=0 PEAK_RSS=$RSS0 PEAK_GAUGE=0 LAST=-1 STALL=0
while :; do
  read -r DONE INF < <(stats | jq -r '[.served, .pending] | @tsv')
  [ "$DONE" -ge "$DELIVERIES" ] && break
  read -r _ RSS < <(bench_rss "$D_PID")
  GAUGE=$(bench_metric "$D_HTTP" hookbridge_requests_in_flight)
  if [ "$GAUGE" = n/a ]; then
    PEAK_GAUGE="n/a (/metrics did not answer)"
  elif [[ $PEAK_GAUGE =~ ^[0-9]+$ ]] && [ "$GAUGE" -gt "$PEAK_GAUGE" ]; then
    PEAK_GAUGE=$GAUGE
  fi
  if [ "$INF" -gt "$PEAK" ]; then
    PEAK=$INF
    PEAK_RSS=$RSS
  fi
  if [ "$DONE" = "$LAST" ]; then
    STALL=$((STALL + 1))
    [ "$STALL" -lt 300 ] || {
      echo "no progress for 30 s: $DONE of $DELIVERIES finished" >&2
      break
    }
  else
    STALL=0 LAST=$DONE
  fi
  sleep 0.1
done
read -r HWM RSS_END < <(bench_rss "$D_PID")
STATS=$(stats)
DIVERTED=$(bench_metric "$D_HTTP" hookbridge_endpoint_busy_total)
[ "$DIVERTED" = n/a ] || DIVERTED=$((DIVERTED - DIVERTED0))
read -r SERVED RATE MAX_PENDING < <(echo "$STATS" | jq -r \
  '[.served, (if .last > .first then (.served - 1) / (.last - .first) else 0 end | floor), .max_pending] | @tsv')
CEILING=$(awk -v n="$IN_FLIGHT" -v d="$DELAY" 'BEGIN { printf "%.0f", n / d }')
FRACTION=$(awk -v r="$RATE" -v c="$CEILING" 'BEGIN { printf "%.2f", (c > 0 ? r / c : 0) }')
PER_REQ=$(awk -v a="$PEAK_RSS" -v b="$RSS0" -v n="$PEAK" 'BEGIN { printf "%.1f", (n > 0 ? (a - b) / n : 0) }')

printf '\n'
say "hookbridge $MODE-receiver bench ($(nproc) cores, loopback, devbroker; $HOSTS hosts answering after ${DELAY}s; load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-44s %s\n' \
  "deliveries answered" "$SERVED of $DELIVERIES ($DIVERTED handed to the delay tier unsent)" \
  "throughput, first to last answer" "$RATE deliveries/s" \
  "ceiling: MAX_IN_FLIGHT / delay" "$IN_FLIGHT / ${DELAY}s = $CEILING/s: reached $FRACTION" \
  "most requests in flight" "$PEAK sampled at the receiver (at most $MAX_PENDING); $PEAK_GAUGE deliveries in the dispatcher's gauge" \
  "dispatcher VmRSS: idle, with the most in flight" "$((RSS0 / 1024)) MiB, $((PEAK_RSS / 1024)) MiB: $PER_REQ KiB per in-flight request" \
  "dispatcher VmHWM, VmRSS after" "$((HWM / 1024)) MiB, $((RSS_END / 1024)) MiB"

if [ "$MODE" = slow ]; then
  bench_result slow "slow receivers (${DELAY}s): throughput / (MAX_IN_FLIGHT / delay)" \
    "$FRACTION ($RATE of $CEILING/s)" "approach 1"
  bench_result slow "slow receivers: dispatcher RSS, per in-flight request" \
    "$((PEAK_RSS / 1024)) MiB, $PER_REQ KiB ($PEAK in flight)" "(shown)"
else
  bench_result memory "dispatcher RSS with $PEAK requests in flight (VmRSS, VmHWM)" \
    "$((PEAK_RSS / 1024)) MiB, $((HWM / 1024)) MiB; $PER_REQ KiB per request" "(shown; $IN_FLIGHT wanted)"
fi
