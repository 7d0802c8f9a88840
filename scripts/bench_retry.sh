#!/usr/bin/env bash
# make bench, part 2: retry timeliness with a backlog of pending retries.
#
# A throwaway PostgreSQL, the embedded broker, nginx answering 503 to every
# POST, the dispatcher and the retrier with the schedule "$BENCH_RETRY_DELAY"
# (default 20s) and no jitter. BENCH_SUBS subscriptions (default 40) share the
# endpoint, and BENCH_RETRIES / BENCH_SUBS events (default 10000 / 40) are
# produced at once: every first attempt fails, so BENCH_RETRIES retries wait in
# the delay tier together, and the retrier must fire each when it is due.
# (Retries are keyed by subscription, so one subscription's retries share a
# partition. A retry message is about 2.1 KB, and a dev-broker partition keeps
# only its last 5 MiB, about 2,400 of them: 20 subscriptions on 12 partitions
# put 6 on one partition in one run, and the dev broker trimmed 528 retries
# before they were due. 40 subscriptions on 24 partitions keep every partition
# far under it; should one still overflow, the retrier's offset reset is
# reported below instead of being counted as a late retry.)
#
#   lateness   second POST time - (first POST time + delay), per webhook-id,
#              from nginx's log (p50, p99, max); the first POST's answer takes
#              about a millisecond, which this counts as lateness
#   memory     the retrier's VmHWM while the whole backlog was pending and due
#
# Everything started is stopped at exit (also on failure or Ctrl-C).
# shellcheck disable=SC2119 # stack_* functions take optional arguments, not the script's
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/local/stack.sh
. deploy/local/stack.sh
# KAFKA=apache: the broker's JVM as in scripts/bench.sh (G1, a fixed heap, C1)
export KAFKA_JVM=${KAFKA_JVM:-server}
export KAFKA_JVM_OPTS="-XX:TieredStopAtLevel=1 ${KAFKA_JVM_OPTS:-}"
BIN=$STACK_BIN

N=${BENCH_RETRIES:-10000}
SUBS=${BENCH_SUBS:-40}
PARTS=${BENCH_RETRY_PARTITIONS:-24}
DELAY=${BENCH_RETRY_DELAY:-20s}
for p in hookbridge-devbroker hookbridge-migrate hookbridge-dispatcher hookbridge-retrier \
  hookbridge-producer; do
  [ -x "$BIN/$p" ] || die "$BIN/$p is missing (run make)"
done

stack_init hookbridge-bench-retry
export HOOKBRIDGE_RETRY_SCHEDULE=$DELAY HOOKBRIDGE_RETRY_JITTER=0
export HOOKBRIDGE_CIRCUIT_FAILURES=0 # every first attempt must really be made
export HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS=10

say "retry bench: starting PostgreSQL, the broker (${KAFKA:-devbroker}), nginx (503 to every POST)"
stack_start_postgres
if [ "${KAFKA:-devbroker}" = apache ]; then # KAFKA=apache: the same on Apache Kafka
  stack_start_kafka 1
  HOOKBRIDGE_TOPIC_PARTITIONS=$PARTS stack_create_topics >/dev/null
else
  stack_start_devbroker --partitions "$PARTS"
fi
stack_migrate >/dev/null
stack_start_nginx 503 || die "nginx did not start"

stack_start_dispatcher
stack_wait_dispatcher_ready 30 || die "the dispatcher did not become ready"
stack_start_retrier
TYPES=$(grep -v '^#' schema/event_types.txt | cut -f1 | grep -v '^$' | paste -sd,)
for i in $(seq "$SUBS"); do
  SUB=$(stack_register "bench-retry-$i" "$STACK_NGINX_URL?s=$i" "$TYPES" '{}')
  stack_verify "$SUB" || die "verification: $STACK_VERIFICATION"
  stack_activate "$SUB"
done
sleep 1

say "producing $((N / SUBS)) events for $SUBS subscriptions; each first attempt fails and waits $DELAY"
"$BIN/hookbridge-producer" --generate $((N / SUBS)) >/dev/null
posts() { awk '$2 == "POST"' "$STACK_NGINX_LOG" | wc -l; }
for _ in $(seq 1200); do
  [ "$(posts)" -ge $((2 * N)) ] && break
  sleep 0.1
done
sleep 1
read -r HWM RSS < <(awk '/^VmHWM:/ { h = $2 } /^VmRSS:/ { r = $2 } END { print h, r }' \
  "/proc/$STACK_RETRIER_PID/status")
read -r PAIRS P50 P99 PMAX EARLY < <(/usr/bin/python3 - "$STACK_NGINX_LOG" "$DELAY" <<'PY'
import re, sys
m = re.fullmatch(r"(\d+)(ms|s|m|h)", sys.argv[2])
delay = int(m[1]) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m[2]]
first, late = {}, []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 4 or f[1] != "POST":
        continue
    t = float(f[0]) * 1000
    if f[3] not in first:
        first[f[3]] = t
    elif first[f[3]] is not None:
        late.append(t - first[f[3]] - delay)
        first[f[3]] = None
late.sort()
pick = lambda q: late[min(len(late) - 1, int(len(late) * q))] if late else 0
print(len(late), round(pick(0.5)), round(pick(0.99)), round(late[-1] if late else 0),
      sum(1 for x in late if x < 0))
PY
)

# A retry the broker deleted before the retrier read it (retention; on the dev
# broker its 5 MiB per partition): the retrier counts it as expired.
TRIMMED=$(curl -fsS -m 5 "http://$STACK_RETRIER_HTTP/metrics" |
  awk '$1 == "hookbridge_messages_expired_total" { n = $2 } END { print n + 0 }')

printf '\n'
say "hookbridge retry bench ($(nproc) cores, loopback; $N retries pending at once on $PARTS partitions, delay $DELAY)"
printf '  %-44s %s\n' \
  "retries fired" "$PAIRS of $N" \
  "lateness after the due time" "p50 $P50 ms  p99 $P99 ms  max $PMAX ms" \
  "attempts fired early" "$EARLY" \
  "retries deleted by the broker before due" "$TRIMMED (retention: hookbridge_messages_expired_total)" \
  "retrier memory with the backlog" "VmHWM $((HWM / 1024)) MiB, VmRSS $((RSS / 1024)) MiB"

if [ -n "${BENCH_RESULTS:-}" ]; then # a line of scripts/bench_all.sh's summary
  printf '%s\t%s\t%s\t%s\t%s\n' "${KAFKA:-devbroker}" "retry lateness with $N pending (p99, max ms)" \
    "$P99, $PMAX ($PAIRS of $N fired, $EARLY early$([ "$TRIMMED" = 0 ] || echo ", $TRIMMED deleted by the broker"))" "(shown)" "" >>"$BENCH_RESULTS"
fi
