#!/usr/bin/env bash
# Runs a private RabbitMQ node for Misiva's demo, tests and benchmarks.
#
# The node has its own name, AMQP port, distribution port, data directory and
# Erlang cookie, so it never touches a system broker and a test can stop and
# restart it at will. RabbitMQ comes from Debian's packages; it is installed
# when missing (that needs root or sudo and access to the Debian mirror).
#
# With MISIVA_RABBITMQ=4.0 the node is RabbitMQ 4.0 (Debian 13's package),
# run from a Debian 13 root that `debootstrap` builds once into
# target/debian13 (about 40 s; the mirror is read from this machine's apt
# sources, never written here). That needs root.
#
# Usage: scripts/broker.sh install|start|stop|restart|status|ctl ARGS...|url|version|wipe|stop-tests
# Environment:
#   MISIVA_BROKER_PORT  AMQP port of the node (default 5682)
#   MISIVA_BROKER_DIR   data directory (default target/broker-<port>; 3.10 only)
#   MISIVA_RABBITMQ     3.10 (default: this machine's Debian 12 package) or 4.0
#   MISIVA_BROKER_COOKIE  the Erlang cookie, for nodes that form a cluster
#   MISIVA_BROKER_PLUGINS  plugins enabled at start, comma-separated (default:
#                       rabbitmq_consistent_hash_exchange, which MISIVA_SHARDS
#                       needs; "none" for a node without plugins)
set -euo pipefail

port="${MISIVA_BROKER_PORT:-5682}"
root="$(cd "$(dirname "$0")/.." && pwd)"
version="${MISIVA_RABBITMQ:-3.10}"
node="misiva-$port@localhost"
sbin=/usr/lib/rabbitmq/bin
case "$version" in
  3.10)
    # Paths as the node sees them are the machine's own.
    prefix=""
    inroot=()
    dir="${MISIVA_BROKER_DIR:-$root/target/broker-$port}"
    ;;
  4.0)
    prefix="${MISIVA_DEBIAN13_ROOT:-$root/target/debian13}"
    inroot=(chroot "$prefix")
    dir="/var/lib/misiva-broker-$port"
    ;;
  *) echo "broker: MISIVA_RABBITMQ must be 3.10 or 4.0, not $version" >&2; exit 2 ;;
esac

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
# A crashing node (or rabbitmqctl) writes its dump here, not into the caller's
# working directory (the repository).
export ERL_CRASH_DUMP="$dir/erl_crash.dump"

# The first Debian mirror of this machine's apt sources.
mirror() {
  local m
  m="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v -- '-security' | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//; s/ .*//' | head -n 1)"
  echo "${m:-http://deb.debian.org/debian}"
}

install_debian13() {
  if [ ! -x "$prefix$sbin/rabbitmq-server" ]; then
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    if ! command -v debootstrap >/dev/null 2>&1; then
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    echo "broker: building a Debian 13 root with RabbitMQ 4.0 in $prefix (once)" >&2
    rm -rf "$prefix.partial"
    $sudo debootstrap --variant=minbase --include=rabbitmq-server trixie "$prefix.partial" "$(mirror)" >"$root/target/debootstrap.log" 2>&1 \
      || { echo "broker: debootstrap failed; see target/debootstrap.log" >&2; return 1; }
    mv "$prefix.partial" "$prefix"
  fi
  # Erlang reads /proc; the root shares this machine's network and epmd.
  if ! mountpoint -q "$prefix/proc"; then mount -t proc proc "$prefix/proc"; fi
}

install() {
  if [ "$version" = 4.0 ]; then install_debian13; return; fi
  if [ -x "$sbin/rabbitmq-server" ]; then return 0; fi
  echo "broker: installing rabbitmq-server from Debian's packages" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  # Debian starts a system node on 5672 where an init system runs; ours is separate.
}

ctl() { "${inroot[@]}" "$sbin/rabbitmqctl" -q -n "$node" "$@"; }

