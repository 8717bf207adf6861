#!/usr/bin/env bash
# A private three-node RabbitMQ cluster on this machine: nodes on AMQP ports
# BASE, BASE+1 and BASE+2 (each one a scripts/broker.sh node with its own data
# directory, wiped at each start), sharing one Erlang cookie, the second and
# third joined to the first. Quorum queues declared on it are replicated on
# all three. `stop-node`/`start-node` stop and restart one member, keeping its data;
# `stop-app`/`start-app` stop and start only its RabbitMQ application (the
# Erlang node stays up and its clients' connections are reset), as an upgrade
# or `rabbitmqctl stop_app` does.
#
# Usage: scripts/cluster.sh start|ensure|stop|urls|leader QUEUE|transfer-leader QUEUE PORT|stop-node PORT|start-node PORT|stop-app PORT|start-app PORT
# Environment: MISIVA_CLUSTER_PORT (BASE, default 5691), MISIVA_RABBITMQ (3.10 or 4.0)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
base="${MISIVA_CLUSTER_PORT:-5691}"
ports=("$base" "$((base + 1))" "$((base + 2))")
export MISIVA_BROKER_COOKIE="misiva-cluster-cookie-$base"
node() { MISIVA_BROKER_PORT="$1" "$root/scripts/broker.sh" "${@:2}"; }

start() {
  # A fresh cluster each time: a node that was not the last of its cluster to
  # stop would wait at boot for the others, which start after it.
  for port in "${ports[@]}"; do node "$port" wipe >/dev/null 2>&1 || true; done
  for port in "${ports[@]}"; do node "$port" start; done
  for port in "${ports[@]:1}"; do
    # Already a member: nothing to do (a restart keeps the membership).
    if node "$port" ctl cluster_status 2>/dev/null | grep -q "misiva-${ports[0]}@"; then
      continue
    fi
    node "$port" ctl stop_app >/dev/null 2>&1
    node "$port" ctl reset >/dev/null 2>&1
    node "$port" ctl join_cluster "misiva-${ports[0]}@localhost" >/dev/null 2>&1
    node "$port" ctl start_app >/dev/null 2>&1
  done
  node "${ports[0]}" ctl await_online_nodes 3 >/dev/null 2>&1 || true
  echo "cluster: 3 nodes on ports ${ports[*]}" >&2
}

# The cluster as `start` leaves it, started only if it is not: the first
# node answers and lists all three as running. The test script starts the
# cluster in the background while the tests compile; the cluster tests then
# find it ready.
ensure() {
  running="$(node "${ports[0]}" ctl cluster_status 2>/dev/null \
    | sed -n '/Running Nodes/,/Versions/p' | grep -c '^misiva-' || true)"
  if [ "$running" = 3 ]; then return 0; fi
  start
}

stop() {
  for port in "${ports[@]}"; do node "$port" stop || true; done
}

case "${1:-}" in
  start) start ;;
  ensure) ensure ;;
  stop) stop ;;
  urls) printf 'amqp://guest:guest@127.0.0.1:%s/%%2f,' "${ports[@]}" | sed 's/,$//'; echo ;;
  # The port of the node that leads QUEUE.
  leader)
    leader="$(node "${ports[0]}" ctl list_queues name leader | awk -v q="$2" '$1==q {print $2}')"
    echo "${leader#misiva-}" | sed 's/@.*//' ;;
  # Moves QUEUE's leadership to the node on PORT (RabbitMQ's own transfer,
  # which its leader rebalancing uses) and waits until it is there.
  transfer-leader)
    target="misiva-$3@localhost"
    node "${ports[0]}" ctl eval "{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"$2\">>)), rabbit_quorum_queue:transfer_leadership(Q, '$target')." >/dev/null
    for _ in $(seq 1 50); do
      now="$(node "${ports[0]}" ctl list_queues name leader | awk -v q="$2" '$1==q {print $2}')"
      if [ "$now" = "$target" ]; then exit 0; fi
      sleep 0.2
    done
    echo "cluster: the leadership of $2 did not move to $target" >&2; exit 1 ;;
  stop-node) node "$2" stop ;;
  start-node) node "$2" start ;;
  stop-app) node "$2" ctl stop_app >/dev/null ;;
  start-app) node "$2" ctl start_app >/dev/null ;;
  *) echo "usage: $0 start|ensure|stop|urls|leader QUEUE|transfer-leader QUEUE PORT|stop-node PORT|start-node PORT|stop-app PORT|start-app PORT" >&2; exit 2 ;;
esac
