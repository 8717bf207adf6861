//! Declares CONTRACT §1's queues and exchange, idempotently. A queue that
//! already exists with other arguments is reported with the queue's name and
//! the broker's own words about the differing argument.

use super::{AmqpError, Broker};
use crate::config::Config;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

#[derive(Debug, Clone)]
pub struct Topology {
    pub queue: String,
    /// The retry tiers, shortest delay first: (queue name, delay).
    pub retry_queues: Vec<(String, std::time::Duration)>,
    pub dead_letter_queue: String,
    pub feedback_exchange: String,
    pub feedback_queue: String,
}

impl Topology {
    pub fn from_config(config: &Config) -> Topology {
        Topology {
            queue: config.queue.clone(),
            retry_queues: config
                .retry_delays
                .iter()
                .map(|d| {
                    (
                        format!("{}.retry.{}", config.queue, crate::config::delay_label(*d)),
                        *d,
                    )
                })
                .collect(),
            dead_letter_queue: config.dead_letter_queue.clone(),
            feedback_exchange: config.feedback_exchange.clone(),
            feedback_queue: config.feedback_queue.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{kind} {name:?} exists with different arguments: {detail}")]
    Conflict {
        kind: &'static str,
        name: String,
        detail: String,
    },
    #[error("declaring {kind} {name:?} failed: {source}")]
    Declare {
        kind: &'static str,
        name: String,
        source: lapin::Error,
    },
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declares everything. Each declaration gets a fresh channel, because the
/// broker closes a channel whose declaration it refused.
pub async fn declare(broker: &Broker, topology: &Topology) -> Result<(), TopologyError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for name in [
        &topology.queue,
        &topology.dead_letter_queue,
        &topology.feedback_queue,
    ] {
        let channel = broker.channel().await?;
        channel
            .queue_declare(name.as_str().into(), durable, quorum())
            .await
            .map_err(|e| classify("queue", name, e))?;
        let _ = channel.close(200, "declared".into()).await;
    }
    // Retry tiers: classic queues (per-queue TTL expires from the head, which is
    // exact when every message has the same TTL) that dead-letter back to the
    // work queue through the default exchange.
    for (name, delay) in &topology.retry_queues {
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(topology.queue.as_str().into()),
        );
        let channel = broker.channel().await?;
        channel
            .queue_declare(name.as_str().into(), durable, args)
            .await
            .map_err(|e| classify("queue", name, e))?;
        let _ = channel.close(200, "declared".into()).await;
    }
    let channel = broker.channel().await?;
    channel
        .exchange_declare(
            topology.feedback_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify("exchange", &topology.feedback_exchange, e))?;
    channel
        .queue_bind(
            topology.feedback_queue.as_str().into(),
            topology.feedback_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify("binding of queue", &topology.feedback_queue, e))?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

fn classify(kind: &'static str, name: &str, error: lapin::Error) -> TopologyError {
    let text = error.to_string();
    // RabbitMQ answers 406 PRECONDITION_FAILED "inequivalent arg 'x-queue-type'
    // for queue ...: received 'quorum' but current is 'classic'".
    if text.contains("PRECONDITION_FAILED") || text.contains("inequivalent") {
        TopologyError::Conflict {
            kind,
            name: name.to_owned(),
            detail: text,
        }
    } else {
        TopologyError::Declare {
            kind,
            name: name.to_owned(),
            source: error,
        }
    }
}
