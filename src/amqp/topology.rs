//! Declares CONTRACT §1's queues and exchange, idempotently. A queue that
//! already exists with other arguments is reported with the queue's name and
//! the broker's own words about the differing argument.

use super::wire::short;
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

/// The work queue's own delivery limit: past it, the broker dead-letters a
/// message itself. The worker parks poison earlier (`MISIVA_MAX_DELIVERIES`,
/// below this); the broker's limit catches what kills a worker before it can
/// (a process abort while reading the message). 20 is also RabbitMQ 4's
/// default, made explicit so that 3.x behaves the same.
pub const BROKER_DELIVERY_LIMIT: u32 = 20;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), text("quorum"));
    args
}

/// The work queue's safety net (CONTRACT §1): messages past the delivery
/// limit are dead-lettered, at least once, to the dead-letter queue. RabbitMQ
/// requires `reject-publish` overflow for at-least-once dead-lettering.
const SAFETY_ARGUMENTS: [&str; 5] = [
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-overflow",
    "x-delivery-limit",
];

fn work_queue_arguments(topology: &Topology) -> FieldTable {
    let mut args = quorum();
    args.insert(short("x-dead-letter-exchange"), text(""));
    args.insert(
        short("x-dead-letter-routing-key"),
        text(&topology.dead_letter_queue),
    );
    args.insert(short("x-dead-letter-strategy"), text("at-least-once"));
    args.insert(short("x-overflow"), text("reject-publish"));
    args.insert(
        short("x-delivery-limit"),
        AMQPValue::LongLongInt(i64::from(BROKER_DELIVERY_LIMIT)),
    );
    args
}

/// Declares one durable queue on a channel of its own, because the broker
/// closes a channel whose declaration it refused.
async fn declare_queue(
    broker: &Broker,
    name: &str,
    args: FieldTable,
) -> Result<Result<(), lapin::Error>, TopologyError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let channel = broker.channel().await?;
    let declared = channel.queue_declare(short(name), durable, args).await;
    let _ = channel.close(200, short("declared")).await;
    Ok(declared.map(|_| ()))
}

/// Declares everything.
pub async fn declare(broker: &Broker, topology: &Topology) -> Result<(), TopologyError> {
    // The dead-letter queue first: the work queue dead-letters into it.
    for name in [&topology.dead_letter_queue, &topology.feedback_queue] {
        declare_queue(broker, name, quorum())
            .await?
            .map_err(|e| classify("queue", name, e))?;
    }
    declare_work_queue(broker, topology).await?;
    for (name, delay) in &topology.retry_queues {
        declare_retry_tier(broker, topology, name, *delay).await?;
    }
    let channel = broker.channel().await?;
    channel
        .exchange_declare(
            short(&topology.feedback_exchange),
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
            short(&topology.feedback_queue),
            short(&topology.feedback_exchange),
            short("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify("binding of queue", &topology.feedback_queue, e))?;
    let _ = channel.close(200, short("declared")).await;
    Ok(())
}

/// A retry tier's arguments: every message waits the tier's delay (one TTL
/// for the whole queue, so messages expire from the head in order), then is
/// dead-lettered back to the work queue. `classic` is what versions before
/// this one declared.
fn retry_tier_arguments(
    topology: &Topology,
    delay: std::time::Duration,
    classic: bool,
) -> FieldTable {
    let mut args = if classic {
        FieldTable::default()
    } else {
        quorum()
    };
    args.insert(
        short("x-message-ttl"),
        AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
    );
    args.insert(short("x-dead-letter-exchange"), text(""));
    args.insert(short("x-dead-letter-routing-key"), text(&topology.queue));
    if !classic {
        // Replicated, and dead-lettered at least once (RabbitMQ 3.10+): a
        // node lost while a job waits in a tier loses nothing.
        args.insert(short("x-dead-letter-strategy"), text("at-least-once"));
        args.insert(short("x-overflow"), text("reject-publish"));
    }
    args
}

/// Declares one retry tier as a quorum queue. A classic tier an earlier
/// version declared keeps working, with a warning: its dead-lettering back to
/// the work queue is at most once and it lives on one node.
async fn declare_retry_tier(
    broker: &Broker,
    topology: &Topology,
    name: &str,
    delay: std::time::Duration,
) -> Result<(), TopologyError> {
    let Err(error) =
        declare_queue(broker, name, retry_tier_arguments(topology, delay, false)).await?
    else {
        return Ok(());
    };
    let text = error.to_string();
    // RabbitMQ names the first argument it finds different, whichever of
    // the new ones that is; the classic declaration below checks the rest.
    let new_argument = matches!(
        inequivalent_argument(&text),
        Some("x-queue-type" | "x-overflow" | "x-dead-letter-strategy")
    );
    if !new_argument {
        return Err(classify("queue", name, error));
    }
    declare_queue(broker, name, retry_tier_arguments(topology, delay, true))
        .await?
        .map_err(|e| classify("queue", name, e))?;
    tracing::warn!(
        queue = %name,
        "this retry tier is a classic queue from an earlier version: it lives on one node and \
         moves jobs back to the work queue at most once. Migrate it when it is empty \
         (docs/operations.md, \"Migrating the retry tiers\")"
    );
    Ok(())
}

/// Declares the work queue with its safety net. A queue created by an
/// earlier version, without the net, keeps working: the worker says which
/// arguments are missing and how to add them (docs/operations.md), instead of
/// refusing to start. Any other difference is a conflict.
async fn declare_work_queue(broker: &Broker, topology: &Topology) -> Result<(), TopologyError> {
    let name = &topology.queue;
    let Err(error) = declare_queue(broker, name, work_queue_arguments(topology)).await? else {
        return Ok(());
    };
    let text = error.to_string();
    let differing = inequivalent_argument(&text);
    if !differing.is_some_and(|arg| SAFETY_ARGUMENTS.contains(&arg)) {
        return Err(classify("queue", name, error));
    }
    // The queue exists as a quorum queue without the net: check that it is
    // quorum (the one argument that must match) and go on.
    declare_queue(broker, name, quorum())
        .await?
        .map_err(|e| classify("queue", name, e))?;
    tracing::warn!(
        queue = %name,
        missing = %SAFETY_ARGUMENTS.join(", "),
        "the work queue was declared by an earlier version without broker-side dead-lettering; \
         a message that crashes workers before they can park it may be dropped by RabbitMQ 4 \
         after 20 deliveries. Add the arguments with a policy (see docs/operations.md, \
         \"Migrating the work queue\")"
    );
    Ok(())
}

/// The argument RabbitMQ names in "inequivalent arg 'x-overflow' for queue ...".
fn inequivalent_argument(text: &str) -> Option<&str> {
    let rest = text.split("inequivalent arg '").nth(1)?;
    rest.split('\'').next()
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
