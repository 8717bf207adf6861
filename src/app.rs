//! `misiva run` and `misiva topology`: wires configuration, APNs clients, the
//! broker connection and the consumer actors, and owns the orderly stop.

use crate::amqp::{self, Broker, Consumer, ConsumerExit, Topology, TopologyError};
use crate::apns::{Apns, SetupError};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Why the worker stopped with an error. Configuration errors exit with code 2
/// and are never worth a restart; runtime errors exit with 1.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration: {0}")]
    Setup(#[from] SetupError),
    #[error("configuration: {0}")]
    Topology(TopologyError),
    #[error(transparent)]
    Broker(#[from] amqp::AmqpError),
    #[error("{0}")]
    Consumer(ConsumerExit),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Setup(_) | RunError::Topology(TopologyError::Conflict { .. }) => 2,
            _ => 1,
        }
    }
}

impl From<TopologyError> for RunError {
    fn from(e: TopologyError) -> Self {
        match e {
            TopologyError::Amqp(a) => RunError::Broker(a),
            other => RunError::Topology(other),
        }
    }
}

/// Connects, retrying for a while: a broker that starts a little after the
/// worker (a pod and its broker deployed together) is normal.
async fn connect(config: &Config, name: &str) -> Result<Broker, amqp::AmqpError> {
    let mut attempt = 0u32;
    loop {
        match Broker::connect(&config.amqp_url, name).await {
            Ok(broker) => return Ok(broker),
            Err(e) if attempt < 15 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "RabbitMQ not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `misiva topology`: declares the queues and exchange, then exits.
pub async fn topology(config: &Config) -> Result<(), RunError> {
    let broker = connect(config, "misiva topology").await?;
    amqp::declare(&broker, &Topology::from_config(config)).await?;
    broker.close().await;
    Ok(())
}

/// `misiva run`: consumes until SIGTERM/SIGINT or until a consumer is lost.
pub async fn run(config: Config) -> Result<(), RunError> {
    let apns = Apns::from_config(&config)?;
    for (app, client) in apns.iter() {
        // An unreachable APNs at start is not fatal (it may come back); a wrong
        // CA or endpoint shows here early, in the log.
        if let Err(e) = client.probe().await {
            tracing::warn!(%app, error = %e, "APNs endpoint check failed");
        }
    }
    let broker = connect(&config, "misiva worker").await?;
    let topology = Arc::new(Topology::from_config(&config));
    amqp::declare(&broker, &topology).await?;

    let policy = crate::outcome::RetryPolicy {
        tiers: config.retry_delays.len(),
        max_attempts: config.max_attempts,
    };
    let dispatcher = Arc::new(Dispatcher::new(apns, policy));
    let counters = Arc::new(amqp::Counters::default());
    // Tells every consumer to stop taking deliveries; a watch so that late
    // subscribers see the current value.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = tokio::task::JoinSet::new();
    for index in 0..config.consumers {
        let consumer = Consumer {
            index,
            prefetch: config.prefetch,
            topology: topology.clone(),
            dispatcher: dispatcher.clone(),
            counters: counters.clone(),
        };
        let broker = broker.clone();
        let stop = stop_rx.clone();
        let grace = config.shutdown_grace;
        consumers.spawn(async move { consumer.run(&broker, stop, grace).await });
    }
    tracing::info!(consumers = config.consumers, queue = %config.queue, "worker running");

    let mut failure = None;
    tokio::select! {
        signal = shutdown_signal() => tracing::info!(%signal, "stopping: no new deliveries, settling those in flight"),
        Some(result) = consumers.join_next() => {
            failure = Some(match result {
                Ok(Err(exit)) | Ok(Ok(exit)) => exit,
                Err(join) => ConsumerExit::Lost { index: usize::MAX, detail: join.to_string() },
            });
        }
    }
    let _ = stop_tx.send(true);
    while let Some(result) = consumers.join_next().await {
        if let Ok(Err(exit)) = result {
            tracing::warn!(error = %exit, "consumer ended with an error during the stop");
        }
    }
    broker.close().await;
    tracing::info!(
        delivered = counters.delivered.load(Ordering::Relaxed),
        acked = counters.acked.load(Ordering::Relaxed),
        retried = counters.retried.load(Ordering::Relaxed),
        dead_lettered = counters.dead_lettered.load(Ordering::Relaxed),
        feedback = counters.feedback.load(Ordering::Relaxed),
        "worker stopped"
    );
    match failure {
        Some(exit) => Err(RunError::Consumer(exit)),
        None => Ok(()),
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
