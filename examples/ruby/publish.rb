# Publish one push job to Misiva's work queue with Bunny, confirmed by the broker.
#
#   gem install bunny
#   MISIVA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f TOKEN=<hex> ruby publish.rb
require "bunny"
require "json"
require "securerandom"

url = ENV.fetch("MISIVA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
queue = ENV.fetch("MISIVA_QUEUE", "misiva.jobs")
job = {
  id: "rb-#{SecureRandom.uuid}",
  token: ENV.fetch("TOKEN"),
  alert: { title: "Your order has shipped", body: "It arrives on Friday." },
}

connection = Bunny.new(url)
connection.start
channel = connection.create_channel
channel.confirm_select
channel.default_exchange.publish(
  JSON.generate(job),
  routing_key: queue,
  content_type: "application/json",
  persistent: true,
  message_id: job[:id],
  mandatory: true,
)
raise "the broker did not confirm the job" unless channel.wait_for_confirms
connection.close
puts job[:id]
