// Publish one push job to Misiva's work queue with amqplib, confirmed by the broker.
//
//   npm install amqplib
//   MISIVA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f TOKEN=<hex> node publish.js
'use strict';
const amqp = require('amqplib');
const crypto = require('node:crypto');

async function main() {
  const url = process.env.MISIVA_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
  const queue = process.env.MISIVA_QUEUE || 'misiva.jobs';
  const job = {
    id: `node-${crypto.randomUUID()}`,
    token: process.env.TOKEN,
    alert: { title: 'Your order has shipped', body: 'It arrives on Friday.' },
    badge: 1,
  };
  const connection = await amqp.connect(url);
  // A confirm channel: the callback runs once the broker has the message.
  const channel = await connection.createConfirmChannel();
  await new Promise((resolve, reject) => {
    channel.sendToQueue(queue, Buffer.from(JSON.stringify(job)), {
      contentType: 'application/json',
      persistent: true,
      messageId: job.id,
      mandatory: true,
    }, (err) => (err ? reject(err) : resolve()));
  });
  await channel.close();
  await connection.close();
  console.log(job.id);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
