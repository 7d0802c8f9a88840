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
#   catch-up    BENCH_EVENTS events produced while the dispatcher is stopped;
#               it starts again and drains them: first to last POST (the
#               throughput phase's producer shares the 2 cores; this one not)
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
#               multi, 32 keep-alive connections, POSTs with a delivery's
#               header lines and the mean body of the throughput phase's
#               deliveries, the same nginx,
#               BENCH_REF_SECONDS, default 5) and their ratio (issue 12: >= 0.7);
#               the same ratio for the catch-up phase from its first POST to its
#               last (tests/bench/cpu_sampler.py: every thread's run time every
#               5 ms, so the start-up and the group join are left out), where the
#               dispatcher, like the reference, always has work and no producer
#               shares the cores; and how often nginx went to sleep per request
#               in the throughput phase and in the reference run (each sleep is a
#               wake-up the sender pays for)
#               the reference again with mimalloc preloaded, the allocator the
#               programs link (shown, to tell the allocator's share of the ratio),
#               and with two short header lines instead of a delivery's (shown:
#               the reference until session 31);
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
#   scale-out   BENCH_SCALEOUT_EVENTS (default BENCH_EVENTS) through one dispatcher
#               capped at BENCH_SCALEOUT_CPU of a core (default 0.3, a cgroup; 0
#               skips this), then, once a second replica has joined the same
#               consumer group and both own half of the partitions, through two
#               replicas capped alike; BENCH_SCALEOUT_ROUNDS (default 2) such rounds;
#               issue 12: two >= 1.6 x one (nothing serialises across replicas);
#               then through the two without a budget, next to the throughput
#               phase's one replica (BENCH_SCALEOUT=0 skips all of it; details and
#               per-replica figures: the scale-out section below)
#
# BENCH_RESULTS=FILE appends the figures as "broker<TAB>figure<TAB>value<TAB>target<TAB>met"
# lines for scripts/bench_all.sh's summary table. BENCH_PERF=FILE records
# `perf record -g` of the dispatcher during the throughput phase into FILE
# (perf's overhead then lowers that phase's figures); BENCH_PERF_ARGS (default -g)
# replaces perf's options, e.g. "--call-graph dwarf,16384 -F 999" for whole stacks
# (the programs have no frame pointers, so -g stops at libc). BENCH_PERF_STAT=FILE
# (without BENCH_PERF) writes `perf stat --per-thread` counters of the phase
# instead: CPU, context switches, system calls and page faults of every thread;
# BENCH_PERF_TRACE=FILE `perf trace -s`: every thread's system calls by name.
#
# Everything runs on loopback; everything started is stopped at exit (also on
# failure or Ctrl-C). Any HOOKBRIDGE_* setting in the environment reaches the
# dispatcher (e.g. HOOKBRIDGE_MAX_IN_FLIGHT, HOOKBRIDGE_MAX_HOST_CONNECTIONS).
# shellcheck disable=SC2119 # stack_* functions take optional arguments, not the script's
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/local/stack.sh
. deploy/local/stack.sh
# KAFKA=apache: the broker's JVM with the collector and heap of Apache Kafka's
# own start scripts (deploy/local/kafka.sh KAFKA_JVM=server: G1, a fixed
# heap), not the tests' small one, whose full collections stopped the broker
# for 61 ms during the latency phase. But only the C1 compiler: a fresh
# broker's C2 compiler kept 0.3-0.6 of a core of these 2 busy for minutes,
# during every measured phase, which a long-running broker on its own
# machine does not pay.
export KAFKA_JVM=${KAFKA_JVM:-server}
export KAFKA_JVM_OPTS="-XX:TieredStopAtLevel=1 ${KAFKA_JVM_OPTS:-}"
# shellcheck source=scripts/bench_lib.sh
. scripts/bench_lib.sh
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
# Apache Kafka is warmed up with more: its JVM compiles the broker's code
# during the first thousands of messages
WARMUP=50 # and the scale-out's warm-ups
if [ "${KAFKA:-devbroker}" = apache ]; then
  FIRST_WARMUP=${BENCH_WARMUP:-5000}
else
  FIRST_WARMUP=${BENCH_WARMUP:-$WARMUP}
fi
STALL_SECONDS=20 # a phase gives up when no delivery completes for this long
REF_SECONDS=${BENCH_REF_SECONDS:-5}
# PostgreSQL CPU per logged attempt measured on main at 734d258 (before issue 12's
# work) with this script (both brokers): the target is half of it.
PG_BASELINE_US=${BENCH_PG_BASELINE_US:-31}
SCALEOUT=${BENCH_SCALEOUT:-1}
SCALEOUT_CPU=${BENCH_SCALEOUT_CPU:-0.3}
SO_EVENTS=${BENCH_SCALEOUT_EVENTS:-$EVENTS}
SO_ROUNDS=${BENCH_SCALEOUT_ROUNDS:-2}
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
# (Apache Kafka trims nothing: its long warm-up does not add partitions.)
SIZED_WARMUP=$FIRST_WARMUP
[ "${KAFKA:-devbroker}" != apache ] || SIZED_WARMUP=$WARMUP
TOTAL=$((SIZED_WARMUP + EVENTS + RATE * LAT_SECONDS + (SCALEOUT ? (6 * SO_ROUNDS + 1) * WARMUP + (2 * SO_ROUNDS + 1) * SO_EVENTS : 0)))
PARTITIONS=$(((TOTAL + 3999) / 4000))
[ "$PARTITIONS" -ge 6 ] || PARTITIONS=6
# An even number: the second replica gets as many partitions as the first.
PARTITIONS=$(((PARTITIONS + 1) / 2 * 2))
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

say "warm-up: $FIRST_WARMUP events (consumer group join, connections$([ "${KAFKA:-devbroker}" != apache ] || echo ", the broker JVM's compiler"))"
produce --generate "$FIRST_WARMUP" >/dev/null
wait_finished "$FIRST_WARMUP" || die "the warm-up events were not delivered"

# ---------------------------------------------------------------- throughput

