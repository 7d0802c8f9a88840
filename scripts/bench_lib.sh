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
#   bench_mean_body             the mean body (nginx's $content_length, the log's
#       fifth field) of the POSTs in the nginx log lines on stdin; 900 when none
#   bench_loopback_addresses PREFIX N  N addresses PREFIX.a.b (PREFIX: two octets,
#       e.g. 127.79), a from 0, b from 1 to 250: all route to lo on Linux
#
# A fixed CPU budget per process (scripts/bench.sh's scale-out figure), through the
# cgroup cpu controller: v1 (a hierarchy with the cpu controller: cpu.cfs_quota_us,
# cpu.cfs_period_us) or v2 (cpu.max; a cgroup under the hierarchy's root, +cpu in
# the root's cgroup.subtree_control). Needs root, or write access to that hierarchy.
#   bench_cpu_cap_init           0 when a budget can be set here: detects the version
#       (BENCH_CG_KIND v1|v2, BENCH_CG_ROOT) and creates and removes a trial cgroup;
#       otherwise 1, and BENCH_CG_WHY says why
#   bench_cpu_cap_new NAME       creates the cgroup NAME.PID (no budget yet), its
#       directory in BENCH_CG_DIR; bench_cpu_cap_cleanup removes every one created
#   bench_cpu_cap_set DIR CORES  the budget: CORES of one core (e.g. 0.3) per
#       BENCH_CG_PERIOD_US (default 20000) of wall time, or "max" for none
#   bench_cpu_cap_add DIR PID    moves the process (every thread of it) into DIR
#   bench_cpu_cap_stat DIR       "periods throttled throttled_ms" so far (cpu.stat)
#   bench_cpu_cap_cleanup        moves the processes left in our cgroups back to the
#       cgroup this shell runs in, removes the cgroups (for an exit trap)

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

bench_mean_body() {
  awk '$2 == "POST" && $5 ~ /^[0-9]+$/ { s += $5; n++ } END { printf "%d", (n ? s / n : 900) }'
}

bench_loopback_addresses() {
  local prefix=$1 n=$2 i
  for ((i = 0; i < n; i++)); do echo "$prefix.$((i / 250)).$((i % 250 + 1))"; done
}

BENCH_CG_KIND=""
BENCH_CG_ROOT=""
BENCH_CG_WHY=""
BENCH_CG_DIR=""
BENCH_CG_DIRS=()
BENCH_CG_PERIOD_US=${BENCH_CG_PERIOD_US:-20000}

# shellcheck disable=SC2034 # BENCH_CG_WHY is for the sourcing script
bench_cpu_cap_init() {
  local mnt type opts rest trial
  BENCH_CG_KIND=""
  BENCH_CG_ROOT=""
  # v1 first: on a hybrid machine the cpu controller is bound to v1 and the
  # unified (v2) hierarchy has none.
  while read -r _ mnt type opts rest; do
    if [ "$type" = cgroup ] && [[ ",$opts," == *,cpu,* ]] && [ -f "$mnt/cpu.cfs_quota_us" ]; then
      BENCH_CG_KIND=v1
      BENCH_CG_ROOT=$mnt
      break
    fi
  done </proc/mounts
  if [ -z "$BENCH_CG_KIND" ]; then
    while read -r _ mnt type opts rest; do
      if [ "$type" = cgroup2 ] && grep -qw cpu "$mnt/cgroup.controllers" 2>/dev/null; then
        BENCH_CG_KIND=v2
        BENCH_CG_ROOT=$mnt
        break
      fi
    done </proc/mounts
  fi
  if [ -z "$BENCH_CG_KIND" ]; then
    BENCH_CG_WHY="no cgroup hierarchy with the cpu controller is mounted (neither v1 cpu nor v2 with cpu in cgroup.controllers)"
    return 1
  fi
  if [ "$BENCH_CG_KIND" = v2 ] && ! grep -qw cpu "$BENCH_CG_ROOT/cgroup.subtree_control" 2>/dev/null; then
    echo +cpu 2>/dev/null >"$BENCH_CG_ROOT/cgroup.subtree_control" || {
      BENCH_CG_WHY="cgroup v2 at $BENCH_CG_ROOT: cannot enable the cpu controller for its children (+cpu in cgroup.subtree_control: not root, or a namespaced root with processes in it)"
      return 1
    }
  fi
  trial=$BENCH_CG_ROOT/hookbridge-bench-trial.$$
  if ! mkdir "$trial" 2>/dev/null; then
    BENCH_CG_WHY="cgroup $BENCH_CG_KIND at $BENCH_CG_ROOT: cannot create a cgroup there (not root?)"
    return 1
  fi
  if ! bench_cpu_cap_set "$trial" 0.5 2>/dev/null; then
    rmdir "$trial"
    BENCH_CG_WHY="cgroup $BENCH_CG_KIND at $BENCH_CG_ROOT: cannot set a CPU budget"
    return 1
  fi
  rmdir "$trial"
}

bench_cpu_cap_new() { # not in $(...): the list of cgroups to remove is this shell's
  BENCH_CG_DIR=$BENCH_CG_ROOT/$1.$$
  mkdir "$BENCH_CG_DIR" || return 1
  BENCH_CG_DIRS+=("$BENCH_CG_DIR")
}

bench_cpu_cap_set() {
  local d=$1 cores=$2 quota
  if [ "$cores" = max ]; then
    quota=-1
  else
    quota=$(awk -v c="$cores" -v p="$BENCH_CG_PERIOD_US" 'BEGIN { printf "%d", c * p }')
    [ "$quota" -ge 1000 ] || {
      echo "a budget of $cores cores is under the kernel's 1 ms per period" >&2
      return 1
    }
  fi
  if [ "$BENCH_CG_KIND" = v1 ]; then
    echo "$BENCH_CG_PERIOD_US" >"$d/cpu.cfs_period_us" && echo "$quota" >"$d/cpu.cfs_quota_us"
  else
    [ "$quota" = -1 ] && quota=max
    echo "$quota $BENCH_CG_PERIOD_US" >"$d/cpu.max"
  fi
}

bench_cpu_cap_add() { echo "$2" >"$1/cgroup.procs"; }

bench_cpu_cap_stat() {
  # v1: throttled_time in ns; v2: throttled_usec
  awk '$1 == "nr_periods" { p = $2 } $1 == "nr_throttled" { t = $2 }
       $1 == "throttled_time" { ms = $2 / 1e6 } $1 == "throttled_usec" { ms = $2 / 1e3 }
       END { printf "%d %d %.0f\n", p, t, ms }' "$1/cpu.stat"
}

bench_cpu_cap_cleanup() {
  local d home pid
  [ ${#BENCH_CG_DIRS[@]} -gt 0 ] || return 0
  if [ "$BENCH_CG_KIND" = v1 ]; then
    home=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ { print $3 }' /proc/self/cgroup)
  else
    home=$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
  fi
  for d in "${BENCH_CG_DIRS[@]}"; do
    [ -d "$d" ] || continue
    while read -r pid; do
      echo "$pid" >"$BENCH_CG_ROOT$home/cgroup.procs" 2>/dev/null || true
    done <"$d/cgroup.procs"
    rmdir "$d" 2>/dev/null || echo "could not remove the cgroup $d" >&2
  done
  BENCH_CG_DIRS=()
}
