#!/usr/bin/env bash
# make run: the whole local stack on loopback, for a first look and for demos.
#
#   throwaway PostgreSQL  ->  hookbridge-migrate up
#   hookbridge-devbroker (embedded Kafka-protocol broker, for local use only)
#   hookbridge-receiver (the example receiver, checks signature and auth header)
#   hookbridge-dispatcher
# then registers a demo subscription for the receiver, verifies it, activates
# it, produces sample events, and follows the receiver's output. Ctrl-C stops
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

say "starting PostgreSQL"
stack_start_postgres

say "starting the embedded Kafka broker (local use only)"
stack_start_devbroker

say "applying migrations"
stack_migrate

SECRET="whsec_$(openssl rand -base64 32)"
AUTH_VALUE="Bearer demo-$(openssl rand -hex 8)"
RPORT=$(free_port)
say "starting the example receiver on 127.0.0.1:$RPORT"
stack_spawn receiver "$BIN/hookbridge-receiver" --listen "127.0.0.1:$RPORT" --secret "$SECRET" \
  --auth "Authorization: $AUTH_VALUE"
RECEIVER_PID=$STACK_LAST_PID

say "starting the dispatcher (loopback endpoints allowed for the demo)"
stack_start_dispatcher

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

say "producing sample events (only user.session.start and user.lifecycle.create are subscribed)"
"$BIN/hookbridge-producer" deploy/local/sample-events.jsonl
"$BIN/hookbridge-producer" --generate 20

say "the receiver's output (Ctrl-C stops everything)"
tail -n +1 -f "$STACK_DIR/receiver.log" &
stack_track $! "tail"
wait "$RECEIVER_PID"
