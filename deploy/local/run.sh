#!/usr/bin/env bash
# make run: the whole local stack on loopback, for a first look and for demos.
#
#   throwaway PostgreSQL  ->  hookbridge-migrate up
#   hookbridge-devbroker (embedded Kafka-protocol broker, for local use only), or
#   with KAFKA=apache (make run KAFKA=apache) Apache Kafka, one KRaft node, its
#   topics created by hookbridge-migrate topics
#   hookbridge-receiver (the example receiver, checks signature and auth header)
#   hookbridge-dispatcher, hookbridge-retrier
# then registers two demo subscriptions, verifies and activates them, produces
# sample events (with the CLI, and one through the Okta event-hook endpoint,
# hookbridge-producer --listen, as Okta would post it), and follows the
# receivers' output: the first receiver takes
# everything at once; the second ("flaky") fails each delivery twice, so its
# events arrive on the retry schedule (shortened to 2s,5s,10s for the demo),
# and the delivery log in PostgreSQL shows every attempt (the demo waits for
# them at most HOOKBRIDGE_RUN_WAIT seconds, default 60; when it gives up it
# says which delivery it waited for and what the retrier, the dispatcher and
# the receiver logged about it). Ctrl-C stops
# everything and leaves nothing running. State lives in a temporary directory
# /tmp/hookbridge-run.XXXXXX (deleted at exit unless HOOKBRIDGE_KEEP_RUN=1).
# The start/stop functions are in deploy/local/stack.sh.
# shellcheck disable=SC2119 # stack_* functions take optional arguments, not the script's
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/local/stack.sh
. deploy/local/stack.sh
BIN=$STACK_BIN

stack_init hookbridge-run
echo "state and logs: $STACK_DIR/ (removed at exit unless HOOKBRIDGE_KEEP_RUN=1)"

say "starting PostgreSQL"
stack_start_postgres

# A short schedule, so the demo shows retries within seconds.
export HOOKBRIDGE_RETRY_SCHEDULE=${HOOKBRIDGE_RETRY_SCHEDULE:-2s,5s,10s}

if [ "${KAFKA:-devbroker}" = apache ]; then
  say "starting Apache Kafka (one KRaft node; the first run fetches it with Maven)"
  stack_start_kafka 1
  say "creating the topics (hookbridge-migrate topics)"
  stack_create_topics
else
  say "starting the embedded Kafka broker (local use only)"
  stack_start_devbroker
fi

say "applying migrations"
stack_migrate

SECRET="whsec_$(openssl rand -base64 32)"
AUTH_VALUE="Bearer demo-$(openssl rand -hex 8)"
free_port RPORT
say "starting the example receiver on 127.0.0.1:$RPORT"
stack_spawn receiver "$BIN/hookbridge-receiver" --listen "127.0.0.1:$RPORT" --secret "$SECRET" \
  --auth "Authorization: $AUTH_VALUE"
RECEIVER_PID=$STACK_LAST_PID

free_port FPORT
say "starting a flaky receiver on 127.0.0.1:$FPORT (fails each delivery twice)"
stack_spawn flaky "$BIN/hookbridge-receiver" --listen "127.0.0.1:$FPORT" --secret "$SECRET" \
  --auth "Authorization: $AUTH_VALUE" --fail-first 2

say "starting the dispatcher and the retrier (loopback endpoints allowed for the demo)"
stack_start_dispatcher
# The retrier logs at debug (to its log file only): when the flaky receiver's
# retries do not all get through, flaky_report shows what it did with them.
stack_start_retrier HOOKBRIDGE_LOG_LEVEL="${HOOKBRIDGE_LOG_LEVEL:-debug}"

say "registering a demo subscription (user.session.start, user.lifecycle.create)"
OPTIONS=$(jq -nc --arg auth "$AUTH_VALUE" --arg secret "$SECRET" \
  '{auth_header: "Authorization", auth_value: $auth, secret: $secret}')
SUB=$(stack_register 'demo receiver' "http://127.0.0.1:$RPORT/hook" \
  user.session.start,user.lifecycle.create "$OPTIONS")
echo "subscription $SUB"
if stack_verify "$SUB"; then
  echo "verification: $STACK_VERIFICATION"
