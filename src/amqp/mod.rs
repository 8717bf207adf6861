//! The AMQP shell: connection, topology, consumer actors and the publisher with
//! confirms. Only this module sees lapin types.

mod acks;
mod consumer;
mod dlq;
mod publisher;
mod topology;
mod wire;

pub use consumer::{Consumer, Counters, Unsettled};
pub use dlq::{DeadLetterQueue, Held, Released};
pub use publisher::JobPublisher;
pub use topology::{BROKER_DELIVERY_LIMIT, Topology, TopologyError, declare};

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(lapin::Error),
    #[error("RabbitMQ channel error: {0}")]
    Channel(lapin::Error),
    /// lapin sent no ack: the delivery was settled already or its channel
    /// is gone.
    #[error("the acknowledgement could not be sent (the channel is gone)")]
    NotAcked,
    #[error(
        "reading {letters} dead letters takes {} channels of {chunk} letters, and this connection has {channels} to spare: pass a smaller --scan",
        letters.div_ceil(usize::from(*chunk))
    )]
    TooManyChannels {
        letters: usize,
        chunk: u16,
        channels: usize,
    },
}

/// A connection to the broker, with the name operators see in the management UI.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<lapin::Connection>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to the first node of `url` that answers (one URL, or a
    /// cluster's nodes separated by commas), in order: when a node dies, the
    /// reconnection moves on to the next. The error is the last node's.
    pub async fn connect(url: &Secret<String>, name: &str) -> Result<Broker, AmqpError> {
        let mut last = None;
        for node in crate::config::amqp_urls(url.expose()) {
            let properties =
                lapin::ConnectionProperties::default().with_connection_name(name.as_bytes().into());
            match lapin::Connection::connect(node, properties).await {
                Ok(connection) => {
                    return Ok(Broker {
                        connection: std::sync::Arc::new(connection),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(AmqpError::Connect(last.unwrap_or_else(|| {
            lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            ))
        })))
    }

    pub(crate) async fn channel(&self) -> Result<lapin::Channel, AmqpError> {
        self.connection
            .create_channel()
            .await
            .map_err(AmqpError::Channel)
    }

    /// Resolves when the connection is no longer usable (the broker closed it,
    /// the network dropped, the broker stopped). Polls the status: lapin reports
    /// every such end there.
    pub async fn lost(&self) {
        while self.connection.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The frame size negotiated with the broker (0 = no limit).
    pub fn frame_max(&self) -> u32 {
        self.connection.configuration().frame_max()
    }

    /// The channels this connection may open (negotiated with the broker).
    pub fn channel_max(&self) -> u16 {
        self.connection.configuration().channel_max()
    }

    /// Whether the broker blocked this connection's publishing (`connection.blocked`:
    /// a memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection; channels should be closed first (see `app`).
    pub async fn close(&self) {
        if let Err(e) = self.connection.close(200, wire::short("bye")).await {
            tracing::debug!(error = %e, "closing the RabbitMQ connection");
        }
    }
}
