"""Publish one push job to Misiva's work queue with pika, confirmed by the broker.

    pip install pika
    MISIVA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f TOKEN=<hex> python3 publish.py
"""

import json
import os
import uuid

import pika

url = os.environ.get("MISIVA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
queue = os.environ.get("MISIVA_QUEUE", "misiva.jobs")

job = {
    "id": f"py-{uuid.uuid4()}",
    "token": os.environ["TOKEN"],
    "alert": {"title": "Your order has shipped", "body": "It arrives on Friday."},
    "badge": 1,
    "data": {"order": 1234},
}

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
# With confirms, basic_publish raises if the broker refuses the message, and
# mandatory makes an unroutable one (a wrong queue name) an error too.
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
