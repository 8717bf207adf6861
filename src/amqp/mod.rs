//! The AMQP shell: connection, topology, consumer actors and the publisher with
//! confirms. Only this module sees lapin types.

mod acks;
mod consumer;
mod dlq;
mod names;
mod publisher;
mod topology;
mod wire;

pub use consumer::{Consumer, Unsettled};
pub use dlq::{DeadLetterQueue, Held, Released};
pub use names::Topology;
pub use publisher::JobPublisher;
pub use topology::{Declared, TopologyError, declare};

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

/// The heartbeat Misiva asks the broker for, in seconds, when a node's URL
/// names none (`?heartbeat=N` in a URL wins). lapin declares a connection
/// dead when nothing arrived for two intervals, so a node that drops packets
/// without resetting the connection is noticed within 10 s.
pub const HEARTBEAT_SECS: u16 = 5;

/// How long one node may take to accept a connection before the next one is
/// tried: a black-holed node never answers, and its TCP connect alone would
/// wait minutes.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often [`Broker::lost`] looks at the connection's status.
const LOST_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// A connection to the broker, with the name operators see in the management UI.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<lapin::Connection>,
    /// Which node of the URL list it is connected to (from 0).
    node: usize,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// `url` with the default heartbeat added when it names none.
fn with_heartbeat(url: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| p.starts_with("heartbeat=")) {
        return Cow::Borrowed(url);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Cow::Owned(format!("{url}{sep}heartbeat={HEARTBEAT_SECS}"))
}

impl Broker {
    /// Connects to the first node of `url` that answers (one URL, or a
    /// cluster's nodes separated by commas), in order. The error is the last
    /// node's.
    pub async fn connect(url: &Secret<String>, name: &str) -> Result<Broker, AmqpError> {
        Self::connect_from(url, name, 0).await
    }

    /// Connects to the nodes of `url` in turn, beginning with node `first`
    /// and going round: after losing node k, the worker begins with k + 1,
    /// so that a dead or black-holed node is not the first one tried again.
    /// Each node has [`CONNECT_LIMIT`] to answer.
    pub async fn connect_from(
        url: &Secret<String>,
        name: &str,
        first: usize,
    ) -> Result<Broker, AmqpError> {
        let nodes: Vec<&str> = crate::config::amqp_urls(url.expose()).collect();
        let mut last = None;
        for step in 0..nodes.len() {
            let node = (first + step) % nodes.len();
            let properties =
                lapin::ConnectionProperties::default().with_connection_name(name.as_bytes().into());
            let address = with_heartbeat(nodes[node]);
            let attempt = lapin::Connection::connect(&address, properties);
            match tokio::time::timeout(CONNECT_LIMIT, attempt).await {
                Ok(Ok(connection)) => {
                    return Ok(Broker {
                        connection: std::sync::Arc::new(connection),
                        node,
                    });
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(lapin::Error::from(lapin::ErrorKind::IOError(
                        std::sync::Arc::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("node {} did not answer within {CONNECT_LIMIT:?}", node + 1),
                        )),
                    )));
                }
            }
        }
        Err(AmqpError::Connect(last.unwrap_or_else(|| {
            lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            ))
        })))
    }

    /// Which node of the URL list this connection is on (from 0).
    pub fn node(&self) -> usize {
        self.node
    }

    pub(crate) async fn channel(&self) -> Result<lapin::Channel, AmqpError> {
        self.connection
            .create_channel()
            .await
            .map_err(AmqpError::Channel)
    }

    /// Resolves when the connection is no longer usable (the broker closed it,
    /// the network dropped, the broker stopped, the heartbeat went silent).
    /// Polls the status: lapin reports every such end there.
    pub async fn lost(&self) {
        while self.connection.status().connected() {
            tokio::time::sleep(LOST_POLL).await;
        }
    }

    /// Runs `work` unless the connection is lost first: what awaits the
    /// broker on a stop path goes through here, so that a dead connection is
    /// never waited on (what is unacked is back in the queue on the broker's
    /// side already). `None` when the connection was lost.
    pub async fn unless_lost<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        if !self.is_connected() {
            return None;
        }
        tokio::select! {
            done = work => Some(done),
            () = self.lost() => None,
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
        let closing = self.connection.close(200, wire::short("bye"));
        if let Some(Err(e)) = self.unless_lost(closing).await {
            crate::events::emit(crate::events::BrokerCloseFailed { error: &e });
        }
    }
}
