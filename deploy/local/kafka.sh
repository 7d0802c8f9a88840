#!/usr/bin/env bash
# Apache Kafka (KRaft, no ZooKeeper) on loopback, for local runs and tests.
#
# The broker is not installed from a distribution tarball: Maven resolves
# org.apache.kafka:kafka_2.13 and its runtime dependencies from the POM in
# deploy/kafka/pom.xml into a cache outside the repository
# ($HOOKBRIDGE_KAFKA_CACHE, default ~/.cache/hookbridge/kafka-$KAFKA_VERSION/libs),
# and this script does what Apache's bin/kafka-storage.sh (kafka.tools.StorageTool
# format) and bin/kafka-server-start.sh (kafka.Kafka server.properties) do,
# with a small heap and the serial collector: the machines have 2 cores.
#
#   kafka.sh fetch                 jars into the cache when missing; prints the directory
#   kafka.sh prepare DIR [NODES]   NODES (1 or 3, default 1) combined broker+controller
#                                  nodes in DIR: free loopback ports, server.properties,
#                                  formatted storage; writes DIR/bootstrap (host:port,...)
#   kafka.sh node DIR ID           runs node ID of DIR in the foreground (exec java)
#   kafka.sh start DIR [NODES]     prepare, start every node in the background, wait
#                                  until each has started; prints the bootstrap list
#   kafka.sh wait DIR [SECONDS]    waits until every node of DIR logged its start
#   kafka.sh stop DIR              stops the nodes `start` started (SIGTERM, then SIGKILL)
#
# One node: replication factor 1. Three nodes: replication factor 3,
# min.insync.replicas=2 (for failover tests). Topics are never created
# automatically (auto.create.topics.enable=false, as in production):
# `hookbridge-migrate topics` creates them. The consumer-group coordinator
# starts a group without the usual 3 s initial delay, and a node that stops
# heartbeating is fenced (its partitions led elsewhere) after 4 s, not 9 s.
#
# Settings: KAFKA_VERSION (default from the POM), KAFKA_JVM (test or server:
# see java_cmd), KAFKA_HEAP (default 512m for test, 1g for server),
# HOOKBRIDGE_KAFKA_CACHE, KAFKA_LOG_LEVEL (default WARN), KAFKA_JVM_OPTS (more
# JVM options, after ours: e.g. -Xlog:gc:file=gc.log).
#
# SASL_SSL, as production brokers take clients (for `prepare` and `start`):
# KAFKA_SASL_SSL_KEYSTORE names a PEM file with the server's private key
# (PKCS#8, unencrypted) and certificate chain; every node then also listens
# for clients on a SASL_SSL listener of its own (mechanisms SCRAM-SHA-512 and
# PLAIN) and DIR/bootstrap-sasl-ssl lists those. KAFKA_SASL_SSL_USERS
# ("name=password ...", letters, digits, '-' and '_' only) are the users of
# both: stored as SCRAM-SHA-512 credentials when the storage is formatted
# (KRaft has no ZooKeeper to add them to later), and in the PLAIN login
# module's configuration. (librdkafka before 2.6.1 cannot authenticate with
# SCRAM to Kafka 4: docs/operations.md.) The controller and inter-broker
# listeners stay PLAINTEXT, and so does DIR/bootstrap.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
POM=$ROOT/deploy/kafka/pom.xml
KAFKA_VERSION=${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")}
CACHE=${HOOKBRIDGE_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hookbridge/kafka-$KAFKA_VERSION/libs}
HEAP=${KAFKA_HEAP:-512m}

die() {
  echo "kafka.sh: $*" >&2
  exit 1
}


cmd_fetch() {
  if [ ! -f "$CACHE/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Apache Kafka"
    local tmp=$CACHE.tmp.$$
    rm -rf "$tmp"
    mkdir -p "$(dirname "$CACHE")"
    echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION with Maven into $CACHE" >&2
    # Debian's Maven prints colour codes even when quiet: keep its output for errors.
    mvn -q -B -f "$POM" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.log" 2>&1 ||
      {
        cat "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
      }
    rm -f "$tmp.log"
    rm -rf "$CACHE"
    mv "$tmp" "$CACHE"
  fi
  echo "$CACHE"
}

# Sets JAVA to the JVM's command line for the nodes of DIR $1.
#   KAFKA_JVM=test    (default) starts fast and stays small, for the tests: the
#                     serial collector, a heap that grows from 64 MiB, the C1
#                     compiler only. Its old generation grows by full
#                     collections that stop the broker (61 ms measured, while
#                     the bench measured latency).
#   KAFKA_JVM=server  what Apache Kafka's own kafka-server-start.sh and
#                     kafka-run-class.sh start a broker with: a fixed 1 GiB heap
#                     (KAFKA_HEAP), G1 aiming at 20 ms pauses, both compilers.
#                     make bench uses it (with the C1 compiler only: see
#                     scripts/bench.sh): a production broker is not run as a
#                     test's.
java_cmd() {
  case ${KAFKA_JVM:-test} in
  test) JAVA=(java -Xmx"$HEAP" -Xms64m -Xss512k -XX:+UseSerialGC -XX:TieredStopAtLevel=1) ;;
  server)
    JAVA=(java -Xmx"${KAFKA_HEAP:-1g}" -Xms"${KAFKA_HEAP:-1g}" -server -XX:+UseG1GC
      -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
      -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15)
    ;;
  *) die "KAFKA_JVM must be test or server" ;;
  esac
  JAVA+=(-XX:-UsePerfData -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$1/log4j2.properties")
  # shellcheck disable=SC2206 # options are words
  [ -z "${KAFKA_JVM_OPTS:-}" ] || JAVA+=($KAFKA_JVM_OPTS)
  JAVA+=(-cp "$CACHE/*")
}

