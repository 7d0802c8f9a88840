#!/usr/bin/env bash
# make run: the whole local stack on loopback, for a first look and for demos.
#
#   throwaway PostgreSQL  ->  hookbridge-migrate up
#   hookbridge-devbroker (embedded Kafka-protocol broker, for local use only)
#   hookbridge-receiver (the example receiver, checks signature and auth header)
#   hookbridge-dispatcher
# then registers a demo subscription for the receiver, verifies it, activates
# it, produces sample events, and follows the receiver's output. Ctrl-C stops
# everything and leaves nothing running. State lives in .run/ (deleted at exit
# unless HOOKBRIDGE_KEEP_RUN=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${HOOKBRIDGE_BIN:-$ROOT/bin}
RUN=$(mktemp -d /tmp/hookbridge-run.XXXXXX)
chmod 755 "$RUN"
PIDS=()

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

cleanup() {
  set +e
  say "stopping"
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [ -f "$RUN/pg/data/postmaster.pid" ] && (cd "$RUN" && as_pg "$PGBIN/pg_ctl" -D "$RUN/pg/data" -m fast -w stop >/dev/null)
  if [ "${HOOKBRIDGE_KEEP_RUN:-0}" = 1 ]; then echo "state kept in $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting PostgreSQL"
PGPORT=$(free_port)
mkdir -p "$RUN/pg/data" "$RUN/pg/run"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$RUN/pg"
(cd "$RUN" && as_pg "$PGBIN/initdb" --no-sync -D "$RUN/pg/data" -A trust -U postgres >/dev/null)
(cd "$RUN" && as_pg "$PGBIN/pg_ctl" -D "$RUN/pg/data" -l "$RUN/pg/run/pg.log" -w \
  -o "-p $PGPORT -k $RUN/pg/run -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null)
export HOOKBRIDGE_DATABASE_URL="postgresql://postgres@127.0.0.1:$PGPORT/postgres"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$HOOKBRIDGE_DATABASE_URL")

say "starting the embedded Kafka broker (local use only)"
"$BIN/hookbridge-devbroker" --bootstrap-file "$RUN/bootstrap" >"$RUN/devbroker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$RUN/bootstrap" ] && break; sleep 0.1; done
[ -s "$RUN/bootstrap" ] || { echo "devbroker did not start:"; cat "$RUN/devbroker.log"; exit 1; }
export HOOKBRIDGE_KAFKA_BROKERS=$(cat "$RUN/bootstrap")

say "applying migrations"
"$BIN/hookbridge-migrate" up

SECRET="whsec_$(openssl rand -base64 32)"
AUTH_VALUE="Bearer demo-$(openssl rand -hex 8)"
RPORT=$(free_port)
say "starting the example receiver on 127.0.0.1:$RPORT"
"$BIN/hookbridge-receiver" --listen "127.0.0.1:$RPORT" --secret "$SECRET" \
  --auth "Authorization: $AUTH_VALUE" >"$RUN/receiver.log" 2>&1 &
PIDS+=($!)

say "starting the dispatcher (loopback endpoints allowed for the demo)"
HOOKBRIDGE_ALLOW_HTTP=1 HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1 \
HOOKBRIDGE_HTTP_LISTEN="127.0.0.1:$(free_port)" \
HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS=6000 \
  "$BIN/hookbridge-dispatcher" >"$RUN/dispatcher.log" 2>&1 &
PIDS+=($!)

say "registering a demo subscription (user.session.start, user.lifecycle.create)"
SUB=$("${PSQL[@]}" -At -v url="http://127.0.0.1:$RPORT/hook" -v secret="$SECRET" -v auth="$AUTH_VALUE" <<'SQL'
SELECT hookbridge.register('demo receiver', :'url',
       ARRAY['user.session.start','user.lifecycle.create'],
       jsonb_build_object('auth_header','Authorization','auth_value',:'auth','secret',:'secret'));
SQL
)
echo "subscription $SUB"
"${PSQL[@]}" -c "SELECT hookbridge.verify('$SUB')" >/dev/null
for _ in $(seq 100); do
  v=$("${PSQL[@]}" -At -c "SELECT verification FROM hookbridge.subscriptions WHERE id='$SUB'")
  [ "$v" != unverified ] && break; sleep 0.1
done
echo "verification: $v"
[ "$v" = verified ] || { echo "verification did not succeed; dispatcher log:"; tail -20 "$RUN/dispatcher.log"; exit 1; }
"${PSQL[@]}" -c "SELECT hookbridge.activate('$SUB')" >/dev/null
echo "activated"

say "producing sample events (only user.session.start and user.lifecycle.create are subscribed)"
"$BIN/hookbridge-producer" deploy/local/sample-events.jsonl
"$BIN/hookbridge-producer" --generate 20

say "the receiver's output (Ctrl-C stops everything)"
tail -n +1 -f "$RUN/receiver.log" &
PIDS+=($!)
wait "${PIDS[1]}"
