#!/usr/bin/env bash
# The quick start: a private RabbitMQ node, the APNs simulator and the worker on
# this machine; six sample jobs published; what APNs (the simulator) received,
# the worker's own counters, and the dead letter read with `misiva dlq`;
# everything stopped again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export MISIVA_BROKER_PORT="${MISIVA_BROKER_PORT:-5682}"
demo="$root/target/demo"
mkdir -p "$demo"

echo "== building misiva (release; the first build takes a few minutes) =="
cargo build --release --quiet
bin="$root/target/release/misiva"
echo "== starting a private RabbitMQ node on port $MISIVA_BROKER_PORT (installed from Debian if missing) =="
scripts/broker.sh start
admin="127.0.0.1:${MISIVA_DEMO_ADMIN_PORT:-9095}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

MISIVA_LOG=info MISIVA_LOG_FORMAT=text "$bin" apns-sim --listen 127.0.0.1:2197 --ca-out "$demo/sim-ca.pem" \
  --key-file "$demo/AuthKey_SIMKEY0001.p8" --show-deliveries --channels-listen 127.0.0.1:2196 2>"$demo/sim.log" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$demo/sim-ca.pem" ] && grep -q "ready" "$demo/sim.log" && break; sleep 0.1; done

export MISIVA_AMQP_URL="$(scripts/broker.sh url)"
export MISIVA_APNS_ENDPOINT=https://127.0.0.1:2197
export MISIVA_APNS_CA_FILE="$demo/sim-ca.pem"
export MISIVA_APNS_KEY_FILE="$demo/AuthKey_SIMKEY0001.p8"
export MISIVA_APNS_KEY_ID=SIMKEY0001 MISIVA_APNS_TEAM_ID=SIMTEAM001
export MISIVA_APNS_TOPIC=com.example.demo
export MISIVA_APNS_CHANNELS_ENDPOINT=https://127.0.0.1:2196
export MISIVA_LOG_FORMAT=text MISIVA_ADMIN_ADDR="$admin"
"$bin" run 2>"$demo/worker.log" &
worker=$!
pids+=($worker)
for _ in $(seq 1 100); do grep -q "worker running" "$demo/worker.log" && break; sleep 0.1; done

echo "== publishing examples/jobs.jsonl (6 jobs, 7 notifications) =="
"$bin" publish examples/jobs.jsonl
# The worker's own counters say when all six are settled.
metric() { curl -s "http://$admin/metrics" | awk -v n="$1" '$1 ~ "^"n {s+=$2} END {print s+0}'; }
for _ in $(seq 1 100); do
  [ "$(metric misiva_jobs_acked_total)" -ge 6 ] 2>/dev/null && break; sleep 0.1
done
echo
echo "== a Live Activity broadcast: misiva channels create, then one channel job =="
channel="$("$bin" channels create --storage latest)"
echo "channel $channel"
printf '{"id":"match-7-goal","channel":"%s","live_activity":{"event":"update","content_state":{"home":2,"away":1}},"alert":{"title":"Goal!"}}\n' "$channel" |
  "$bin" publish -
for _ in $(seq 1 100); do
  [ "$(metric misiva_jobs_acked_total)" -ge 7 ] 2>/dev/null && break; sleep 0.1
done
echo
echo "== what APNs (the simulator) received =="
grep "delivered" "$demo/sim.log" | sed -E 's/^.*delivered //' || true
echo
echo "== the worker's counters (/metrics) =="
curl -s "http://$admin/metrics" | grep -E '^misiva_(jobs_(acked|dead_lettered)|notifications|feedback_events)_total' || true
echo
echo "== misiva dlq stats =="
"$bin" dlq stats
echo
echo "== misiva dlq list =="
"$bin" dlq list
kill -TERM "$worker"; wait "$worker" || true
grep "worker stopped" "$demo/worker.log" | sed -E 's/^.*INFO //'
echo
echo "Logs: $demo/{worker,sim}.log. Stop the broker with: scripts/broker.sh stop"