else
  echo "verification: $STACK_VERIFICATION"
  echo "verification did not succeed; dispatcher log:"
  stack_log_tail dispatcher
  exit 1
fi
stack_activate "$SUB"
echo "activated"

say "registering the flaky receiver (user.lifecycle.create)"
FSUB=$(stack_register 'flaky receiver' "http://127.0.0.1:$FPORT/hook" user.lifecycle.create \
  "$OPTIONS")
stack_verify "$FSUB" || { echo "verification: $STACK_VERIFICATION"; exit 1; }
stack_activate "$FSUB"
echo "subscription $FSUB verified and activated"

say "secrets at rest: sealed by the services with HOOKBRIDGE_SECRET_KEY (hookbridge.secret_status)"
stack_psql -c "SELECT name, signing_secret, auth_value, signing_key_id FROM hookbridge.secret_status"

say "producing sample events (only user.session.start and user.lifecycle.create are subscribed)"
"$BIN/hookbridge-producer" deploy/local/sample-events.jsonl
"$BIN/hookbridge-producer" --generate 20

free_port IPORT
say "starting the Okta event-hook endpoint on 127.0.0.1:$IPORT/okta/events, and posting to it as Okta would"
free_port INGEST_HEALTH_PORT
stack_spawn ingest env HOOKBRIDGE_INGEST_AUTH_VALUE="Bearer demo-okta-hook" \
  HOOKBRIDGE_HTTP_LISTEN="127.0.0.1:$INGEST_HEALTH_PORT" \
  "$BIN/hookbridge-producer" --listen "127.0.0.1:$IPORT"
for _ in $(seq 100); do # at most 10 s for it to listen (Okta's verification GET)
  curl -fsS -o /dev/null -H "Authorization: Bearer demo-okta-hook" \
    -H "X-Okta-Verification-Challenge: demo" "http://127.0.0.1:$IPORT/okta/events" 2>/dev/null && break
  sleep 0.1
done
OKTA_HOOK=$(jq -nc --argjson ev "$(sed -n 2p deploy/local/sample-events.jsonl)" \
  --arg id "$(cat /proc/sys/kernel/random/uuid)" --arg at "$(date -u +%FT%TZ)" \
  '{eventType: "com.okta.event_hook", eventTypeVersion: "1.0", cloudEventsVersion: "0.1",
    source: "https://example.okta.com/api/v1/eventHooks/demo", eventId: $id, eventTime: $at,
    contentType: "application/json", data: {events: [$ev]}}')
echo "POST /okta/events -> $(curl -sS -w ' (HTTP %{http_code})' -H 'Authorization: Bearer demo-okta-hook' \
  -H 'Content-Type: application/json' --data-binary "$OKTA_HOOK" "http://127.0.0.1:$IPORT/okta/events")"

