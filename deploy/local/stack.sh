# shellcheck shell=bash
# The local hookbridge stack as bash functions, for deploy/local/run.sh
# (make run) and scripts/bench.sh (make bench). Source it, then:
#
#   stack_init NAME              state dir STACK_DIR=/tmp/NAME.XXXXXX, and the
#                                traps: stack_cleanup runs at exit, also on
#                                failure and on Ctrl-C / SIGTERM; exports a
#                                throwaway HOOKBRIDGE_SECRET_KEY unless one is set
#   stack_start_postgres         throwaway cluster on a free loopback port (as the
#                                postgres user when root); sets STACK_PGPORT and
#                                exports HOOKBRIDGE_DATABASE_URL
#   stack_start_devbroker [ARG]  embedded Kafka-protocol broker (local use only);
#                                exports HOOKBRIDGE_KAFKA_BROKERS
#   stack_start_kafka [NODES]    Apache Kafka, NODES (1 or 3) KRaft nodes on free loopback
#                                ports (deploy/local/kafka.sh; jars fetched with Maven
#                                when missing); exports HOOKBRIDGE_KAFKA_BROKERS
#   stack_create_topics          hookbridge-migrate topics (Apache Kafka: no auto-creation)
#   stack_migrate                hookbridge-migrate up
#   stack_start_dispatcher [VAR=VALUE]...
#                                loopback endpoints allowed; sets STACK_DISPATCHER_PID
#                                and STACK_DISPATCHER_HTTP (host:port of /metrics)
#   stack_spawn NAME CMD [ARG]...  any other process, in the background, output to
#                                $STACK_DIR/NAME.log, in its own process group (the
#                                terminal's Ctrl-C reaches only the script, which
#                                stops it); stopped by stack_cleanup
#   stack_track PID [NAME]       have stack_cleanup stop a process started otherwise
#   stack_wait_dispatcher_ready [SECONDS]
#   stack_register NAME URL TYPES OPTIONS_JSON   prints the new subscription id
#                                (TYPES: comma-separated event types)
#   stack_verify SUB             runs the challenge, waits (10 s at most); 0 when
#                                verified; STACK_VERIFICATION is the outcome
#   stack_activate SUB
#   stack_psql [PSQL ARG]...     psql on the stack's database, stops on errors
#
# stack_cleanup stops every process stack_spawn started (one SIGTERM each, in
# reverse order, SIGKILL after STACK_STOP_TIMEOUT seconds; each is waited for,
# so none is left for init to reap), stops PostgreSQL and
# removes STACK_DIR unless HOOKBRIDGE_KEEP_RUN=1. A script that needs more at
# exit defines stack_on_exit, which runs first.
#
# Settings: HOOKBRIDGE_BIN (default <repo>/bin), HOOKBRIDGE_KEEP_RUN=1.

STACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_BIN=${HOOKBRIDGE_BIN:-$STACK_ROOT/bin}
STACK_DIR=""
STACK_PIDS=()
STACK_NAMES=()
STACK_LAST_PID=""
STACK_PG_DATA=""
STACK_STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-25}
STACK_DISPATCHER_PID=""
STACK_DISPATCHER_HTTP=""

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

die() {
  echo "error: $*" >&2
  exit 1
}

# Sets the variable named $1 to a loopback port nothing listens on, never one
# this script chose before: a server spawned in the background may not listen
# yet when the next port is chosen (deploy/local/free_ports.py).
STACK_PORTS_CHOSEN=""
free_port() {
  local free_port_p # not the caller's name: printf -v would set this local
  # shellcheck disable=SC2086 # the list of ports, split on purpose
  free_port_p=$(/usr/bin/python3 "$STACK_ROOT/deploy/local/free_ports.py" 1 $STACK_PORTS_CHOSEN) ||
    die "cannot choose a free port"
  STACK_PORTS_CHOSEN+=" $free_port_p"
  printf -v "$1" %s "$free_port_p"
}

