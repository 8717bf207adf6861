#!/usr/bin/env bash
# The whole test suite, from a fresh machine with only the Rust toolchain:
# installs RabbitMQ and promtool from Debian's packages if missing, starts the private test
# node, checks formatting and lints, runs every test, and stops the node.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export MISIVA_TEST_BROKER_PORT="${MISIVA_TEST_BROKER_PORT:-5699}"

# promtool checks and unit-tests the alert rules (tests/observability.rs).
if ! command -v promtool >/dev/null 2>&1; then
  echo "test: installing promtool (Debian's prometheus package)" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh start
# The shared node, and the private ones the fault tests stop and restart.
stop_broker() {
  for port in "$MISIVA_TEST_BROKER_PORT" 5697 5696; do
    MISIVA_BROKER_PORT="$port" scripts/broker.sh stop >/dev/null 2>&1 || true
  done
}
trap stop_broker EXIT

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The fault-injection hooks (consumer panics on demand) exist only in test builds.
cargo clippy --all-targets --locked --features fault-hooks -- -D warnings
# --nocapture shows the figures tests print (throughput of the 1,000-job test).
cargo test --locked --features fault-hooks -- --nocapture
