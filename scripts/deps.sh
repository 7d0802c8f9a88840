#!/bin/sh
# Installs the Debian packages hookbridge needs to build, run and test, when
# any is missing. Needs root (or sudo) only when something must be installed.
# `deps.sh --fuzz` (make fuzz) also installs clang's libFuzzer runtime;
# `deps.sh --valgrind` valgrind (make bench's instructions part).
set -eu
PKGS="build-essential pkg-config clang clang-format
librdkafka-dev libavro-dev libjansson-dev libcurl4-openssl-dev libpq-dev
libssl-dev libmicrohttpd-dev libcmocka-dev libmimalloc-dev
postgresql postgresql-contrib
python3 python3-pytest python3-pytest-xdist python3-psycopg2 python3-kafka python3-avro jq openssl
nginx-light wrk kcat curl
python3-yaml yamllint flake8
openjdk-17-jre-headless maven"
# `kubectl kustomize` renders deploy/k8s in the tests. Debian's
# kubernetes-client (kubectl 1.20) does; a kubectl already installed (any
# newer one) does too, and is not replaced.
command -v kubectl >/dev/null 2>&1 || PKGS="$PKGS kubernetes-client"
# `make bench` with BENCH_ONLY=instructions counts instructions under valgrind
[ "${1:-}" != --valgrind ] || PKGS="$PKGS valgrind"
if [ "${1:-}" = --fuzz ]; then # libFuzzer for the clang Debian has (14 on Debian 12)
  major=$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
  PKGS="$PKGS libclang-rt-${major:-14}-dev"
fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing="$missing $p"
done
# Apache Kafka for the tests and `make run KAFKA=apache`: jars fetched by Maven
# into ~/.cache/hookbridge once (deploy/local/kafka.sh), never into the tree.
fetch_kafka() {
  "$(dirname "$0")/../deploy/local/kafka.sh" fetch >/dev/null
}
if [ -z "$missing" ]; then
  fetch_kafka
  exit 0
fi
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
# The nginx package starts a system nginx on port 80; hookbridge runs its own.
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi
fetch_kafka
echo "deps: done"