write_log4j() {
  cat >"$1/log4j2.properties" <<EOF
status = error
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${KAFKA_LOG_LEVEL:-WARN}
rootLogger.appenderRef.out.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
EOF
}

cmd_prepare() {
  local dir=$1 nodes=${2:-1} i rf voters="" cluster_id
  case $nodes in 1 | 3) ;; *) die "NODES must be 1 or 3" ;; esac
  cmd_fetch >/dev/null
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  write_log4j "$dir"
  local -a ports cports chosen
  # all at once: distinct (deploy/local/free_ports.py)
  read -ra chosen <<<"$(/usr/bin/python3 "$ROOT/deploy/local/free_ports.py" $((3 * nodes)) | tr '\n' ' ')"
  local -a sports
  for ((i = 1; i <= nodes; i++)); do
    ports[i]=${chosen[3 * i - 3]}
    cports[i]=${chosen[3 * i - 2]}
    sports[i]=${chosen[3 * i - 1]}
    voters+="${voters:+,}$i@127.0.0.1:${cports[i]}"
  done
  local keystore=${KAFKA_SASL_SSL_KEYSTORE:-} user plain_users=""
  for user in ${KAFKA_SASL_SSL_USERS:-}; do
    plain_users+=" user_${user%%=*}=\"${user#*=}\""
  done
  if [ -n "$keystore" ]; then
    [ -f "$keystore" ] || die "KAFKA_SASL_SSL_KEYSTORE: no file $keystore"
    keystore=$(cd "$(dirname "$keystore")" && pwd)/$(basename "$keystore")
  fi
  rf=$nodes
  local min_isr=$((nodes == 3 ? 2 : 1))
  # A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
  # One that starts with '-' would be read as an option by kafka-storage
  # (1 time in 64): draw again.
  cluster_id=-
  while [ "${cluster_id#-}" != "$cluster_id" ]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  local bootstrap="" sbootstrap="" listeners advertised
  for ((i = 1; i <= nodes; i++)); do
    mkdir -p "$dir/node-$i/data"
    listeners=PLAINTEXT://127.0.0.1:${ports[i]},CONTROLLER://127.0.0.1:${cports[i]}
    advertised=PLAINTEXT://127.0.0.1:${ports[i]}
    if [ -n "$keystore" ]; then
      listeners+=,SASL_SSL://127.0.0.1:${sports[i]}
      advertised+=,SASL_SSL://127.0.0.1:${sports[i]}
      sbootstrap+="${sbootstrap:+,}127.0.0.1:${sports[i]}"
    fi
    cat >"$dir/node-$i/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$dir/node-$i/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.segment.bytes=16777216