running() { ctl status >/dev/null 2>&1; }

start() {
  install
  mkdir -p "$prefix$HOME" "$prefix$RABBITMQ_MNESIA_BASE" "$prefix$RABBITMQ_LOG_BASE"
  # Nodes of one cluster share an Erlang cookie (scripts/cluster.sh sets it).
  if [ -n "${MISIVA_BROKER_COOKIE:-}" ]; then
    rm -f "$prefix$HOME/.erlang.cookie"
    printf '%s' "$MISIVA_BROKER_COOKIE" >"$prefix$HOME/.erlang.cookie"
    chmod 400 "$prefix$HOME/.erlang.cookie"
  fi
  : >"$prefix$RABBITMQ_CONF_ENV_FILE"
  local plugins="${MISIVA_BROKER_PLUGINS:-rabbitmq_consistent_hash_exchange}"
  if [ "$plugins" = none ]; then plugins=""; fi
  echo "[$plugins]." >"$prefix$RABBITMQ_ENABLED_PLUGINS_FILE"
  echo "[]." >"$prefix$RABBITMQ_ADVANCED_CONFIG_FILE"
  cat >"$prefix$RABBITMQ_CONFIG_FILE" <<CONF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = warning
# Fresh queue counts for list_queues (the demo and tests read them).
collect_statistics_interval = 500
CONF
  if running; then echo "broker: $node already running on port $port" >&2; return 0; fi
  # Its own process group, so that stop() can end every process of it.
  setsid nohup "${inroot[@]}" "$sbin/rabbitmq-server" >"$prefix$dir/server.out" 2>&1 &
  echo $! >"$prefix$dir/launcher.pid"
  for _ in $(seq 1 120); do
    if running && ctl await_startup >/dev/null 2>&1; then
      echo "broker: $node up, amqp://guest:guest@127.0.0.1:$port/%2f" >&2
      return 0
    fi
    sleep 0.5
  done
  echo "broker: $node did not start within 60 s; see $prefix$dir/server.out and $prefix$RABBITMQ_LOG_BASE" >&2
  tail -n 30 "$prefix$dir/server.out" >&2 || true
  return 1
}

stop() {
  if running; then ctl shutdown >/dev/null 2>&1 || ctl stop >/dev/null 2>&1 || true; fi
  for _ in $(seq 1 60); do running || break; sleep 0.5; done
  if running; then echo "broker: $node did not stop" >&2; return 1; fi
  # A node that never finished booting answers no rabbitmqctl but still holds
  # its ports: end the process start() launched.
  local pid
  pid="$(cat "$prefix$dir/launcher.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 -- "-$pid" 2>/dev/null; then
    kill -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$prefix$dir/launcher.pid"
  return 0
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo running; else echo stopped; exit 1; fi ;;
  ctl) shift; ctl "$@" ;;
  url) echo "amqp://guest:guest@127.0.0.1:$port/%2f" ;;
  version) ctl version ;;
  # Every node the test suites start: the shared one (this port), the private
  # ones of the supervision tests, the fault suite and the shard tests, and
  # the cluster.
  # The single nodes stop side by side; the cluster's three one after
  # another, in the order scripts/cluster.sh stops them, since the last
  # node of a cluster to stop is the one that starts it again.
  stop-tests)
    for p in "$port" 5697 5696 5694 5689; do
      MISIVA_BROKER_PORT="$p" "$0" stop >/dev/null 2>&1 &
    done
    for p in 5691 5692 5693; do
      MISIVA_BROKER_PORT="$p" "$0" stop >/dev/null 2>&1 || true
    done
    wait ;;
  # Stops the node and deletes its data: the next start is a fresh node.
  wipe) stop; rm -rf "$prefix$dir" ;;
  *) echo "usage: $0 install|start|stop|restart|status|ctl ARGS...|url|version|wipe|stop-tests" >&2; exit 2 ;;
esac
