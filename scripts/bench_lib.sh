# shellcheck shell=bash
# Helpers shared by the make bench scripts that need many endpoints
# (scripts/bench_https.sh, scripts/bench_slow.sh). Source it after
# deploy/local/stack.sh and stack_init.
#
#   bench_subscribe_many PREFIX URL_SQL TYPES   registers one subscription per
#       row of the SQL expression URL_SQL over i = 1..N (e.g.
#       "'http://127.77.0.' || i || ':8080/hook'" with BENCH_N=N in the
#       environment), named PREFIX-i, to the comma-separated TYPES; asks the
#       dispatcher to verify them all at once, waits (60 s at most) until every
#       one is verified and activates them. A few SQL statements, not a psql per
#       subscription: 1,000 take seconds.
#   bench_metric HOST:PORT NAME  a dispatcher's metric, summed over its labels (n/a
#                               when /metrics does not answer)
#   bench_rss PID               "VmHWM VmRSS" of a process, in KiB
#   bench_result SECTION FIGURE VALUE TARGET [MET]  one line for scripts/bench_all.sh's
#       summary (BENCH_RESULTS; nothing when unset)
#   bench_loopback_addresses PREFIX N  N addresses PREFIX.a.b (PREFIX: two octets,
#       e.g. 127.79), a from 0, b from 1 to 250: all route to lo on Linux

bench_subscribe_many() {
  local prefix=$1 url_sql=$2 types=$3 n=${BENCH_N:?} v
  stack_psql -v types="$types" -v prefix="$prefix" >/dev/null <<SQL
SELECT hookbridge.register(:'prefix' || '-' || i, $url_sql, string_to_array(:'types', ','), '{}')
  FROM generate_series(1, $n) AS i;
SELECT hookbridge.verify(id) FROM hookbridge.subscriptions WHERE name LIKE :'prefix' || '-%';
SQL
  for _ in $(seq 600); do
    v=$(stack_psql -At -v prefix="$prefix" <<'SQL'
SELECT count(*) FILTER (WHERE verification = 'verified') || ' ' || count(*) FILTER (WHERE verification = 'failed')
  FROM hookbridge.subscriptions WHERE name LIKE :'prefix' || '-%';
SQL
    )
    [ "${v% *}" -ge "$n" ] && break
    [ "${v#* }" -eq 0 ] || break
    sleep 0.1
  done
  [ "${v% *}" -ge "$n" ] || {
    echo "verification: $v of $n verified, failed" >&2
    return 1
  }
  stack_psql -v prefix="$prefix" >/dev/null <<'SQL'
SELECT hookbridge.activate(id) FROM hookbridge.subscriptions WHERE name LIKE :'prefix' || '-%';
SQL
}

bench_metric() {
  local out
  out=$(curl -fs "http://$1/metrics") || {
    echo n/a # e.g. libmicrohttpd refusing a socket above FD_SETSIZE: see bench_slow.sh
    return 0
  }
  awk -v m="$2" '$1 == m || index($1, m "{") == 1 { v += $2 } END { printf "%d\n", v + 0 }' <<<"$out"
}

bench_rss() {
  awk '/^VmHWM:/ { h = $2 } /^VmRSS:/ { r = $2 } END { print h, r }' "/proc/$1/status"
}

bench_result() {
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$BENCH_RESULTS"
}

bench_loopback_addresses() {
  local prefix=$1 n=$2 i
  for ((i = 0; i < n; i++)); do echo "$prefix.$((i / 250)).$((i % 250 + 1))"; done
}
