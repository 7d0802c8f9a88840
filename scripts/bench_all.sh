#!/usr/bin/env bash
# make bench: every benchmark part in turn, then one summary table with the
# targets of issue 12 next to the figures of this run.
#
#   part       script                       what
#   devbroker  scripts/bench.sh             throughput, deliveries per CPU-second vs the
#                                           reference libcurl client, PostgreSQL CPU per
#                                           logged attempt, latency at 2,000/s, wrk's
#                                           ceiling, one -> two dispatcher replicas, each
#                                           capped at the same CPU budget, and uncapped
#   retry      scripts/bench_retry.sh       retry timeliness, 10,000 pending retries
#   https      scripts/bench_https.sh       1,000 TLS endpoints on distinct hosts
#   slow       scripts/bench_slow.sh slow   receivers answering after 200 ms
#   memory     scripts/bench_slow.sh memory dispatcher RSS with 10,000 requests in flight
#   apache     KAFKA=apache bench.sh and bench_retry.sh: the same on Apache Kafka
#   index      build/tests/bench/bench_index: the subscription index at scale
#   instructions scripts/bench_instructions.sh  the efficiency in instructions
#                                           (callgrind; only when named in BENCH_ONLY:
#                                           about 6 minutes, installs valgrind)
#
# BENCH_ONLY=part,part runs only those parts (default: all but instructions, in this order);
# each part's own BENCH_* settings are described in its script. A part that
# fails is reported and the others still run; the exit status is 1 if any failed.
# About 7 minutes on a 2-core machine when it is otherwise idle.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ALL=devbroker,retry,https,slow,memory,apache,index
ONLY=${BENCH_ONLY:-$ALL}
for p in ${ONLY//,/ }; do
  [[ ",$ALL,instructions," == *",$p,"* ]] || {
    echo "BENCH_ONLY: unknown part \"$p\" (parts: $ALL,instructions)" >&2
    exit 2
  }
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

BENCH_RESULTS=$(mktemp /tmp/hookbridge-bench-results.XXXXXX)
export BENCH_RESULTS
trap 'rm -f "$BENCH_RESULTS"' EXIT
INTERRUPTED=0
trap 'INTERRUPTED=1' INT TERM # acted on when the running part has returned
FAILED=()
START=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

part() { # part NAME COMMAND...
  local name=$1 t0 rc=0
  shift
  printf '\n\033[1m======== %s: %s ========\033[0m\n' "$name" "$*"
  t0=$(date +%s)
  "$@" || rc=$?
  # Ctrl-C (or SIGTERM): the part has stopped what it started; stop here too,
  # also when the signal came while the part was already stopping (rc 0).
  [ "$INTERRUPTED" = 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ] || exit 130
  if [ "$rc" -ne 0 ]; then
    FAILED+=("$name")
    printf 'part\t%s\tFAILED (see above)\t\t\n' "$name" >>"$BENCH_RESULTS"
  fi
  echo "($name took $(($(date +%s) - t0)) s)"
}

wanted devbroker && part devbroker scripts/bench.sh
wanted retry && part retry scripts/bench_retry.sh
wanted https && part https scripts/bench_https.sh
wanted slow && part slow scripts/bench_slow.sh slow
wanted memory && part memory scripts/bench_slow.sh memory
wanted apache && part apache env KAFKA=apache scripts/bench.sh
wanted apache && part apache-retry env KAFKA=apache scripts/bench_retry.sh
if wanted index; then
  part index "${BENCH_BUILD:-build}/tests/bench/bench_index"
fi
if wanted instructions; then
  scripts/deps.sh --valgrind
  part instructions scripts/bench_instructions.sh
fi

printf '\n\033[1m==> summary: issue 12 targets and this run (%s cores, loopback; load average %s at the start, %s at the end; %s s)\033[0m\n' \
  "$(nproc)" "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)" $(($(date +%s) - START))
awk -F'\t' '
  { for (c = 1; c <= 5; c++) { cell[NR, c] = $c; if (length($c) > w[c]) w[c] = length($c) } }
  END {
    if (w[2] > 62) w[2] = 62
    fmt = "  %-" w[1] "s  %-" w[2] "s  %-" w[3] "s  %-" w[4] "s  %s\n"
    printf fmt, "part", "figure", "this run", "target", "met"
    for (i = 1; i <= NR; i++) printf fmt, cell[i, 1], cell[i, 2], cell[i, 3], cell[i, 4], cell[i, 5]
  }' "$BENCH_RESULTS"
cat <<'EOF'
  The machine is shared and has 2 cores: absolute figures move with the other load
  (the load averages above); the ratios measured within one run (dispatcher vs the
  reference client, one vs two replicas under the same CPU budget, vs wrk) are the
  ones to compare across runs.
EOF
[ ${#FAILED[@]} -eq 0 ] || {
  echo "failed parts: ${FAILED[*]}" >&2
  exit 1
}