PERF_PID=""
SAMPLER_PID=""
PGW_PID=""
stack_on_exit() { # a perf record or a scale-out sampler still running when the script fails
  if [ -n "$PERF_PID" ] && kill -0 "$PERF_PID" 2>/dev/null; then
    kill -INT "$PERF_PID"
    wait "$PERF_PID" 2>/dev/null
  fi
  so_stop_samplers 2>/dev/null || true
  bench_cpu_cap_cleanup # the replicas leave the scale-out's cgroups before they are stopped
}
say "throughput: $EVENTS events, produced as fast as the producer can"
BASE=$(finished)
FAILED0=$(metric 'hookbridge_deliveries_total{outcome="failed"}')
for _ in $(seq 100); do # the warm-up's attempts in the log first: they are not this phase's
  ROWS0=$(stack_psql -At -c "SELECT count(*) FROM hookbridge.delivery_attempts")
  [ "$ROWS0" -ge "$FIRST_WARMUP" ] && break
  sleep 0.1
done
if [ -n "${BENCH_PERF:-}" ]; then
  # shellcheck disable=SC2086 # BENCH_PERF_ARGS is a list of perf options
  perf record -q ${BENCH_PERF_ARGS:--g} -p "$D1_PID" -o "$BENCH_PERF" >"$B/perf.log" 2>&1 &
  PERF_PID=$!
  sleep 0.5 # perf attaches
elif [ -n "${BENCH_PERF_STAT:-}" ]; then
  # counters per thread, system calls and context switches included (cheap:
  # counted in the kernel, no samples)
  perf stat --per-thread -e task-clock,context-switches,raw_syscalls:sys_enter,page-faults \
    -p "$D1_PID" -o "$BENCH_PERF_STAT" >"$B/perf.log" 2>&1 &
  PERF_PID=$!
  sleep 0.5
elif [ -n "${BENCH_PERF_TRACE:-}" ]; then # system calls by name, per thread, with times
  perf trace -s -p "$D1_PID" -o "$BENCH_PERF_TRACE" >"$B/perf.log" 2>&1 &
  PERF_PID=$!
  sleep 1
