//! The connection pool of one app: `deadpool` manages the connection actors
//! (creation, a health check on every checkout, the size). A checkout lasts only
//! while a request takes its connection's live link, not for its round trip,
//! so each connection carries as many streams at once as APNs allows, and FIFO
//! checkouts spread requests over the connections in turn.

use super::connection::{Connection, Link, RequestEnd, State, Target};
use crate::events::{self, AppMetrics};
use crate::outcome::ApnsAnswer;
use bytes::Bytes;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use std::convert::Infallible;
use std::time::Duration;

#[derive(Debug)]
pub struct Manager {
    target: Target,
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = Infallible;

    async fn create(&self) -> Result<Connection, Infallible> {
        // The actor connects on its first request and reconnects by itself.
        Ok(Connection::start(self.target.clone()))
    }

    async fn recycle(&self, connection: &mut Connection, _: &Metrics) -> RecycleResult<Infallible> {
        match connection.state() {
            // A stopped actor is replaced by a new one.
            State::Dead => Err(RecycleError::message("the connection actor stopped")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pool {
    pool: managed::Pool<Manager>,
    size: usize,
}

impl Pool {
    /// Builds the pool and starts its `size` actors.
    pub async fn new(target: Target, size: usize) -> Pool {
        let pool = managed::Pool::builder(Manager { target })
            .max_size(size)
            .queue_mode(managed::QueueMode::Fifo)
            .build()
            .expect("a pool without timeouts always builds");
        // Take every slot at once so that all `size` actors exist; afterwards
        // FIFO checkouts rotate through them.
        let all = futures_util::future::join_all((0..size).map(|_| pool.get())).await;
        drop(all);
        Pool { pool, size }
    }

    /// Sends a request on the next connection. `build` makes the request again
    /// when a connection did not process it (GOAWAY, refused stream, a
    /// connection that could not be made), so that it goes to another one
    /// without counting as a failure.
    pub fn send(
        &self,
        build: impl Fn() -> http::Request<()>,
        body: &Bytes,
        deadline: Duration,
        metrics: &AppMetrics,
    ) -> impl Future<Output = ApnsAnswer> {
        async move {
            let mut last = String::new();
            // Every connection twice, and one more: under load, GOAWAYs on every
            // connection at once are normal (APNs rotates them), and a request
            // that met two of them was still never processed.
            for _ in 0..=self.size * 2 {
                // Boxed: deadpool's checkout future is large, and inline it would
                // be part of every request's future (and of every delivery's),
                // which is moved at each level of the call chain and, in a
                // fan-out, allocated once per token.
                let link = match Box::pin(self.link()).await {
                    Ok(link) => link,
                    Err(e) => return ApnsAnswer::Transport(e),
                };
                let outcome = match link {
                    Ok(link) => link.request(&build, body.clone(), deadline).await,
                    Err(why) => RequestEnd::NotProcessed(why),
                };
                match outcome {
                    RequestEnd::Answered(answer) => return answer,
                    RequestEnd::NotProcessed(why) => {
                        events::emit(events::NotificationResent {
                            app: metrics,
                            why: &why,
                        });
                        last = why;
                    }
                }
            }
            ApnsAnswer::Transport(last)
        }
    }

    /// The next connection's live link (`Ok(Err(why))`: that connection
    /// has none now, another may). `Err` when the pool itself fails. The
    /// checkout ends here: the exchange runs on the link alone.
    async fn link(&self) -> Result<Result<Link, String>, String> {
        match self.pool.get().await {
            Ok(connection) => Ok(connection.link().await),
            Err(e) => Err(format!("APNs connection pool: {e}")),
        }
    }
}
