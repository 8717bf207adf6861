//! One APNs connection actor: a task that owns one HTTP/2 connection over rustls
//! and multiplexes every request it is handed onto it, reconnecting with
//! exponential backoff and jitter when it dies.
//!
//! Shape: [`Connection`] is the handle (it owns the sender); the task ends when
//! the last handle drops. Each request is answered on its own oneshot.

use super::tls::TlsError;
use crate::outcome::ApnsAnswer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

/// How long establishing TCP + TLS + HTTP/2 may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections send an HTTP/2 PING this often, so that a connection a
/// middlebox silently dropped is noticed before a request is lost on it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Ceiling of the reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Requests waiting for the actor. Small: the actor only hands requests to
/// hyper, which queues them per stream; a full channel makes callers wait.
const COMMAND_CAPACITY: usize = 256;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect to {0} failed: {1}")]
    Tcp(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("{0} did not negotiate HTTP/2 (ALPN h2)")]
    NoH2(String),
    #[error("HTTP/2 handshake with {0} failed: {1}")]
    H2(String, hyper::Error),
    #[error("connecting to {0} took longer than {1:?}")]
    Timeout(String, Duration),
    #[error(transparent)]
    Setup(#[from] TlsError),
}

impl Target {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ConnectError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| ConnectError::Tcp(addr.clone(), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| ConnectError::Tcp(addr.clone(), e))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| {
            ConnectError::Tls(
                addr.clone(),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Tls(addr.clone(), e))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::NoH2(addr));
        }
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ConnectError::H2(addr.clone(), e))?;
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::info!(%addr, "APNs connection closed"),
                Err(e) => tracing::warn!(%addr, error = %e, "APNs connection failed"),
            }
        });
        tracing::info!(addr = %format!("{}:{}", self.host, self.port), "APNs connection ready");
        Ok(sender)
    }
}

enum Command {
    Send {
        request: http::Request<Full<Bytes>>,
        deadline: Duration,
        reply: oneshot::Sender<ApnsAnswer>,
    },
}

/// Handle to one connection actor.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Requests to the actor; bounded so that a stalled connection pushes back.
    commands: mpsc::Sender<Command>,
}

impl Connection {
    /// Starts the actor. It connects lazily, on the first request.
    pub fn start(target: Target) -> Connection {
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        tokio::spawn(run(target, rx));
        Connection { commands }
    }

    /// Connects now, so that a wrong endpoint or CA shows at start.
    pub async fn probe(target: &Target) -> Result<(), ConnectError> {
        let addr = format!("{}:{}", target.host, target.port);
        match timeout(CONNECT_TIMEOUT, target.connect()).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(ConnectError::Timeout(addr, CONNECT_TIMEOUT)),
        }
    }

    /// Sends one request and waits for APNs' answer, at most `deadline`.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        deadline: Duration,
    ) -> ApnsAnswer {
        let (reply, answer) = oneshot::channel();
        let command = Command::Send {
            request,
            deadline,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return ApnsAnswer::Transport("the APNs connection actor has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| ApnsAnswer::Transport("the APNs request was dropped".into()))
    }
}

async fn run(target: Target, mut commands: mpsc::Receiver<Command>) {
    let mut link: Option<SendRequest<Full<Bytes>>> = None;
    // Consecutive failed connects, the earliest next attempt, and why the last failed.
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut last_error = String::new();
    while let Some(Command::Send {
        request,
        deadline,
        reply,
    }) = commands.recv().await
    {
        if link.as_ref().is_none_or(SendRequest::is_closed) {
            link = None;
            if retry_at.is_none_or(|at| Instant::now() >= at) {
                match timeout(CONNECT_TIMEOUT, target.connect()).await {
                    Ok(Ok(sender)) => {
                        link = Some(sender);
                        failures = 0;
                        retry_at = None;
                    }
                    outcome => {
                        last_error = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("connect took longer than {CONNECT_TIMEOUT:?}"),
                        };
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures);
                        tracing::warn!(error = %last_error, retry_in = ?wait, "cannot connect to APNs");
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
        }
        match &link {
            Some(sender) => {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _ = reply.send(exchange(sender, request, deadline).await);
                });
            }
            None => {
                let _ = reply.send(ApnsAnswer::Transport(format!(
                    "cannot connect to APNs: {last_error}"
                )));
            }
        }
    }
}

/// Exponential backoff from 100 ms to [`MAX_BACKOFF`], with full jitter so that
/// many workers do not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(10))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn exchange(
    mut sender: SendRequest<Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
    deadline: Duration,
) -> ApnsAnswer {
    let round_trip = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    match timeout(deadline, round_trip).await {
        Err(_) => ApnsAnswer::Transport(format!("no answer from APNs within {deadline:?}")),
        Ok(Err(e)) => ApnsAnswer::Transport(format!("APNs request failed: {e}")),
        Ok(Ok((code, body))) => answer_from(code, &body),
    }
}

/// Reads APNs' error body `{"reason": "...", "timestamp": ms}`, if any.
pub(crate) fn answer_from(code: u16, body: &[u8]) -> ApnsAnswer {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        reason: Option<String>,
        timestamp: Option<u64>,
    }
    let parsed: Option<ErrorBody> = (!body.is_empty())
        .then(|| serde_json::from_slice(body).ok())
        .flatten();
    let (reason, timestamp_ms) = parsed.map_or((None, None), |b| (b.reason, b.timestamp));
    ApnsAnswer::Status {
        code,
        reason,
        timestamp_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_and_tolerated() {
        assert_eq!(
            answer_from(
                410,
                br#"{"reason":"Unregistered","timestamp":1700000000000}"#
            ),
            ApnsAnswer::Status {
                code: 410,
                reason: Some("Unregistered".into()),
                timestamp_ms: Some(1_700_000_000_000)
            }
        );
        assert_eq!(
            answer_from(502, b"<html>bad gateway</html>"),
            ApnsAnswer::Status {
                code: 502,
                reason: None,
                timestamp_ms: None
            }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for failures in 1..40 {
            let wait = backoff(failures);
            assert!(wait <= MAX_BACKOFF);
            assert!(wait >= Duration::from_millis(100));
        }
        assert!(backoff(20) >= MAX_BACKOFF / 2);
    }
}
