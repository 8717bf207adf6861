#!/usr/bin/env bash
# Runs a private RabbitMQ node for Misiva's demo, tests and benchmarks.
#
# The node has its own name, AMQP port, distribution port, data directory and
# Erlang cookie, so it never touches a system broker and a test can stop and
# restart it at will. RabbitMQ comes from Debian's packages; it is installed
# when missing (that needs root or sudo and access to the Debian mirror).
#
# Usage: scripts/broker.sh install|start|stop|restart|status|ctl ARGS...|url
# Environment:
#   MISIVA_BROKER_PORT  AMQP port of the node (default 5682)
#   MISIVA_BROKER_DIR   data directory (default target/broker-<port>)
set -euo pipefail

port="${MISIVA_BROKER_PORT:-5682}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${MISIVA_BROKER_DIR:-$root/target/broker-$port}"
node="misiva-$port@localhost"
sbin=/usr/lib/rabbitmq/bin

# Every RabbitMQ script reads these, so the node is private in every call.
export HOME="$dir/home"
export RABBITMQ_NODENAME="$node"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$port"
export RABBITMQ_DIST_PORT="$((port + 20000))"
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/node.pid"
export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_USE_LONGNAME=false

install() {
  if [ -x "$sbin/rabbitmq-server" ]; then return 0; fi
  echo "broker: installing rabbitmq-server from Debian's packages" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  # Debian starts a system node on 5672 where an init system runs; ours is separate.
}

ctl() { "$sbin/rabbitmqctl" -q -n "$node" "$@"; }

running() { ctl status >/dev/null 2>&1; }

start() {
  install
  mkdir -p "$HOME" "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
  : >"$RABBITMQ_CONF_ENV_FILE"
  echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  echo "[]." >"$RABBITMQ_ADVANCED_CONFIG_FILE"
  cat >"$RABBITMQ_CONFIG_FILE" <<CONF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = warning
# Fresh queue counts for list_queues (the demo and tests read them).
collect_statistics_interval = 500
CONF
  if running; then echo "broker: $node already running on port $port" >&2; return 0; fi
  nohup "$sbin/rabbitmq-server" >"$dir/server.out" 2>&1 &
  for _ in $(seq 1 120); do
    if running && ctl await_startup >/dev/null 2>&1; then
      echo "broker: $node up, amqp://guest:guest@127.0.0.1:$port/%2f" >&2
      return 0
    fi
    sleep 0.5
  done
  echo "broker: $node did not start within 60 s; see $dir/server.out and $RABBITMQ_LOG_BASE" >&2
  tail -n 30 "$dir/server.out" >&2 || true
  return 1
}

stop() {
  if running; then ctl shutdown >/dev/null 2>&1 || ctl stop >/dev/null 2>&1 || true; fi
  for _ in $(seq 1 60); do running || return 0; sleep 0.5; done
  echo "broker: $node did not stop" >&2
  return 1
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo running; else echo stopped; exit 1; fi ;;
  ctl) shift; ctl "$@" ;;
  url) echo "amqp://guest:guest@127.0.0.1:$port/%2f" ;;
  *) echo "usage: $0 install|start|stop|restart|status|ctl ARGS...|url" >&2; exit 2 ;;
esac
