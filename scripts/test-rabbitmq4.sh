#!/usr/bin/env bash
# The broker-facing integration tests against RabbitMQ 4.0 (Debian 13's
# 4.0.5), run from a Debian 13 root that scripts/broker.sh builds with
# debootstrap the first time (about 40 s; needs root and Debian's mirror).
# Run scripts/test.sh first: it installs what the examples and tools need.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export MISIVA_RABBITMQ=4.0
export MISIVA_TEST_BROKER_PORT="${MISIVA_TEST_BROKER_PORT:-5698}"

MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh start
stop_broker() { MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh stop-tests; }
trap stop_broker EXIT
echo "test: RabbitMQ $(MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh version)" >&2
# One file of the suite (tests/suite.rs) at a time, as scripts/test.sh runs
# the fault suites: the cluster's and the urgent lane's bounds are in
# milliseconds.
for name in worker hostile failures retries supervision metrics dlq examples cluster shards urgent; do
  cargo test --locked --features fault-hooks --test suite -- --nocapture "$name::"
done
