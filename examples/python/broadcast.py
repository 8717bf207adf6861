"""Publish one Live Activity broadcast (a channel job) with pika, confirmed by
the broker: one job, one request to APNs, every device subscribed to the
channel updated. Make the channel once with `misiva channels create`.

    pip install pika
    CHANNEL=$(misiva channels create --storage latest)
    MISIVA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f CHANNEL=$CHANNEL python3 broadcast.py
"""

import json
import os
import time
import uuid

import pika

url = os.environ.get("MISIVA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
queue = os.environ.get("MISIVA_QUEUE", "misiva.jobs")

job = {
    "id": f"py-broadcast-{uuid.uuid4()}",
    "channel": os.environ["CHANNEL"],
    "live_activity": {
        "event": "update",
        "content_state": {"home": 2, "away": 1, "minute": 78},
        # Shown as out of date if no newer update arrives within 10 minutes.
        "stale_date": int(time.time()) + 600,
    },
    "alert": {"title": "Goal!", "body": "2-1 in the 78th minute"},
}

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish(
    exchange="",
    routing_key=queue,
    body=json.dumps(job).encode(),
    properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=job["id"],
    ),
    mandatory=True,
)
connection.close()
print(job["id"])
