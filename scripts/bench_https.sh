#!/usr/bin/env bash
# make bench: HTTPS to many endpoints.
#
# BENCH_HTTPS_HOSTS (default 1,000) subscriptions, each on its own endpoint
# host: https://127.79.a.b:PORT/hook, a distinct loopback address per
# subscription (all of 127.0.0.0/8 routes to lo on Linux, so no /etc/hosts and
# no DNS are needed), served by one nginx (one worker) listening on every
# address with TLS. A throwaway test CA signs one certificate (ECDSA P-256) for
# each BENCH_HTTPS_SANS (default 25) consecutive addresses, listed in its
# subjectAltName, served by a server block listening on those addresses; the
# dispatcher trusts only that CA (HOOKBRIDGE_CA_FILE) and runs with the
# production address policy: https only, private networks refused but
# HOOKBRIDGE_ALLOWED_CIDRS=127.0.0.0/8. (Certificates the size of real ones: a
# connection keeps its peer's parsed certificate, and one certificate naming all
# 1,000 addresses cost ~115 KB per open connection, more than the rest of it;
# BENCH_HTTPS_SANS=$BENCH_HTTPS_HOSTS makes that one certificate again.)
# BENCH_HTTPS_SCHEME=http runs the same without TLS, for comparison.
# BENCH_HTTPS_CA=system trusts the test CA the way production trusts public
# ones: no HOOKBRIDGE_CA_FILE, the system CA bundle and directory (curl's
# built-in /etc/ssl/certs/ca-certificates.crt and /etc/ssl/certs), which the
# dispatcher sees in a mount namespace of its own, with the test CA added to
# the system's (root and unshare(1) needed; the machine's files are untouched).
#
# Each subscription takes every event type; once the consumer group has its
# partitions and nginx has closed the verification's connections (its
# keepalive_timeout is 2 s), BENCH_HTTPS_EVENTS (default 20) events make 20
# deliveries to each host (20,000 in all), the events arriving as fast as the
# producer sends them: each host's first delivery opens a connection (a TLS
# handshake, resumed if the client kept the verification's session), the next
# ones reuse it unless the connection cache dropped it.
# nginx logs per request "$msec $request_method $status $http_webhook_id
# $connection $connection_requests $ssl_session_reused $server_addr", from which:
#
#   throughput   deliveries/s, first to last POST
#   handshakes   connections opened (a connection's first request), in the
#                verification phase and in the delivery phase
#   resumption   of those, how many resumed a TLS session ($ssl_session_reused)
#   reuse        requests per connection in the delivery phase
#
# and the memory per open connection: the dispatcher's VmRSS at the end less
# its VmRSS when it became ready (no subscription, no connection), divided by
# the connections to nginx it holds at the end (ESTABLISHED or CLOSE-WAIT: not
# yet closed on its side), so it includes the 1,000 subscriptions' own state;
# tests/bench/bench_tlsconn measures the HTTP engine's alone.
# plus the dispatcher's CPU and deliveries per CPU-second. Everything started is
# stopped at exit (also on failure or Ctrl-C). BENCH_RESULTS=FILE appends the
# figures for scripts/bench_all.sh's summary.
# shellcheck disable=SC2119 # stack_* functions take optional arguments, not the script's
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/local/stack.sh
. deploy/local/stack.sh
# shellcheck source=scripts/bench_lib.sh
. scripts/bench_lib.sh
BIN=$STACK_BIN
HOSTS=${BENCH_HTTPS_HOSTS:-1000}
EVENTS=${BENCH_HTTPS_EVENTS:-20}
SANS=${BENCH_HTTPS_SANS:-25}
SCHEME=${BENCH_HTTPS_SCHEME:-https}
CA_MODE=${BENCH_HTTPS_CA:-file}
case $CA_MODE in file | system) ;; *) die "BENCH_HTTPS_CA: file or system" ;; esac
case $SCHEME in https) SSL=" ssl" ;; http) SSL="" ;; *) die "BENCH_HTTPS_SCHEME: https or http" ;; esac
[ "$SANS" -ge 1 ] || die "BENCH_HTTPS_SANS: at least 1"
DELIVERIES=$((HOSTS * EVENTS))
for tool in nginx openssl curl jq psql; do
  command -v "$tool" >/dev/null || die "$tool is missing (make deps installs it)"
done

stack_init hookbridge-bench-https
B=$STACK_DIR

