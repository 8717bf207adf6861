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
stop_broker() {
  for port in "$MISIVA_TEST_BROKER_PORT" 5697 5696 5691 5692 5693; do
    MISIVA_BROKER_PORT="$port" scripts/broker.sh stop >/dev/null 2>&1 || true
  done
}
trap stop_broker EXIT
echo "test: RabbitMQ $(MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh version)" >&2
cargo test --locked --features fault-hooks \
  --test worker --test hostile --test failures --test retries --test supervision \
  --test metrics --test dlq --test examples --test cluster -- --nocapture
