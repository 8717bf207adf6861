//! Declares CONTRACT §1's queues and exchange, idempotently. A queue that
//! already exists with other arguments is reported with the queue's name and
//! the broker's own words about the differing argument.

use super::names::{Topology, shard_exchange_name, shard_name};
use super::wire::short;
use super::{AmqpError, Broker};
use crate::config::Config;
use crate::events;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

/// What a declaration found besides what it declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// Shards beyond the configured count that still exist (the count was
    /// lowered): consumed until empty, never deleted.
    pub retired: Vec<String>,
}

/// The RabbitMQ plugin that provides the shard exchange's type.
pub const SHARD_PLUGIN: &str = "rabbitmq_consistent_hash_exchange";

impl Topology {
    pub fn from_config(config: &Config) -> Topology {
        let sharded = config.shards >= 2;
        // Retry tiers dead-letter to one fixed place, fixed when the queue is
        // declared; sharded tiers send jobs back through the shard exchange,
        // so they are queues of their own, and a change of shard count
        // between 1 and N never meets a tier declared the other way.
        let urgent = crate::lane::urgent_queue(&config.queue);
        let tier_base = if sharded {
            shard_exchange_name(&config.queue)
        } else {
            config.queue.clone()
        };
        Topology {
            queue: config.queue.clone(),
            shards: (0..config.shards)
                .map(|i| shard_name(&config.queue, i))
                .collect(),
            shard_exchange: sharded.then(|| shard_exchange_name(&config.queue)),
            retry_queues: config
                .retry_delays
                .iter()
                .map(|d| {
                    (
                        format!("{tier_base}.retry.{}", crate::config::delay_label(*d)),
                        *d,
                    )
                })
                .collect(),
            retry_exchange: sharded.then(|| format!("{tier_base}.retry")),
            urgent_retry_queues: config
                .retry_delays
                .iter()
                .map(|d| {
                    (
                        format!("{urgent}.retry.{}", crate::config::delay_label(*d)),
                        *d,
                    )
                })
                .collect(),
            urgent_queue: urgent,
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
    /// The shard exchange's type is not known to the broker.
    #[error(
        "MISIVA_SHARDS is {shards}, which needs RabbitMQ's plugin {SHARD_PLUGIN} for the exchange {exchange:?}; enable it on every node with `rabbitmq-plugins enable {SHARD_PLUGIN}` (the broker said: {detail})"
    )]
    PluginMissing {
        shards: usize,
        exchange: String,
        detail: String,
    },
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

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
        AMQPValue::LongLongInt(i64::from(crate::config::BROKER_DELIVERY_LIMIT)),
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

/// Declares everything, the shard exchange first: without its plugin
/// nothing else is declared.
pub async fn declare(broker: &Broker, topology: &Topology) -> Result<Declared, TopologyError> {
    if let Some(exchange) = &topology.shard_exchange {
        declare_shard_exchange(broker, topology, exchange).await?;
    }
    // The dead-letter queue first: the work queue dead-letters into it.
    for name in [&topology.dead_letter_queue, &topology.feedback_queue] {
        declare_queue(broker, name, quorum())
            .await?
            .map_err(|e| classify("queue", name, e))?;
    }
    declare_work_queue(broker, topology).await?;
    for name in topology.shards.iter().skip(1) {
        let mut args = work_queue_arguments(topology);
        // Spreads the shards' leaders over the nodes (RabbitMQ 3.10+), which
        // is what sharding is for.
        args.insert(short("x-queue-leader-locator"), text("balanced"));
        declare_queue(broker, name, args)
            .await?
            .map_err(|e| classify("queue", name, e))?;
    }
    if let Some(exchange) = &topology.shard_exchange {
        for name in &topology.shards {
            // A consistent-hash binding's key is its weight: equal shares.
            bind(broker, name, exchange, "1").await?;
        }
    }
    if let Some(exchange) = &topology.retry_exchange {
        declare_exchange(broker, exchange, lapin::ExchangeKind::Topic).await?;
    }
    let back = match &topology.shard_exchange {
        Some(exchange) => Back::Exchange(exchange),
        None => Back::Queue(&topology.queue),
    };
    for (name, delay) in &topology.retry_queues {
        declare_retry_tier(broker, back, name, *delay).await?;
        if let Some(exchange) = &topology.retry_exchange {
            bind(broker, name, exchange, &format!("{name}.#")).await?;
        }
    }
    // The urgent lane: the work queue's arguments, its own tiers back to it.
    declare_queue(
        broker,
        &topology.urgent_queue,
        work_queue_arguments(topology),
    )
    .await?
    .map_err(|e| classify("queue", &topology.urgent_queue, e))?;
    for (name, delay) in &topology.urgent_retry_queues {
        declare_retry_tier(broker, Back::Queue(&topology.urgent_queue), name, *delay).await?;
    }
    declare_exchange(
        broker,
        &topology.feedback_exchange,
        lapin::ExchangeKind::Topic,
    )
    .await?;
    bind(
        broker,
        &topology.feedback_queue,
        &topology.feedback_exchange,
        "#",
    )
    .await?;
    let retired = retired_shards(broker, topology).await?;
    Ok(Declared { retired })
}

/// Declares the shard exchange. RabbitMQ answers an unknown exchange type by
/// closing the whole connection, so this goes first, and the answer is
/// turned into a message that names the plugin.
async fn declare_shard_exchange(
    broker: &Broker,
    topology: &Topology,
    exchange: &str,
) -> Result<(), TopologyError> {
    let kind = lapin::ExchangeKind::Custom("x-consistent-hash".into());
    let result = declare_exchange(broker, exchange, kind).await;
    let detail = match &result {
        Err(TopologyError::Declare { source, .. }) => source.to_string(),
        Err(TopologyError::Conflict { detail, .. }) => detail.clone(),
        _ => return result,
    };
    if is_unknown_type(&detail) {
        return Err(TopologyError::PluginMissing {
            shards: topology.shards.len(),
            exchange: exchange.to_owned(),
            detail,
        });
    }
    result
}

/// RabbitMQ names a type no plugin provides: "unknown exchange type
/// 'x-consistent-hash'". 3.10 sends it as COMMAND_INVALID, closing the
/// connection; 4.0 as PRECONDITION_FAILED, closing the channel (which
/// would otherwise read as a conflicting declaration).
fn is_unknown_type(text: &str) -> bool {
    text.contains("unknown exchange type") || text.contains("COMMAND_INVALID")
}

/// Declares one durable exchange on a channel of its own.
async fn declare_exchange(
    broker: &Broker,
    name: &str,
    kind: lapin::ExchangeKind,
) -> Result<(), TopologyError> {
    let channel = broker.channel().await?;
    let declared = channel
        .exchange_declare(
            short(name),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, short("declared")).await;
    declared.map_err(|e| classify("exchange", name, e))
}

async fn bind(
    broker: &Broker,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), TopologyError> {
    let channel = broker.channel().await?;
    let bound = channel
        .queue_bind(
            short(queue),
            short(exchange),
            short(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, short("declared")).await;
    bound.map_err(|e| classify("binding of queue", queue, e))
}

/// Finds the shards beyond the configured count that still exist, in order,
/// and takes them out of the shard exchange so that nothing new lands in
/// them. They are left in place: they may hold jobs, which the worker
/// consumes until they are empty.
async fn retired_shards(
    broker: &Broker,
    topology: &Topology,
) -> Result<Vec<String>, TopologyError> {
    let mut retired = Vec::new();
    let exchange = shard_exchange_name(&topology.queue);
    for index in topology.shards.len().max(1)..crate::config::MAX_SHARDS {
        let name = shard_name(&topology.queue, index);
        if !queue_exists(broker, &name).await? {
            break;
        }
        // The exchange may not exist (shards never used, or removed); the
        // unbinding is then moot, and its error is too.
        let channel = broker.channel().await?;
        let _ = channel
            .queue_unbind(
                short(&name),
                short(&exchange),
                short("1"),
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, short("unbound")).await;
        retired.push(name);
    }
    Ok(retired)
}

/// Whether a queue exists, by a passive declaration on a channel of its own
/// (the broker closes the channel when it does not).
async fn queue_exists(broker: &Broker, name: &str) -> Result<bool, TopologyError> {
    let channel = broker.channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let found = channel
        .queue_declare(short(name), passive, FieldTable::default())
        .await;
    match found {
        Ok(_) => {
            let _ = channel.close(200, short("looked")).await;
            Ok(true)
        }
        Err(e) if e.to_string().contains("NOT_FOUND") => Ok(false),
        Err(e) => Err(classify("queue", name, e)),
    }
}

/// Where a retry tier sends its jobs when their delay is over.
#[derive(Debug, Clone, Copy)]
enum Back<'a> {
    /// To this queue, through the default exchange.
    Queue(&'a str),
    /// Through this (shard) exchange, with the routing key the job was
    /// published to the tier with (see `Topology::retry_exchange`), which the
    /// exchange hashes.
    Exchange(&'a str),
}

/// A retry tier's arguments: every message waits the tier's delay (one TTL
/// for the whole queue, so messages expire from the head in order), then is
/// dead-lettered `back`. `classic` is what versions before this one
/// declared.
fn retry_tier_arguments(back: Back<'_>, delay: std::time::Duration, classic: bool) -> FieldTable {
    let mut args = if classic {
        FieldTable::default()
    } else {
        quorum()
    };
    args.insert(
        short("x-message-ttl"),
        AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
    );
    match back {
        Back::Exchange(exchange) => {
            args.insert(short("x-dead-letter-exchange"), text(exchange));
        }
        Back::Queue(queue) => {
            args.insert(short("x-dead-letter-exchange"), text(""));
            args.insert(short("x-dead-letter-routing-key"), text(queue));
        }
    }
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
    back: Back<'_>,
    name: &str,
    delay: std::time::Duration,
) -> Result<(), TopologyError> {
    let Err(error) = declare_queue(broker, name, retry_tier_arguments(back, delay, false)).await?
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
    declare_queue(broker, name, retry_tier_arguments(back, delay, true))
        .await?
        .map_err(|e| classify("queue", name, e))?;
    events::emit(events::EarlierQueue::ClassicRetryTier { queue: name });
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
    events::emit(events::EarlierQueue::WorkQueueWithoutNet {
        queue: name,
        missing: &SAFETY_ARGUMENTS.join(", "),
    });
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