mapfile -t ADDRS < <(bench_loopback_addresses 127.79 "$HOSTS")
GROUPS_N=$(((HOSTS + SANS - 1) / SANS)) # certificates, server blocks
T=$B/tls
mkdir -p "$T"
if [ "$SCHEME" = https ]; then
  say "https: a test CA and $GROUPS_N certificates for $HOSTS loopback addresses ($SANS each)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=hookbridge bench CA" -keyout "$T/ca.key" -out "$T/ca.pem" 2>"$T/openssl.log" ||
    { cat "$T/openssl.log"; die "openssl: the CA"; }
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench receivers" \
    -keyout "$T/server.key" -out "$T/server.csr" 2>>"$T/openssl.log" ||
    { cat "$T/openssl.log"; die "openssl: the server key"; }
  for ((g = 0; g < GROUPS_N; g++)); do
    {
      printf 'subjectAltName = '
      printf 'IP:%s\n' "${ADDRS[@]:g*SANS:SANS}" | paste -sd, -
      echo 'extendedKeyUsage = serverAuth'
    } >"$T/san$g.ext"
    openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -set_serial $((g + 1)) \
      -days 2 -extfile "$T/san$g.ext" -out "$T/server$g.pem" 2>>"$T/openssl.log" ||
      { cat "$T/openssl.log"; die "openssl: the server certificate $g"; }
  done
  chmod 644 "$T"/*
  CERT_TEXT="TLS (ECDSA P-256, $GROUPS_N certificates with $SANS IP SANs, $(stat -c %s "$T/server0.pem") bytes each)"
else
  CERT_TEXT="plain HTTP, no TLS"
fi

say "https: PostgreSQL, the embedded broker, nginx ($SCHEME) on $HOSTS addresses"
stack_start_postgres
stack_start_devbroker --partitions 6
stack_migrate >/dev/null

PORT= # set by free_port
free_port PORT
N=$B/nginx
mkdir -p "$N/tmp"
USER_LINE=""
[ "$(id -u)" -ne 0 ] || USER_LINE="user nobody nogroup;"
{
  cat <<EOF
$USER_LINE
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid $N/nginx.pid;
error_log $N/error.log warn;
events { worker_connections 8192; }
http {
    log_format bench '\$msec \$request_method \$status \$http_webhook_id \$connection \$connection_requests \$ssl_session_reused \$server_addr';
    access_log $N/access.log bench;
    client_body_temp_path $N/tmp/body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    ssl_session_cache shared:bench:20m;
    ssl_session_timeout 10m;
    keepalive_timeout 2s;
EOF
  for ((g = 0; g < GROUPS_N; g++)); do
    echo "    server {"
    [ "$SCHEME" = http ] || printf '        ssl_certificate %s;\n        ssl_certificate_key %s;\n' \
      "$T/server$g.pem" "$T/server.key"
    printf "        listen %s:$PORT$SSL;\n" "${ADDRS[@]:g*SANS:SANS}"
    cat <<'EOF'
        location = /hook {
            if ($request_method = POST) { return 204; }
            default_type application/json;
            return 200 '{"verification":"$http_x_okta_verification_challenge"}';
        }
    }
EOF
  done
  echo "}"
} >"$N/nginx.conf"
stack_spawn nginx "$(command -v nginx)" -p "$N" -e "$N/error.log" -c "$N/nginx.conf"
LOG=$N/access.log
CACERT=()
[ "$SCHEME" = http ] || CACERT=(--cacert "$T/ca.pem")
PROBE="$SCHEME://${ADDRS[$((HOSTS - 1))]}:$PORT/hook"
for _ in $(seq 100); do
  curl -fs "${CACERT[@]}" -o /dev/null -H 'X-Okta-Verification-Challenge: ping' "$PROBE" && break
  kill -0 "$STACK_LAST_PID" 2>/dev/null || break
  sleep 0.1
done
[ "$(curl -fs "${CACERT[@]}" -H 'X-Okta-Verification-Challenge: ping' "$PROBE")" = \
  '{"verification":"ping"}' ] || { cat "$N/error.log"; die "nginx did not serve $PROBE"; }

if [ "$SCHEME" = https ] && [ "$CA_MODE" = system ]; then
  say "https: the dispatcher (https only, 127.0.0.0/8 allowed, the system CAs and the test CA)"
  if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null; then
    die "BENCH_HTTPS_CA=system: root and unshare needed"
  fi
  mkdir -p "$T/etc-ssl-certs" "$T/bin"
  cat /etc/ssl/certs/ca-certificates.crt "$T/ca.pem" >"$T/etc-ssl-certs/ca-certificates.crt"
  cp "$T/ca.pem" "$T/etc-ssl-certs/hookbridge-bench-ca.pem"
  openssl rehash "$T/etc-ssl-certs" 2>/dev/null || true # warns about the bundle
  for f in "$BIN"/*; do ln -sf "$f" "$T/bin/"; done
  rm "$T/bin/hookbridge-dispatcher"
  printf '#!/bin/sh\nexec unshare -m sh -c %s sh %s %s\n' \
    "'mount --bind \"\$1\" /etc/ssl/certs && shift && exec \"\$@\"'" \
    "$T/etc-ssl-certs" "$BIN/hookbridge-dispatcher" >"$T/bin/hookbridge-dispatcher"
  chmod 755 "$T/bin/hookbridge-dispatcher"
  STACK_BIN=$T/bin stack_start_dispatcher HOOKBRIDGE_ALLOW_HTTP=0 HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=0 \
    HOOKBRIDGE_ALLOWED_CIDRS=127.0.0.0/8 HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS=10
  CERT_TEXT="$CERT_TEXT, the system CAs"
elif [ "$SCHEME" = https ]; then
  say "https: the dispatcher (https only, 127.0.0.0/8 allowed, the test CA trusted)"
  stack_start_dispatcher HOOKBRIDGE_ALLOW_HTTP=0 HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=0 \
    HOOKBRIDGE_ALLOWED_CIDRS=127.0.0.0/8 HOOKBRIDGE_CA_FILE="$T/ca.pem" HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS=10
else
  say "https: the dispatcher (http allowed, 127.0.0.0/8 allowed)"
  stack_start_dispatcher HOOKBRIDGE_ALLOW_HTTP=1 HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=0 \
    HOOKBRIDGE_ALLOWED_CIDRS=127.0.0.0/8 HOOKBRIDGE_KAFKA_FETCH_WAIT_MAX_MS=10
fi
D_PID=$STACK_DISPATCHER_PID
stack_wait_dispatcher_ready 30 || die "the dispatcher did not become ready"
read -r _ RSS0 < <(bench_rss "$D_PID")

TYPES=$(grep -v '^#' schema/event_types.txt | cut -f1 | grep -v '^$' | paste -sd,)
say "https: subscribing, verifying and activating $HOSTS endpoints"
T0=$(date +%s%3N)
BENCH_N=$HOSTS bench_subscribe_many https \
  "'$SCHEME://127.79.' || ((i - 1) / 250) || '.' || ((i - 1) % 250 + 1) || ':$PORT/hook'" "$TYPES" ||
  { stack_log_tail dispatcher; die "the subscriptions were not verified"; }
# The dispatcher's /metrics stops answering here: its libmicrohttpd polls with
# select() and refuses sockets at or above FD_SETSIZE (1024), and the dispatcher
# holds a connection to each of the 1,000 hosts once it has verified them. So
# progress is read from its log and from nginx's.
DLOG=$B/dispatcher.log
for _ in $(seq 100); do
  [ "$(grep -c '"subscription changed: active, verified"' "$DLOG")" -ge "$HOSTS" ] && break
  sleep 0.1
done
VERIFY_MS=$(($(date +%s%3N) - T0))
echo "$HOSTS subscriptions verified and active in $VERIFY_MS ms"
# The consumer group's first join (~3 s on the embedded broker): wait for it
# without delivering anything, so the deliveries below open their connections.
for _ in $(seq 300); do
  grep -q '"assigned [0-9]* partition' "$DLOG" && break
  sleep 0.1
done
# nginx closes connections idle for 2 s (keepalive_timeout): those the
# verification opened are gone, so the deliveries pay for their TLS handshakes
# (and may resume the sessions the verification established), as deliveries to
# real endpoints that closed their idle connections do.
sleep 2.5
OFF1=$(stat -c %s "$LOG")
posts() { tail -c +$((OFF1 + 1)) "$LOG" | awk '$2 == "POST" { n++ } END { print n + 0 }'; }

say "https: $EVENTS events, $DELIVERIES deliveries to $HOSTS hosts"
CPU1=$(sed 's/^.*) //' "/proc/$D_PID/stat" | awk '{ print $12 + $13 }')
T1=$(date +%s%3N)
"$BIN/hookbridge-producer" --generate "$EVENTS" >"$B/producer.out" 2>&1 ||
  { cat "$B/producer.out"; die "the producer failed"; }
LAST=-1 STALL=0
while :; do
  DONE=$(posts)
  [ "$DONE" -ge "$DELIVERIES" ] && break
  if [ "$DONE" = "$LAST" ]; then
    STALL=$((STALL + 1))
    [ "$STALL" -lt 200 ] || {
      echo "no progress for 20 s: $DONE of $DELIVERIES POSTs arrived" >&2
      break
    }
  else
    STALL=0 LAST=$DONE
  fi
  sleep 0.1
done
T2=$(date +%s%3N)
CPU2=$(sed 's/^.*) //' "/proc/$D_PID/stat" | awk '{ print $12 + $13 }')
read -r HWM RSS < <(bench_rss "$D_PID")
# the dispatcher's connections to nginx not yet closed on its side (only it
# connects to $PORT now)
CONNS=$(ss -Htn state established state close-wait "( dport = :$PORT )" | wc -l)
PER_OPEN=$(awk -v d=$((RSS - RSS0)) -v c="$CONNS" 'BEGIN { printf "%.0f", (c > 0 ? d / c : 0) }')

# verification phase: the log before OFF1; delivery phase: after it
phase() {
  awk -v want="$1" '$2 == want {
      n++; if (!f || $1 < f) f = $1; if ($1 > l) l = $1; addr[$8] = 1
      if ($6 == 1) { new++; if ($7 == "r") resumed++ }
    } END {
      s = l - f; for (a in addr) hosts++
      printf "%d %.3f %.0f %d %d %d\n", n, s, (s > 0 ? (n - 1) / s : 0), new, resumed + 0, hosts
    }'
}
read -r V_N _ _ V_NEW V_RES V_HOSTS < <(head -c "$OFF1" "$LOG" | phase GET)
read -r P_N P_SPAN P_RATE P_NEW P_RES P_HOSTS < <(tail -c +$((OFF1 + 1)) "$LOG" | phase POST)
CLK_TCK=$(getconf CLK_TCK)
CPU_S=$(awk -v t=$((CPU2 - CPU1)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
PER_CPU=$(awk -v n="$P_N" -v c="$CPU_S" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
PER_CONN=$(awk -v n="$P_N" -v c="$P_NEW" 'BEGIN { printf "%.1f", (c > 0 ? n / c : 0) }')

OPENED="TLS handshakes (resumed)"
[ "$SCHEME" = https ] || OPENED="connections opened (-)"
printf '\n'
say "hookbridge HTTPS bench ($(nproc) cores, loopback, devbroker; $HOSTS hosts, $CERT_TEXT; load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-44s %s\n' \
  "throughput, first to last POST" "$P_RATE deliveries/s ($P_N of $DELIVERIES POSTs, to $P_HOSTS hosts, in ${P_SPAN}s)" \
  "dispatcher CPU" "$CPU_S CPU-s: $PER_CPU deliveries per CPU-second; $((T2 - T1)) ms producer start to last delivery" \
  "verification: $OPENED" "$V_NEW ($V_RES) for $V_N challenges to $V_HOSTS hosts; all verified in $VERIFY_MS ms" \
  "deliveries: $OPENED" "$P_NEW ($P_RES): $PER_CONN requests per new connection" \
  "dispatcher memory after" "VmHWM $((HWM / 1024)) MiB, VmRSS $((RSS / 1024)) MiB (ready: $((RSS0 / 1024)) MiB)" \
  "memory per open connection" "$PER_OPEN KiB: VmRSS +$(((RSS - RSS0) / 1024)) MiB since ready, $CONNS connections open"

S_NOTE=""
[ "$SCHEME" = https ] || S_NOTE=" (plain HTTP)"
bench_result https "HTTPS, $HOSTS hosts$S_NOTE: throughput (deliveries/s)" "$P_RATE ($PER_CPU per CPU-s)" "(shown)"
bench_result https "HTTPS$S_NOTE: $OPENED while delivering" \
  "$P_NEW ($P_RES) for $P_N POSTs; $V_NEW ($V_RES) verifying" "(shown)"
bench_result https "HTTPS$S_NOTE: dispatcher memory per open connection" \
  "$PER_OPEN KiB (VmRSS +$(((RSS - RSS0) / 1024)) MiB, $CONNS open)" "(shown)"