log.flush.interval.messages=9223372036854775807
log.retention.check.interval.ms=60000
EOF
    if [ -n "$keystore" ]; then
      cat >>"$dir/node-$i/server.properties" <<EOF
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain_users;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$keystore
EOF
    fi
    bootstrap+="${bootstrap:+,}127.0.0.1:${ports[i]}"
  done
  # Format every node's storage, in parallel (one short JVM each).
  local -a pids scram=()
  for user in ${KAFKA_SASL_SSL_USERS:-}; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%=*},password=${user#*=}]")
  done
  java_cmd "$dir"
  for ((i = 1; i <= nodes; i++)); do
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$dir/node-$i/server.properties" "${scram[@]}" --ignore-formatted >"$dir/node-$i/format.log" 2>&1 &
    pids[i]=$!
  done
  for ((i = 1; i <= nodes; i++)); do
    wait "${pids[i]}" || { cat "$dir/node-$i/format.log" >&2; die "formatting node $i failed"; }
  done
  echo "$nodes" >"$dir/nodes"
  echo "$bootstrap" >"$dir/bootstrap"
  [ -z "$sbootstrap" ] || echo "$sbootstrap" >"$dir/bootstrap-sasl-ssl"
  echo "$bootstrap"
}

cmd_node() {
  local dir=$1 id=$2
  [ -f "$dir/node-$id/server.properties" ] || die "no node $id in $dir (run prepare first)"
  java_cmd "$dir"
  exec "${JAVA[@]}" kafka.Kafka "$dir/node-$id/server.properties"
}

# 0 once node $2 of $1 logged that it started.
node_started() {
  grep -q 'Kafka Server started' "$1/node-$2/server.log" 2>/dev/null
}

cmd_wait() {
  local dir=$1 secs=${2:-60} nodes i n
  nodes=$(cat "$dir/nodes")
  n=$((secs * 10))
  while [ "$n" -gt 0 ]; do
    local up=0
    for ((i = 1; i <= nodes; i++)); do
      if node_started "$dir" "$i"; then up=$((up + 1)); fi
      if [ -f "$dir/node-$i/pid" ] && ! kill -0 "$(cat "$dir/node-$i/pid")" 2>/dev/null; then
        tail -30 "$dir/node-$i/server.log" >&2
        die "node $i exited"
      fi
    done
    [ "$up" -lt "$nodes" ] || return 0
    sleep 0.1
    n=$((n - 1))
  done
  die "Apache Kafka did not start within ${secs}s (logs in $dir/node-*/server.log)"
}

cmd_start() {
  local dir=$1 nodes=${2:-1} i
  cmd_prepare "$dir" "$nodes" >/dev/null
  dir=$(cd "$dir" && pwd)
  for ((i = 1; i <= nodes; i++)); do
    nohup "$0" node "$dir" "$i" >"$dir/node-$i/server.log" 2>&1 </dev/null &
    echo $! >"$dir/node-$i/pid"
  done
  cmd_wait "$dir" 90
  cat "$dir/bootstrap"
}

# SIGTERM to every node at once (a node waiting for a quorum that is going
# away would otherwise take half a minute), SIGKILL after 10 s: the data is
# throwaway.
cmd_stop() {
  local dir=$1 f pid n
  local -a pids=()
  for f in "$dir"/node-*/pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    rm -f "$f"
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    n=100
    while [ "$n" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
      sleep 0.1
      n=$((n - 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

case ${1:-} in
fetch) cmd_fetch ;;
prepare) cmd_prepare "${2:?DIR}" "${3:-1}" ;;
node) cmd_node "${2:?DIR}" "${3:?ID}" ;;
start) cmd_start "${2:?DIR}" "${3:-1}" ;;
wait) cmd_wait "${2:?DIR}" "${3:-60}" ;;
stop) cmd_stop "${2:?DIR}" ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
  ;;
esac