# Runs a command as the postgres user when root (initdb refuses root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stack_pgbin() {
  local d
  if d=$(command -v pg_ctl 2>/dev/null); then
    dirname "$(readlink -f "$d")"
    return
  fi
  d=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
  if [ -z "$d" ] || [ ! -x "$d/pg_ctl" ]; then
    die "PostgreSQL server binaries (initdb, pg_ctl) not found"
  fi
  echo "$d"
}

stack_init() {
  local name=${1:-hookbridge-run}
  STACK_DIR=$(mktemp -d "/tmp/$name.XXXXXX")
  chmod 755 "$STACK_DIR" # postgres (and nginx workers) must traverse it
  trap stack_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # The key that seals subscription secrets in the database: one per run here,
  # like the database itself. In production it comes from a Kubernetes Secret.
  if [ -z "${HOOKBRIDGE_SECRET_KEY:-}" ]; then
    HOOKBRIDGE_SECRET_KEY=$(head -c 32 /dev/urandom | base64)
    export HOOKBRIDGE_SECRET_KEY
  fi
}

# Logs of a spawned process, for error messages.
stack_log_tail() { tail -n "${2:-20}" "$STACK_DIR/$1.log" 2>/dev/null; }

# Registers a background process started by the caller, to be stopped by stack_cleanup.
stack_track() {
  STACK_PIDS+=("$1")
  STACK_NAMES+=("${2:-pid $1}")
}

# Each spawned process leads its own process group (job control on while it
# starts), so the terminal's Ctrl-C reaches only the script, and stack_cleanup
# stops each process with exactly one signal. A second signal makes our
# services exit at once (_exit): under ASan that can cut LeakSanitizer's exit
# check short and leave its helper task as a zombie for init to reap.
stack_spawn() {
  local name=$1
  shift
  case $- in
  *m*) "$@" </dev/null >"$STACK_DIR/$name.log" 2>&1 & ;;
  *)
    set -m
    "$@" </dev/null >"$STACK_DIR/$name.log" 2>&1 &
    set +m
    ;;
  esac
  STACK_LAST_PID=$!
  STACK_PIDS+=("$STACK_LAST_PID")
  STACK_NAMES+=("$name")
}