fi
# "tid name ticks" of every thread of the process $1: "main" for its main thread
# (the delivery loop), else the thread's name (no spaces here: librdkafka's
# rdk:main, rdk:broker1, ...; our other threads, the delivery log's writer, the
# lag and store helpers, carry the program's name)
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    sed 's/^[0-9]* (\([^)]*\)) /\1 /' "$t/stat" 2>/dev/null |
      awk -v tid="${t##*/}" -v pid="$1" '{ print tid, (tid == pid ? "main" : $1), $13 + $14 }'
  done
}
# thread_delta BEFORE AFTER N -> microseconds of CPU per one of N deliveries, by
# thread name (threads of one name summed; librdkafka's brokers by kind)
thread_delta() {
  awk -v n="$3" -v hz="$CLK_TCK" 'NR == FNR { was[$1] = $3; next }
    { k = $2; sub(/[0-9]+$/, "", k); d[k] += $3 - ($1 in was ? was[$1] : 0) }
    END { for (k in d) if (d[k] > 0) printf "%s %.1f us; ", k, (n > 0 ? 1e6 * d[k] / hz / n : 0) }' "$1" "$2"
}
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
# Times nginx's processes went to sleep (voluntary context switches): one per
# request means each request woke an idle receiver (on this guest a wake-up
# of another CPU costs the sender dearly); the reference client's bursts keep
# it awake.
tree_sleeps() {
  local p n=0 v
  for p in $(tree_pids "$1"); do
    v=$(awk '/^voluntary_ctxt_switches:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
    n=$((n + ${v:-0}))
  done
  echo "$n"
}
reaped_ticks() { sed 's/^.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }
OFF1=$(log_size)
MACH1=$(machine_ticks)
NGX1=$(tree_ticks "$NGINX_PID")
NGS1=$(tree_sleeps "$NGINX_PID")
BRK1=$(tree_ticks "$BROKER_PID")
KIDS1=$(reaped_ticks)
pg_cpu_snapshot "$B/pg.cpu1m"
CPU1=$(cpu_ticks "$D1_PID")
thread_ticks "$D1_PID" >"$B/threads1"
WAIT1=$(awk '{ print $2 }' "/proc/$D1_PID/schedstat")
pg_cpu_snapshot "$B/pg.cpu1"
T1=$(now_ms)
produce --generate "$EVENTS"
T_PRODUCED=$(now_ms)
TP_OK=1
wait_finished $((BASE + EVENTS)) || TP_OK=0
T2=$(now_ms)
CPU2=$(cpu_ticks "$D1_PID")
thread_ticks "$D1_PID" >"$B/threads2"
MACH2=$(machine_ticks)
NGX2=$(tree_ticks "$NGINX_PID")
NGS2=$(tree_sleeps "$NGINX_PID")
BRK2=$(tree_ticks "$BROKER_PID")
KIDS2=$(reaped_ticks)
pg_cpu_snapshot "$B/pg.cpu2m"
WAIT2=$(awk '{ print $2 }' "/proc/$D1_PID/schedstat")
OFF2=$(log_size)
if [ -n "$PERF_PID" ]; then
  kill -INT "$PERF_PID"
  wait "$PERF_PID" || true
  PERF_PID=""
  echo "perf: ${BENCH_PERF:-${BENCH_PERF_STAT:-$BENCH_PERF_TRACE}}"
fi
read -r TP_POSTS TP_SPAN TP_RATE < <(post_rate "$OFF1" "$OFF2")
# The mean body of the phase's deliveries (nginx's $content_length): the size
# the reference client and the engine alone POST below, so that all three
# send the same requests (about 1,650 bytes for the generated events).
BODY_BYTES=$(tail -c +$((OFF1 + 1)) "$NGINX_LOG" | head -c $((OFF2 - OFF1)) | bench_mean_body)
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
echo "dispatcher threads, CPU per delivery: $(thread_delta "$B/threads1" "$B/threads2" "$TP_POSTS")"
read -r PGM_TICKS _ < <(pg_cpu_delta "$B/pg.cpu1m" "$B/pg.cpu2m")
MACH_LINE=$(awk -v m=$((MACH2 - MACH1)) -v d=$((CPU2 - CPU1)) -v p="$PGM_TICKS" -v x=$((NGX2 - NGX1)) \
  -v k=$((BRK2 - BRK1)) -v c=$((KIDS2 - KIDS1)) -v ms=$((T2 - T1)) -v hz="$CLK_TCK" \
  -v cores="$(nproc)" 'BEGIN {
    s = ms / 1000 * hz # clock ticks per core over the phase
    printf "%.2f of %d cores busy: dispatcher %.2f, PostgreSQL %.2f, nginx %.2f, broker %.2f, producer and watchers %.2f, the rest %.2f",
      m / s, cores, d / s, p / s, x / s, k / s, c / s, (m - d - p - x - k - c) / s }')
echo "machine during throughput: $MACH_LINE"
TP_SLEEPS=$(awk -v s=$((NGS2 - NGS1)) -v n="$TP_POSTS" 'BEGIN { printf "%.2f", (n > 0 ? s / n : 0) }')
echo "nginx went to sleep $TP_SLEEPS times per delivery"
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

# ---------------------------------------------------------------- catch-up
#
# The same number of events waiting in the topic while the dispatcher is down
# (a deploy, an outage), then it starts again and catches up: first to last
# POST. Next to the throughput phase, where the producer runs beside the
# dispatcher on the same 2 cores (in production it runs elsewhere), this is
# the dispatcher draining a backlog with PostgreSQL, nginx and the broker.

say "catch-up: $EVENTS events produced while the dispatcher is stopped, then drained"
read -r HWM0 < <(awk '/^VmHWM:/ { print $2 }' "/proc/$D1_PID/status")
kill -TERM "$D1_PID"
for _ in $(seq 300); do
  kill -0 "$D1_PID" 2>/dev/null || break
  sleep 0.1
done
! kill -0 "$D1_PID" 2>/dev/null || die "the dispatcher did not stop"
produce --generate "$EVENTS"
OFF_CU1=$(log_size)
stack_start_dispatcher HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS="$FETCH_WAIT_MS"
D1_PID=$STACK_DISPATCHER_PID
D1_HTTP=$STACK_DISPATCHER_HTTP
DISPATCHERS=("$D1_HTTP")
"$PY" tests/bench/cpu_sampler.py "$D1_PID" "$B/cu.cpu" &
CU_SAMPLER_PID=$!
T_CU1=$(now_ms)
stack_wait_dispatcher_ready 30 || die "the dispatcher did not become ready again"
CU_OK=1
wait_finished "$EVENTS" || CU_OK=0
T_CU2=$(now_ms)
CU_TICKS=$(cpu_ticks "$D1_PID")
OFF_CU2=$(log_size)
sleep 0.05 # a sample after the last POST
touch "$B/cu.cpu.stop"
wait "$CU_SAMPLER_PID" || true
read -r CU_POSTS CU_SPAN CU_RATE < <(post_rate "$OFF_CU1" "$OFF_CU2")
# The dispatcher's CPU from its first POST to its last, start-up left out: the
# samples just before the first and just after the last (nginx's $msec and the
# sampler's clock are the same wall clock). Deliveries per CPU-second of a
# dispatcher with a backlog, nothing else on the cores but PostgreSQL, nginx and
# the broker: like the reference client, which always has 32 requests to make.
CU_SPAN_PER_CPU=$(tail -c +$((OFF_CU1 + 1)) "$NGINX_LOG" | head -c $((OFF_CU2 - OFF_CU1)) |
  awk '$2 == "POST" { n++; if (!f || $1 < f) f = $1; if ($1 > l) l = $1 }
       END { printf "P %.3f %.3f %d\n", f * 1000, l * 1000, n }' | cat - "$B/cu.cpu" |
  awk '$1 == "P" { f = $2; l = $3; n = $4; next }
       $1 <= f { c0 = $2 } $1 >= l && !c1 { c1 = $2 }
       END { printf "%.0f", (c1 > c0 ? n / ((c1 - c0) / 1e9) : 0) }')
CU_CPU_S=$(awk -v t="$CU_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
CU_PER_CPU=$(awk -v n="$CU_POSTS" -v c="$CU_CPU_S" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
CU_LINE="$CU_RATE deliveries/s ($CU_POSTS POSTs in ${CU_SPAN}s; $((T_CU2 - T_CU1)) ms from start, group join included; $CU_PER_CPU deliveries per CPU-second, start-up included; $CU_SPAN_PER_CPU from the first POST to the last)"
echo "catch-up: $CU_LINE"
[ "$CU_OK" = 1 ] || echo "warning: not every delivery of the catch-up finished" >&2
for _ in $(seq 300); do # its log rows written before the next phase
  CU_ROWS=$(stack_psql -At -c "SELECT count(*) FROM hookbridge.delivery_attempts")
  [ "$CU_ROWS" -ge $((WANT_ROWS + EVENTS)) ] && break
  sleep 0.1
done

# ---------------------------------------------------------------- reference client

say "reference: tests/bench/bench_curl_ref, one thread, 32 connections, $BODY_BYTES-byte POSTs (the deliveries' mean), ${REF_SECONDS}s"
NGS1=$(tree_sleeps "$NGINX_PID")
"$REF" "$URL" 32 "$REF_SECONDS" "$BODY_BYTES" >"$B/ref.out" || { cat "$B/ref.out"; die "bench_curl_ref failed"; }
NGS2=$(tree_sleeps "$NGINX_PID")
read -r REF_N _ REF_RPS REF_CPU_S REF_PER_CPU REF_FAILED <"$B/ref.out"
REF_SLEEPS=$(awk -v s=$((NGS2 - NGS1)) -v n="$REF_N" 'BEGIN { printf "%.2f", (n > 0 ? s / n : 0) }')
echo "nginx went to sleep $REF_SLEEPS times per request of the reference client ($TP_SLEEPS per delivery)"
RATIO=$(awk -v a="$TP_PER_CPU" -v b="$REF_PER_CPU" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
CU_RATIO=$(awk -v a="$CU_SPAN_PER_CPU" -v b="$REF_PER_CPU" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
echo "reference client: $REF_N requests, $REF_RPS/s, $REF_CPU_S CPU-seconds: $REF_PER_CPU requests" \
  "per CPU-second ($REF_FAILED failed); dispatcher / reference = $RATIO (throughput phase)," \
  "$CU_RATIO (catch-up, first to last POST)"
# The reference sends a delivery's header lines (tests/bench/bench_client.h);
# until session 31 it sent two short ones. That cheaper request, shown: curl
# builds the request a byte at a time, so the lines a delivery must carry are
# a fifth of libcurl's own instructions per request.
BENCH_REF_HEADERS=minimal "$REF" "$URL" 32 "$REF_SECONDS" "$BODY_BYTES" >"$B/ref-min.out" ||
  { cat "$B/ref-min.out"; die "bench_curl_ref with two header lines failed"; }
read -r _ _ REF_MIN_RPS _ REF_MIN_PER_CPU _ <"$B/ref-min.out"
REF_MIN_RATIO=$(awk -v a="$TP_PER_CPU" -v b="$REF_MIN_PER_CPU" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
REF_MIN_LINE="$REF_MIN_RPS requests/s, $REF_MIN_PER_CPU per CPU-second; dispatcher / it = $REF_MIN_RATIO"
echo "reference client with two short header lines: $REF_MIN_LINE"
# The programs allocate with mimalloc (the Makefile's ALLOC); the reference is
# a plain libcurl program on glibc's malloc. The same reference with mimalloc
# preloaded shows how much of the ratio the allocator alone makes.
REF_MI_LINE="- (the dispatcher is not linked with mimalloc: make ALLOC=glibc)"
MI_LIB=$(ldd "$BIN/hookbridge-dispatcher" | awk '/libmimalloc/ { print $3; exit }')
if [ -n "$MI_LIB" ]; then
  LD_PRELOAD=$MI_LIB "$REF" "$URL" 32 "$REF_SECONDS" "$BODY_BYTES" >"$B/ref-mi.out" ||
    { cat "$B/ref-mi.out"; die "bench_curl_ref with mimalloc failed"; }
  read -r _ _ REF_MI_RPS _ REF_MI_PER_CPU _ <"$B/ref-mi.out"
  REF_MI_RATIO=$(awk -v a="$TP_PER_CPU" -v b="$REF_MI_PER_CPU" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  REF_MI_LINE="$REF_MI_RPS requests/s, $REF_MI_PER_CPU per CPU-second; dispatcher / it = $REF_MI_RATIO"
fi
echo "reference client with mimalloc preloaded: $REF_MI_LINE"
# Our HTTP engine alone (lib/hb_http.c, the same requests with the webhook
# headers, nothing else): splits the gap between the dispatcher and the
# reference into the engine's share and everything else's.
"$ENGINE" "$URL" 32 "$REF_SECONDS" "$BODY_BYTES" >"$B/engine.out" || { cat "$B/engine.out"; die "bench_http failed"; }
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
[ "$HWM0" -le "$HWM" ] || HWM=$HWM0 # the high-water mark of both runs (catch-up restarted it)

# ---------------------------------------------------------------- scale-out
#
# Issue 12: "with 2 cores the point is that nothing serialises across replicas".
# Unconstrained, a second replica shares the same 2 cores with the first,
# PostgreSQL, nginx, the broker and the producer: the machine is the limit, and
# that figure says little about the design. So each replica gets the same fixed
# CPU budget (BENCH_SCALEOUT_CPU of one core, a cgroup: scripts/bench_lib.sh),
# small enough that one replica is CPU-bound at it while the rest of the machine
# has room to spare: two replicas then deliver close to twice what one does,
# unless something serialises them (the delivery log's rows and indexes in
# PostgreSQL, the consumer group, the broker). Order: BENCH_SCALEOUT_ROUNDS
# rounds of [one capped replica; a second joins (its join timed: start, ready,
# partitions owned); two capped replicas; the second leaves, but after the last
# round], so that the machine's drifting other load falls on both sides; then
# both budgets lifted, two unconstrained replicas (next to the throughput
# phase's one). Each phase's rate is taken from every replica's
# deliveries sampled every 0.1 s, over the window in which every replica still
# had events to deliver (so an uneven split of the partitions does not count
# as serialising), with first to last POST next to it; per replica: its share;
# in the window its rate, CPU, deliveries per CPU-second, and the unfinished
# deliveries and requests in flight it held (few: it waited for events; many
# while under its budget: it waited for a CPU or for nginx's answers); over the phase its CPU and the
# share of budget periods in which the cgroup throttled it (a replica at its
# budget is throttled in most), or without a budget its threads' wait for a
# CPU; its CPU when idle before the phase (a fixed cost per replica);
# PostgreSQL's CPU, and its client backends' wait events sampled every 20 ms
# (Lock:... or LWLock:... when the replicas' writes contend).

SO_RATE="-"
SO_LINE="skipped (BENCH_SCALEOUT=0)"
CAP_LINE="skipped (BENCH_SCALEOUT=0)"
CAP1_RATE="-"
CAP2_RATE="-"
CAP_RATIO="-"
CAP1_CPU=""
CAP2_CPU=""
JOIN_LINE="-"
SO_PIDS=("$D1_PID")
SO_CGS=("")
SAMPLER_PID=""
PGW_PID=""
replica_done() { # replica_done HOST:PORT -> deliveries finished by that replica
  curl -fs "http://$1/metrics" | awk '$1 ~ /^hookbridge_deliveries_total\{/ { v += $2 } END { printf "%d\n", v + 0 }'
}
runq_ns() { # the time the threads of process $1 waited for a CPU (ns; under a budget, throttled time too)
  cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ t += $2 } END { printf "%.0f\n", t + 0 }'
}
owned() { # owned LOG -> identity.events partitions the replica owns, from its log
  grep -oE '(assigned|revoking) [0-9]+ partition' "$1" |
    awk '$1 == "assigned" { n += $2 } $1 == "revoking" { n -= $2 } END { print n + 0 }'
}
# Every 0.1 s until FILE.stop exists: "T seconds", "D finished created in-flight"
# deliveries per replica (DISPATCHERS), "C utime+stime ticks" per replica (SO_PIDS). No process per
# replica: one curl for every /metrics, /proc read by bash.
so_sampler() {
  local out=$1 h p line f urls=()
  for h in "${DISPATCHERS[@]}"; do urls+=("http://$h/metrics"); done
  while [ ! -e "$out.stop" ]; do
    echo "T $EPOCHREALTIME"
    curl -s -w '\nEND\n' "${urls[@]}" |
      awk '$1 ~ /^hookbridge_deliveries_total\{/ { v += $2 }
           $1 ~ /^hookbridge_deliveries_created_total($|\{)/ { m += $2 }
           $1 ~ /^hookbridge_requests_in_flight($|\{)/ { f += $2 }
           $1 == "END" { print "D", v + 0, m + 0, f + 0; v = 0; m = 0; f = 0 }'
    for p in "${SO_PIDS[@]}"; do
      read -r line <"/proc/$p/stat"
      read -r -a f <<<"${line##*) }"
      echo "C $((f[11] + f[12]))"
    done
    sleep 0.1
  done >"$out"
}
# The wait events of PostgreSQL's active client backends every 20 ms, one NOTICE
# line each, until interrupted (10 minutes at most); a heavyweight-lock wait
# with the table its statement names (Lock:transactionid@hookbridge.delivery_attempts:
# waiting for another transaction inside that INSERT, its triggers included).
PGW_SQL="DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
  WHILE clock_timestamp() < t0 + interval '600 s' LOOP
    PERFORM pg_stat_clear_snapshot();
    RAISE NOTICE 'S %', (SELECT coalesce(string_agg(coalesce(wait_event_type || ':' || wait_event
        || CASE WHEN wait_event_type = 'Lock'
                THEN '@' || coalesce(substring(query from '(?:INSERT INTO|UPDATE|FROM) ([a-z_.]+)'), '?') ELSE '' END,
        'CPU'), ' '), '')
      FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid());
    PERFORM pg_sleep(0.02);
  END LOOP; END \$\$"
so_stop_samplers() {
  if [ -n "$SAMPLER_PID" ]; then
    touch "$B/so.samples.stop"
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
  fi
  if [ -n "$PGW_PID" ]; then
    kill -INT "$PGW_PID" 2>/dev/null || true
    wait "$PGW_PID" 2>/dev/null || true
    PGW_PID=""
  fi
}
# so_window BASES FINALS < samples: the window from the first sample where every
# replica has delivered to the last where every one still had work to do. Prints
# "rate seconds" (or "- -" when under 0.3 s), then per replica "rate cpu%
# per-cpu-s unfinished in-flight" (the last two: means over the window's samples).
so_window() {
  awk -v base="$1" -v fin="$2" -v hz="$CLK_TCK" '
    BEGIN { n = split(base, b, " "); split(fin, f, " ") }
    $1 == "T" { k++; t[k] = $2; r = 0; q = 0; next }
    $1 == "D" { r++; d[k, r] = $2 - b[r]; u[k, r] = $3 - $2; fl[k, r] = $4 }
    $1 == "C" { q++; c[k, q] = $2 }
    END {
      for (i = 1; i <= k && !s; i++) {
        all = 1
        for (r = 1; r <= n; r++) if (!((i, r) in d) || d[i, r] <= 0) all = 0
        if (all) s = i
      }
      for (i = k; s && i > s && !e; i--) {
        busy = 1
        for (r = 1; r <= n; r++) if (!((i, r) in d) || d[i, r] >= f[r] - b[r]) busy = 0
        if (busy) e = i
      }
      if (!s || !e || t[e] - t[s] < 0.3) { print "- -"; for (r = 1; r <= n; r++) print "- - - - -"; exit }
      w = t[e] - t[s]
      for (r = 1; r <= n; r++) tot += d[e, r] - d[s, r]
      printf "%.0f %.2f\n", tot / w, w
      for (r = 1; r <= n; r++) {
        x = d[e, r] - d[s, r]; cs = (c[e, r] - c[s, r]) / hz
        su = 0; sf = 0
        for (i = s; i <= e; i++) { su += u[i, r]; sf += fl[i, r] }
        printf "%.0f %.0f %s %.0f %.0f\n", x / w, 100 * cs / w, (cs > 0 ? sprintf("%.0f", x / cs) : "-"), \
          su / (e - s + 1), sf / (e - s + 1)
      }
    }'
}
# so_phase LABEL: SO_EVENTS events through the replicas in DISPATCHERS (pids in
# SO_PIDS, cgroups in SO_CGS); prints what it saw; sets PH_RATE (the window's
# rate, or first to last POST when the window is too short), PH_F2L (first to
# last POST) and PH_LINE.
so_phase() {
  local label=$1 n=${#DISPATCHERS[@]} i base fin off0 off1 t0 t1 posts span f2l win wspan wper=""
  local b=() c0=() r0=() g0=() c1 r1 g1 per="" pgt pgc waits wr=() wl wc idle m0 m1
  say "scale-out: $SO_EVENTS events, $label"
  # What each replica costs with nothing to deliver (polling the broker, timers),
  # over 2 s: a fixed cost per replica, paid out of its budget.
  for ((i = 0; i < n; i++)); do c0[i]=$(cpu_ticks "${SO_PIDS[i]}"); done
  sleep 2
  idle=""
  for ((i = 0; i < n; i++)); do
    idle="$idle${idle:+, }$(awk -v t=$(($(cpu_ticks "${SO_PIDS[i]}") - c0[i])) -v hz="$CLK_TCK" \
      'BEGIN { printf "%.1f%%", 100 * t / hz / 2 }')"
  done
  echo "idle, before the phase: each replica's CPU $idle of one core"
  base=$(finished)
  for ((i = 0; i < n; i++)); do
    b[i]=$(replica_done "${DISPATCHERS[i]}")
    c0[i]=$(cpu_ticks "${SO_PIDS[i]}")
    r0[i]=$(runq_ns "${SO_PIDS[i]}")
    g0[i]="0 0 0"
    [ -z "${SO_CGS[i]}" ] || g0[i]=$(bench_cpu_cap_stat "${SO_CGS[i]}")
  done
  pg_cpu_snapshot "$B/so.pg1"
  read -r _ m0 <<<"$(head -1 /proc/stat)"
  rm -f "$B/so.samples.stop"
  so_sampler "$B/so.samples" &
  SAMPLER_PID=$!
  psql -X -q "$HOOKBRIDGE_DATABASE_URL" -c "$PGW_SQL" >/dev/null 2>"$B/so.pgwait" &
  PGW_PID=$!
  off0=$(log_size)
  t0=$(now_ms)
  produce --generate "$SO_EVENTS"
  wait_finished $((base + SO_EVENTS)) || echo "warning: not every delivery finished" >&2
  t1=$(now_ms)
  off1=$(log_size)
  read -r _ m1 <<<"$(head -1 /proc/stat)"
  so_stop_samplers
  pg_cpu_snapshot "$B/so.pg2"
  # The whole machine over the phase (/proc/stat): idle (with iowait) and stolen,
  # in % of all its cores. No idle CPU: a budget could not always be honoured.
  PH_IDLE=$(awk -v a="$m0" -v b="$m1" 'BEGIN {
    n = split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= n; i++) { d[i] = y[i] - x[i]; t += d[i] }
    printf "%.0f%% idle, %.0f%% stolen", (t > 0 ? 100 * (d[4] + d[5]) / t : 0), (t > 0 ? 100 * d[8] / t : 0) }')
  read -r posts span f2l < <(post_rate "$off0" "$off1")
  fin=""
  for ((i = 0; i < n; i++)); do fin="$fin $(replica_done "${DISPATCHERS[i]}")"; done
  so_window "${b[*]}" "$fin" <"$B/so.samples" >"$B/so.window"
  { read -r win wspan; for ((i = 0; i < n; i++)); do read -r wl && wr[i]=$wl; done; } <"$B/so.window"
  PH_CPU=""
  PH_PERCPU=""
  for ((i = 0; i < n; i++)); do
    wper="$wper${wper:++}${wr[i]%% *}"
    read -r _ wl wc _ <<<"${wr[i]}"
    PH_CPU="$PH_CPU${PH_CPU:++}$wl%"
    PH_PERCPU="$PH_PERCPU${PH_PERCPU:++}$wc"
    c1=$(cpu_ticks "${SO_PIDS[i]}")
    r1=$(runq_ns "${SO_PIDS[i]}")
    g1="0 0 0"
    [ -z "${SO_CGS[i]}" ] || g1=$(bench_cpu_cap_stat "${SO_CGS[i]}")
    per="$per$(awk -v i=$((i + 1)) -v n=$(($(echo "$fin" | cut -d' ' -f$((i + 2))) - b[i])) -v tot="$SO_EVENTS" \
      -v c=$((c1 - c0[i])) -v hz="$CLK_TCK" -v rq=$((r1 - r0[i])) -v ms=$((t1 - t0)) -v g0="${g0[i]}" -v g1="$g1" \
      -v capped="${SO_CGS[i]:+1}" -v w="${wr[i]}" 'BEGIN {
        split(g0, a, " "); split(g1, z, " "); split(w, x, " ")
        printf "  replica %d: %d deliveries (%.0f%%); in the window %s/s at %s%% of one core (%s per CPU-second),", \
          i, n, 100 * n / tot, x[1], x[2], x[3]
        printf " holding %s unfinished deliveries, %s requests in flight (means);", x[4], x[5]
        printf " over the phase CPU %.0f%% of one core", 100 * c / hz / (ms / 1000)
        if (capped) printf ", throttled in %d of %d budget periods (%.0f%%)", z[2] - a[2], z[1] - a[1], \
          (z[1] > a[1] ? 100 * (z[2] - a[2]) / (z[1] - a[1]) : 0)
        else printf ", its threads waited for a CPU %.0f%% of the phase", 100 * rq / 1e6 / ms
      }')"$'\n'
  done
  read -r pgt pgc < <(pg_cpu_delta "$B/so.pg1" "$B/so.pg2")
  waits=$(awk '/NOTICE: +S/ {
      k++; busy += (NF > 2)
      for (i = 3; i <= NF; i++) w[$i]++
    }
    END {
      printf "%d samples, a client backend active in %d; active backends by wait:", k, busy
      for (x in w) printf " %s %d", x, w[x]
      if (!length(w)) printf " none"
      printf "\n"
    }' "$B/so.pgwait")
  PH_F2L=$f2l
  PH_RATE=$win
  [ "$win" != "-" ] || PH_RATE=$f2l
  PH_LINE="$PH_RATE deliveries/s"
  if [ "$win" != "-" ]; then
    PH_LINE="$PH_LINE while every replica had work (${wspan}s; $wper), $f2l first to last POST"
  else
    PH_LINE="$PH_LINE first to last POST (no window of ≥ 0.3 s with every replica busy)"
  fi
  echo "$PH_LINE ($posts POSTs in ${span}s)"
  printf '%s' "$per"
  awk -v t="$pgt" -v c="$pgc" -v hz="$CLK_TCK" -v ms=$((t1 - t0)) 'BEGIN {
    printf "  PostgreSQL: %.0f%% of one core (client backends %.0f%%)\n", 100 * t / hz / (ms / 1000), 100 * c / hz / (ms / 1000) }'
  echo "  PostgreSQL wait events, sampled every 20 ms: $waits"
  echo "  the machine ($(nproc) cores) over the phase: $PH_IDLE"
}

# The second replica joins: started (in its cgroup, with no budget while it
# starts: its start-up is not what is measured), ready, half of the partitions
# each (their logs), a warm-up until it has delivered. Sets JOIN_LINE.
so_join() {
  local t0 t1 t2 o1 o2 ok=0
  say "scale-out: a second dispatcher replica joins the consumer group"
  t0=$(now_ms)
  stack_start_dispatcher HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS="$FETCH_WAIT_MS"
  D2_PID=$STACK_DISPATCHER_PID
  SO_PIDS+=("$D2_PID")
  SO_CGS+=("$CG2")
  if [ -n "$CG2" ]; then
    bench_cpu_cap_set "$CG2" max || die "could not lift the CPU budget"
    bench_cpu_cap_add "$CG2" "$D2_PID" || die "could not move the dispatcher into its cgroup"
  fi
  stack_wait_dispatcher_ready 30 || die "the second dispatcher did not become ready"
  t1=$(now_ms)
  DISPATCHERS+=("$STACK_DISPATCHER_HTTP")
  for _ in $(seq 600); do
    o1=$(owned "$B/dispatcher-1.log")
    o2=$(owned "$B/dispatcher.log")
    [ "$o2" -ge 1 ] && [ $((o1 + o2)) -eq "$PARTITIONS" ] && break
    sleep 0.1
  done
  t2=$(now_ms)
  if [ "$o2" -lt 1 ] || [ $((o1 + o2)) -ne "$PARTITIONS" ]; then
    die "the partitions were not split between the two replicas in 60 s ($o1 + $o2 of $PARTITIONS)"
  fi
  JOIN_LINE="ready $((t1 - t0)) ms after its start (subscription snapshot loaded), partitions $o1 + $o2 of $PARTITIONS $((t2 - t0)) ms after it"
  echo "second replica: $JOIN_LINE"
  for _ in 1 2 3 4; do
    BASE=$(finished)
    produce --generate "$WARMUP" >/dev/null
    wait_finished $((BASE + WARMUP)) || die "the scale-out warm-up events were not delivered"
    if [ "$(replica_done "$STACK_DISPATCHER_HTTP")" -gt 0 ]; then
      ok=1
      break
    fi
    sleep 1
  done
  [ "$ok" = 1 ] || echo "warning: the second replica delivered nothing during the scale-out warm-up" >&2
}
# The second replica leaves (SIGTERM: it commits and leaves the group) and the
# first owns every partition again.
so_leave() {
  local i o1 p=() n=()
  say "scale-out: the second replica leaves"
  kill -TERM "$D2_PID"
  wait "$D2_PID" || echo "the second dispatcher did not stop cleanly: exit status $?" >&2
  for i in "${!STACK_PIDS[@]}"; do # stopped and waited for: not stack_cleanup's any more
    [ "${STACK_PIDS[i]}" = "$D2_PID" ] && continue
    p+=("${STACK_PIDS[i]}")
    n+=("${STACK_NAMES[i]}")
  done
  STACK_PIDS=("${p[@]}")
  STACK_NAMES=("${n[@]}")
  DISPATCHERS=("${DISPATCHERS[0]}")
  SO_PIDS=("${SO_PIDS[0]}")
  SO_CGS=("${SO_CGS[0]}")
  for _ in $(seq 600); do
    o1=$(owned "$B/dispatcher-1.log")
    [ "$o1" -eq "$PARTITIONS" ] && break
    sleep 0.1
  done
  [ "$o1" -eq "$PARTITIONS" ] || die "the first replica did not get every partition back in 60 s ($o1 of $PARTITIONS)"
}

if [ "$SCALEOUT" = 1 ]; then
  CAPPED=0
  CAP_WHY=""
  CG2=""
  if [ "$SCALEOUT_CPU" = 0 ]; then
    CAP_WHY="BENCH_SCALEOUT_CPU=0"
  elif bench_cpu_cap_init; then
    CAPPED=1
  else
    CAP_WHY=$BENCH_CG_WHY
  fi
  if [ "$CAPPED" = 1 ]; then
    say "scale-out: each replica capped at $SCALEOUT_CPU of a core (cgroup $BENCH_CG_KIND, ${BENCH_CG_PERIOD_US} us periods), $SO_ROUNDS rounds of one then two replicas"
    bench_cpu_cap_new hookbridge-bench-r1 || die "could not create a cgroup"
    SO_CGS=("$BENCH_CG_DIR")
    bench_cpu_cap_set "${SO_CGS[0]}" "$SCALEOUT_CPU" || die "could not set the CPU budget"
    bench_cpu_cap_add "${SO_CGS[0]}" "$D1_PID" || die "could not move the dispatcher into its cgroup"
    bench_cpu_cap_new hookbridge-bench-r2 || die "could not create a cgroup"
    CG2=$BENCH_CG_DIR
  else
    echo "the capped scale-out figure is skipped: $CAP_WHY"
  fi
  # The second replica gets its own log (the first keeps writing to the renamed file).
  mv "$B/dispatcher.log" "$B/dispatcher-1.log"
  ONE_SUM=0
  TWO_SUM=0
  ROUNDS_LINE=""
  ROUND_RATIOS=""
  IDLE_LINE=""
  for ((round = 1; round <= (CAPPED ? SO_ROUNDS : 1); round++)); do
    if [ "$CAPPED" = 1 ]; then
      [ "$round" = 1 ] || so_leave
      BASE=$(finished)
      produce --generate "$WARMUP" >/dev/null
      wait_finished $((BASE + WARMUP)) || die "the capped warm-up events were not delivered"
      so_phase "round $round: one replica capped at $SCALEOUT_CPU of a core"
      R1=$PH_RATE
      C1=$PH_CPU
      P1=$PH_PERCPU
      I1=$PH_IDLE
    fi
    so_join
    [ "$round" -gt 1 ] || FIRST_JOIN=$JOIN_LINE
    if [ "$CAPPED" = 1 ]; then
      bench_cpu_cap_set "$CG2" "$SCALEOUT_CPU" || die "could not set the CPU budget"
      so_phase "round $round: two replicas, each capped at $SCALEOUT_CPU of a core"
      ONE_SUM=$((ONE_SUM + R1))
      TWO_SUM=$((TWO_SUM + PH_RATE))
      CAP1_CPU="$CAP1_CPU${CAP1_CPU:+, }$C1"
      CAP2_CPU="$CAP2_CPU${CAP2_CPU:+, }$PH_CPU"
      X=$(awk -v a="$R1" -v b="$PH_RATE" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
      ROUNDS_LINE="$ROUNDS_LINE${ROUNDS_LINE:+; }$R1 -> $PH_RATE x$X"
      ROUND_RATIOS="$ROUND_RATIOS${ROUND_RATIOS:+, }x$X"
      echo "round $round: one $R1/s -> two $PH_RATE/s (CPU in the window $C1 -> $PH_CPU of one core, deliveries per CPU-second $P1 -> $PH_PERCPU; the machine $I1 -> $PH_IDLE)"
      IDLE_LINE="$IDLE_LINE${IDLE_LINE:+; }${I1%% idle*} -> ${PH_IDLE%% idle*}"
    fi
  done
  JOIN_LINE=$FIRST_JOIN
  if [ "$CAPPED" = 1 ]; then
    CAP1_RATE=$((ONE_SUM / SO_ROUNDS))
    CAP2_RATE=$((TWO_SUM / SO_ROUNDS))
    CAP_RATIO=$(awk -v a="$ONE_SUM" -v b="$TWO_SUM" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
    CAP_LINE="one $CAP1_RATE/s -> two $CAP2_RATE/s: x$CAP_RATIO (means of $SO_ROUNDS rounds: $ROUNDS_LINE; each replica $SCALEOUT_CPU of a core; CPU in the windows $CAP1_CPU -> $CAP2_CPU; the machine idle $IDLE_LINE)"
    echo "capped scale-out: $CAP_LINE"
    bench_cpu_cap_set "${SO_CGS[0]}" max
    bench_cpu_cap_set "$CG2" max
  else
    CAP_LINE="skipped: $CAP_WHY"
  fi
  so_phase "two replicas, no CPU budget (the same 2 cores as one)"
  # first to last POST, as the throughput phase's one-replica figure
  SO_RATE=$PH_F2L
  SO_LINE="$SO_RATE deliveries/s with two replicas, $TP_RATE with one (first to last POST; the one: throughput phase); two: $PH_LINE"
fi

# ---------------------------------------------------------------- table

PCT=$(awk -v a="$TP_RATE" -v b="$WRK_RPS" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
printf '\n'
say "hookbridge bench ($(nproc) cores, loopback, $BROKER; 1 subscription to every event type, one event per POST; dispatcher fetch.wait.max.ms=$FETCH_WAIT_MS; load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-44s %s\n' \
  "throughput, first to last POST" "$TP_RATE deliveries/s ($TP_POSTS POSTs in ${TP_SPAN}s; $PCT of wrk)" \
  "throughput, producer start to last POST" "$E2E_RATE deliveries/s" \
  "catch-up: a backlog drained after a restart" "$CU_LINE" \
  "dispatcher CPU during throughput" "$TP_CPU% of one core: $TP_PER_CPU deliveries per CPU-second; its loop waited for a CPU $TP_WAIT% of the time" \
  "machine during throughput" "$MACH_LINE" \
  "reference client (bench_curl_ref, 32 conns)" "$REF_RPS requests/s, $REF_PER_CPU per CPU-second ($BODY_BYTES-byte bodies, a delivery's headers)" \
  "efficiency: dispatcher / reference" "$RATIO (per CPU-second)" \
  "efficiency in the catch-up (first to last POST)" "$CU_RATIO ($CU_SPAN_PER_CPU deliveries per CPU-second; no producer beside it)" \
  "reference client with mimalloc preloaded" "$REF_MI_LINE" \
  "reference client, two short header lines" "$REF_MIN_LINE" \
  "HTTP engine alone (bench_http, 32 conns)" "$ENG_RPS requests/s, $ENG_PER_CPU per CPU-second: $ENG_RATIO of the reference" \
  "PostgreSQL CPU per logged attempt" "$PG_US us ($PG_CLIENT_US in client backends; ${PG_CPU_S} CPU-s for $((ROWS - ROWS0)) attempts)" \
  "latency, produce -> POST at $RATE/s" "p50 $P50 ms  p90 $P90 ms  p99 $P99 ms  max $PMAX ms ($LAT_N events)" \
  "ceiling: wrk -t1 -c32 -d5s, 900-byte POST" "$WRK_RPS requests/s" \
  "dispatcher memory after the run" "VmHWM $((HWM / 1024)) MiB, VmRSS $((RSS / 1024)) MiB" \
  "scale-out, each replica capped at ${SCALEOUT_CPU} core" "$CAP_LINE" \
  "scale-out: the second replica's join" "$JOIN_LINE" \
  "scale-out, no budget (2 shared cores)" "$SO_LINE"
cat <<'EOF'
  latency: nginx's $msec when it answered the POST carrying the event (found by its
  webhook-id, derived from the event uuid and subscription id) minus the event's
  `published` time, set by the producer when it produced the event (ms resolution)
EOF

PG_TARGET=$(awk -v b="$PG_BASELINE_US" 'BEGIN { printf "%.1f", b / 2 }')
result "throughput, first to last POST (deliveries/s)" "$TP_RATE" ">= 20000" "$(met 'a >= 20000' "$TP_RATE")"
result "catch-up: $EVENTS waiting events drained, first to last POST (deliveries/s)" "$CU_RATE" "(shown)"
result "dispatcher CPU; its loop waiting for a CPU (% of the phase)" "$TP_CPU% of one core; $TP_WAIT%" "(shown)"
result "machine during throughput (cores)" "$MACH_LINE" "(shown)"
result "efficiency: per CPU-second, dispatcher / reference client" \
  "$RATIO ($TP_PER_CPU vs $REF_PER_CPU)" ">= 0.7" "$(met 'a >= 0.7' "$RATIO")"
result "efficiency in the catch-up, first to last POST, dispatcher / reference" \
  "$CU_RATIO ($CU_SPAN_PER_CPU vs $REF_PER_CPU)" "(shown)"
result "reference client with the dispatcher's allocator (mimalloc)" "$REF_MI_LINE" "(shown)"
result "reference client with two short header lines, not a delivery's" "$REF_MIN_LINE" "(shown)"
result "HTTP engine alone (bench_http) per CPU-second / reference" "$ENG_RATIO ($ENG_PER_CPU)" "(shown)"
result "PostgreSQL CPU per logged attempt (us; in client backends)" "$PG_US; $PG_CLIENT_US" \
  "<= $PG_TARGET (half of main's $PG_BASELINE_US)" \
  "$(met 'a <= b' "$PG_US" "$PG_TARGET")"
result "latency p99 produce->POST at $RATE/s (ms)" "$P99" "<= 20" "$(met 'a <= 20' "$P99")"
if [ "$SCALEOUT" = 1 ]; then
  if [ "$CAP_RATIO" != "-" ]; then
    result "scale-out, each replica capped at $SCALEOUT_CPU core: one -> two (deliveries/s)" \
      "$CAP1_RATE -> $CAP2_RATE (x$CAP_RATIO; rounds $ROUND_RATIOS)" ">= x1.6" "$(met 'a >= 1.6' "$CAP_RATIO")"
  else
    result "scale-out, replicas capped (deliveries/s)" "skipped: $CAP_WHY" ">= x1.6" "-"
  fi
  result "scale-out, no budget, 2 shared cores: one -> two (deliveries/s)" "$TP_RATE -> $SO_RATE" "(shown)"
fi
result "ceiling: wrk -t1 -c32 (requests/s)" "$WRK_RPS" "(reference)"