# What the wait below found wanting, when it gave up: the flaky receiver's
# deliveries that are not delivered, and what the retrier, the dispatcher and
# the receiver logged about them, so a demo (or a test) that stops short
# explains itself.
flaky_report() {
  local ids id
  echo "the flaky receiver's deliveries did not all get through within ${WAIT_LIMIT}s" \
    "(schedule $HOOKBRIDGE_RETRY_SCHEDULE); waiting for:"
  stack_psql -c "SELECT delivery_id, status, attempts, last_http_status, last_error,
                        last_attempt_at::time(3) AS last_attempt_at, now()::time(3) AS now
                   FROM hookbridge.deliveries
                  WHERE subscription_id = '$FSUB' AND status <> 'delivered' ORDER BY 1"
  ids=$(stack_psql -At -c "SELECT delivery_id FROM hookbridge.deliveries
                            WHERE subscription_id = '$FSUB' AND status <> 'delivered'")
  if [ -z "$ids" ]; then
    echo "(no delivery of the flaky receiver in the log at all: none was attempted)"
    echo "-- the dispatcher's log about the flaky subscription ($FSUB):"
    grep -F "$FSUB" "$STACK_DIR/dispatcher.log" | tail -n 20 || echo "(nothing)"
  fi
  for id in $ids; do
    echo "-- the retrier's log about $id:"
    grep -F "$id" "$STACK_DIR/retrier.log" || echo "(nothing)"
    echo "-- the dispatcher's log about $id:"
    grep -F "$id" "$STACK_DIR/dispatcher.log" || echo "(nothing)"
    echo "-- requests the flaky receiver logged for it:"
    grep -cF "\"webhook_id\":\"$id\"" "$STACK_DIR/flaky.log" || true
  done
  local svc pid addr
  for svc in retrier dispatcher; do
    if [ "$svc" = retrier ]; then pid=$STACK_RETRIER_PID addr=$STACK_RETRIER_HTTP; else
      pid=$STACK_DISPATCHER_PID addr=$STACK_DISPATCHER_HTTP
    fi
    if kill -0 "$pid" 2>/dev/null; then
      echo "-- the $svc (pid $pid) runs; /healthz: $(curl -sS -m 5 "http://$addr/healthz" 2>&1)," \
        "/readyz: $(curl -sS -m 5 "http://$addr/readyz" 2>&1)"
    else
      echo "-- the $svc (pid $pid) is gone; the end of its log:"
      stack_log_tail "$svc" 20
    fi
  done
  echo "-- the retrier's warnings, errors, partitions and consumption:"
  grep -E '"level":"(warn|error)"|assigned|revoking|paused at offset|consumption|delivery log' \
    "$STACK_DIR/retrier.log" | grep -v '"source":"librdkafka","facility":"CONFWARN"' | tail -n 40 || true
  echo "-- the retrier's metrics (http://$STACK_RETRIER_HTTP/metrics):"
  curl -fsS -m 5 "http://$STACK_RETRIER_HTTP/metrics" 2>&1 |
    grep -E '^hookbridge_(stale_retries_dropped|retry_hops|partition_pauses|consumption_pause|deliveries_total|database_errors|endpoint_busy|ordering_waits|circuit)' ||
    true
}

say "waiting for the flaky receiver's retries (schedule $HOOKBRIDGE_RETRY_SCHEDULE)"
# Until every flaky delivery got through, at most WAIT_LIMIT seconds by the
# clock (not by turns of the loop, which a loaded machine stretches).
WAIT_LIMIT=${HOOKBRIDGE_RUN_WAIT:-60}
WAIT_UNTIL=$((SECONDS + WAIT_LIMIT))
while :; do
  PENDING=$(stack_psql -At -c "SELECT count(*) FILTER (WHERE status <> 'delivered')
                                      + (count(*) FILTER (WHERE status = 'delivered') = 0)::int
                                 FROM hookbridge.deliveries WHERE subscription_id = '$FSUB'")
  [ "$PENDING" -eq 0 ] && break
  if [ "$SECONDS" -ge "$WAIT_UNTIL" ]; then
    flaky_report
    break
  fi
  sleep 0.2
done
say "the delivery log (hookbridge.deliveries)"
stack_psql -c "SELECT s.name AS subscription, d.status, d.attempts, count(*) AS deliveries
                 FROM hookbridge.deliveries d JOIN hookbridge.subscriptions s ON s.id = d.subscription_id
                GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
stack_psql -c "SELECT a.attempt, a.outcome, a.http_status, a.started_at::time(0) AS at, a.error
                 FROM hookbridge.delivery_attempts a
                WHERE a.delivery_id = (SELECT delivery_id FROM hookbridge.deliveries
                                        WHERE subscription_id = '$FSUB'
                                        ORDER BY status = 'delivered' DESC, attempts DESC
                                        LIMIT 1)
                ORDER BY a.attempt"

say "try it: the stack runs until Ctrl-C"
echo "SQL (the README's examples): psql '$HOOKBRIDGE_DATABASE_URL'"
echo "events: HOOKBRIDGE_KAFKA_BROKERS=$HOOKBRIDGE_KAFKA_BROKERS $BIN/hookbridge-producer --generate 10"
echo "metrics: http://$STACK_DISPATCHER_HTTP/metrics and http://$STACK_RETRIER_HTTP/metrics"

say "the receivers' output (Ctrl-C stops everything)"
tail -n +1 -f "$STACK_DIR/receiver.log" "$STACK_DIR/flaky.log" &
stack_track $! "tail"
wait "$RECEIVER_PID"