# Waits up to $2 tenths of a second for process $1 to exit; 0 when it did.
stack_wait_gone() {
  local pid=$1 n=$2
  while [ "$n" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    n=$((n - 1))
  done
  ! kill -0 "$pid" 2>/dev/null
}

stack_cleanup() {
  local rc=$? i pid st
  set +e
  # Another Ctrl-C while stopping must not cut this short and leave PostgreSQL
  # running: ignore it (every wait below is bounded).
  trap - EXIT
  trap '' INT TERM
  if declare -F stack_on_exit >/dev/null; then stack_on_exit; fi
  [ -n "$STACK_DIR" ] || exit "$rc"
  say "stopping"
  # One SIGTERM per process (to its group: a spawned process leads one), then
  # wait for it, so nothing is left for init to reap; SIGKILL after the grace.
  for ((i = ${#STACK_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${STACK_PIDS[i]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      if ! stack_wait_gone "$pid" $((STACK_STOP_TIMEOUT * 10)); then
        echo "${STACK_NAMES[i]} (pid $pid) did not stop on SIGTERM; killing it" >&2
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
      fi
    fi
    wait "$pid" 2>/dev/null
    st=$?
    # 143: ended by the SIGTERM itself (a program without a handler, like tail)
    if [ "$st" -ne 0 ] && [ "$st" -ne 143 ]; then
      echo "${STACK_NAMES[i]} (pid $pid) did not stop cleanly: exit status $st" >&2
    fi
  done
  if [ -n "$STACK_PG_DATA" ] && [ -f "$STACK_PG_DATA/postmaster.pid" ]; then
    (cd "$STACK_DIR" && as_pg "$(stack_pgbin)/pg_ctl" -D "$STACK_PG_DATA" -m fast -w stop >/dev/null) ||
      (cd "$STACK_DIR" && as_pg "$(stack_pgbin)/pg_ctl" -D "$STACK_PG_DATA" -m immediate -w stop >/dev/null)
  fi
  if [ "${HOOKBRIDGE_KEEP_RUN:-0}" = 1 ]; then
    echo "state kept in $STACK_DIR"
  else
    rm -rf "$STACK_DIR"
  fi
  exit "$rc"
}

stack_start_postgres() {
  local pgbin port pg=$STACK_DIR/pg try
  pgbin=$(stack_pgbin)
  mkdir -p "$pg/data" "$pg/run"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$pg"; fi
  (cd "$STACK_DIR" && as_pg "$pgbin/initdb" --no-sync -D "$pg/data" -A trust -U postgres \
    -E UTF8 --locale=C >"$pg/run/initdb.log" 2>&1) ||
    { cat "$pg/run/initdb.log"; die "initdb failed"; }
  STACK_PG_DATA=$pg/data
  for try in 1 2 3; do # the free port may be taken between probe and bind
    free_port port
    if (cd "$STACK_DIR" && as_pg "$pgbin/pg_ctl" -D "$pg/data" -l "$pg/run/pg.log" -w -t 60 \
      -o "-p $port -k $pg/run -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      start >/dev/null); then
      # shellcheck disable=SC2034 # for the scripts that source this file
      STACK_PGPORT=$port
      export HOOKBRIDGE_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
    [ "$try" = 3 ] || sleep 0.2
  done
  tail -20 "$pg/run/pg.log"
  die "PostgreSQL did not start"
}

stack_psql() {
  psql -X -q -P pager=off -v ON_ERROR_STOP=1 "$HOOKBRIDGE_DATABASE_URL" "$@"
}

stack_start_devbroker() {
  local f=$STACK_DIR/bootstrap
  stack_spawn devbroker "$STACK_BIN/hookbridge-devbroker" --bootstrap-file "$f" "$@"
  for _ in $(seq 100); do
    [ -s "$f" ] && break
    kill -0 "$STACK_LAST_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -s "$f" ] || { echo "devbroker did not start:"; stack_log_tail devbroker; exit 1; }
  HOOKBRIDGE_KAFKA_BROKERS=$(cat "$f")
  export HOOKBRIDGE_KAFKA_BROKERS
}

stack_start_kafka() {
  local nodes=${1:-1} dir=$STACK_DIR/kafka i
  "$STACK_ROOT/deploy/local/kafka.sh" prepare "$dir" "$nodes" >/dev/null ||
    die "Apache Kafka could not be prepared"
  for ((i = 1; i <= nodes; i++)); do
    stack_spawn "kafka/node-$i/server" "$STACK_ROOT/deploy/local/kafka.sh" node "$dir" "$i"
  done
  "$STACK_ROOT/deploy/local/kafka.sh" wait "$dir" 90 || die "Apache Kafka did not start"
  STACK_KAFKA_NODES=$nodes
  HOOKBRIDGE_KAFKA_BROKERS=$(cat "$dir/bootstrap")
  export HOOKBRIDGE_KAFKA_BROKERS
}

# Replication factor: the number of nodes stack_start_kafka started.
stack_create_topics() {
  HOOKBRIDGE_TOPIC_REPLICATION_FACTOR=${HOOKBRIDGE_TOPIC_REPLICATION_FACTOR:-${STACK_KAFKA_NODES:-1}} \
    HOOKBRIDGE_TOPIC_PARTITIONS=${HOOKBRIDGE_TOPIC_PARTITIONS:-6} \
    "$STACK_BIN/hookbridge-migrate" topics
}

stack_migrate() {
  "$STACK_BIN/hookbridge-migrate" up --dir "$STACK_ROOT/migrations"
}

# Extra arguments are VAR=VALUE settings for the dispatcher's environment.
stack_start_dispatcher() {
  local port
  free_port port
  STACK_DISPATCHER_HTTP="127.0.0.1:$port"
  stack_spawn dispatcher env HOOKBRIDGE_ALLOW_HTTP=1 HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1 \
    HOOKBRIDGE_HTTP_LISTEN="$STACK_DISPATCHER_HTTP" \
    HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS=6000 \
    "$@" "$STACK_BIN/hookbridge-dispatcher"
  STACK_DISPATCHER_PID=$STACK_LAST_PID
}

# Extra arguments are VAR=VALUE settings for the retrier's environment.
stack_start_retrier() {
  local port
  free_port port
  STACK_RETRIER_HTTP="127.0.0.1:$port"
  stack_spawn retrier env HOOKBRIDGE_ALLOW_HTTP=1 HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1 \
    HOOKBRIDGE_HTTP_LISTEN="$STACK_RETRIER_HTTP" \
    HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS=6000 \
    "$@" "$STACK_BIN/hookbridge-retrier"
  STACK_RETRIER_PID=$STACK_LAST_PID
}

# Waits until the dispatcher answers /readyz with 200 (at most $1 seconds, default 30).
stack_wait_dispatcher_ready() {
  local n=$((${1:-30} * 10))
  while [ "$n" -gt 0 ]; do
    kill -0 "$STACK_DISPATCHER_PID" 2>/dev/null ||
      { echo "the dispatcher exited:"; stack_log_tail dispatcher; return 1; }
    curl -fs -o /dev/null "http://$STACK_DISPATCHER_HTTP/readyz" && return 0
    sleep 0.1
    n=$((n - 1))
  done
  echo "the dispatcher is not ready after ${1:-30}s:"
  stack_log_tail dispatcher
  return 1
}

stack_register() {
  local name=$1 url=$2 types=$3 options=${4:-"{}"}
  stack_psql -At -v name="$name" -v url="$url" -v types="$types" -v options="$options" <<'SQL'
SELECT hookbridge.register(:'name', :'url', string_to_array(:'types', ','), :'options'::jsonb);
SQL
}

# Sets STACK_VERIFICATION to the outcome (verified, failed, unverified).
stack_verify() {
  local sub=$1 v=unverified
  stack_psql -c "SELECT hookbridge.verify('$sub')" >/dev/null
  for _ in $(seq 100); do
    v=$(stack_psql -At -c "SELECT verification FROM hookbridge.subscriptions WHERE id='$sub'")
    [ "$v" != unverified ] && break
    sleep 0.1
  done
  # shellcheck disable=SC2034 # for the scripts that source this file
  STACK_VERIFICATION=$v
  [ "$v" = verified ]
}

stack_activate() {
  stack_psql -c "SELECT hookbridge.activate('$1')" >/dev/null
}

# nginx as a fast endpoint: answers the verification challenge, and every POST
# with $1 (default 204), logging "$msec $request_method $status $http_webhook_id
# $content_length" per request to $STACK_NGINX_LOG. Sets STACK_NGINX_URL.
stack_start_nginx() {
  local status=${1:-204} port dir=$STACK_DIR/nginx user=""
  free_port port
  mkdir -p "$dir/tmp"
  [ "$(id -u)" -ne 0 ] || user="user nobody nogroup;"
  cat >"$dir/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    log_format bench '\$msec \$request_method \$status \$http_webhook_id \$content_length';
    access_log $dir/access.log bench;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location = /hook {
            if (\$request_method = POST) { return $status; }
            default_type application/json;
            return 200 '{"verification":"\$http_x_okta_verification_challenge"}';
        }
    }
}
EOF
  stack_spawn nginx "$(command -v nginx)" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  STACK_NGINX_URL="http://127.0.0.1:$port/hook"
  STACK_NGINX_LOG=$dir/access.log
  for _ in $(seq 100); do
    curl -fs -o /dev/null -H 'X-Okta-Verification-Challenge: ping' "$STACK_NGINX_URL" && break
    kill -0 "$STACK_LAST_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ "$(curl -fs -H 'X-Okta-Verification-Challenge: ping' "$STACK_NGINX_URL")" = '{"verification":"ping"}' ] ||
    { stack_log_tail nginx; cat "$dir/error.log"; return 1; }
}
