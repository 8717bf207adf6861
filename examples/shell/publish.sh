#!/usr/bin/env bash
# Publish one push job to Misiva's work queue from the shell with amqp-publish
# (Debian's amqp-tools). amqp-publish does not ask for publisher confirms: the
# broker has routed the message once the command's clean close succeeded, but
# a broker crash in that instant could lose it. Good for scripts and ops; an
# application should publish with confirms (see the other examples).
#
#   apt-get install amqp-tools
#   MISIVA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f TOKEN=<hex> ./publish.sh
set -euo pipefail
url="${MISIVA_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
queue="${MISIVA_QUEUE:-misiva.jobs}"
id="sh-$(cat /proc/sys/kernel/random/uuid)"
printf '{"id":"%s","token":"%s","alert":"Hello from the shell"}' "$id" "$TOKEN" |
  amqp-publish --url="$url" --routing-key="$queue" \
    --content-type=application/json --persistent
echo "$id"
