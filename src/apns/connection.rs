//! One APNs connection actor: a task that owns one HTTP/2 connection over rustls
//! and multiplexes every request it is handed onto it, reconnecting with
//! exponential backoff and jitter when it dies.
//!
//! Shape: [`Connection`] is the handle (it owns the sender); the task ends when
//! the last handle drops. Each request is answered on its own oneshot.

use super::tls::TlsError;
use crate::events;
use crate::outcome::ApnsAnswer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

/// How long establishing TCP + TLS + HTTP/2 may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a PING may go unanswered before the connection counts as dead.
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
    /// Idle connections send an HTTP/2 PING this often, so that a connection
    /// a middlebox would drop stays open, and one it silently dropped is
    /// noticed before a request is lost on it.
    pub keepalive: Duration,
    /// The app's metric label.
    pub app: Arc<str>,
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
            .keep_alive_interval(self.keepalive)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ConnectError::H2(addr.clone(), e))?;
        events::emit(events::ConnectionOpened {
            app: &self.app,
            addr: &addr,
        });
        let app = self.app.clone();
        tokio::spawn(async move {
            let error = connection.await.err().map(|e| e.to_string());
            events::emit(events::ConnectionClosed {
                app: &app,
                addr: &addr,
                error: error.as_deref(),
            });
        });
        Ok(sender)
    }
}

enum Command {
    Send {
        request: http::Request<Full<Bytes>>,
        deadline: Duration,
        reply: oneshot::Sender<Exchange>,
    },
}

/// How one request ended on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// APNs answered, or the request may have reached APNs and its fate is
    /// unknown (connection lost mid-request, deadline): the caller classifies it.
    Answered(ApnsAnswer),
    /// APNs certainly did not process it (never written, or refused by GOAWAY
    /// or REFUSED_STREAM): safe to send again elsewhere, and not a failure.
    NotProcessed(String),
}

/// What the connection actor is doing, for the pool and for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection yet, or reconnecting after one ended.
    Connecting,
    Ready,
    /// The last connection misbehaved (a request got no answer in time) and
    /// is being replaced; requests wait for the new one.
    Draining,
    /// The actor has stopped.
    Dead,
}

/// Handle to one connection actor.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Requests to the actor; bounded so that a stalled connection pushes back.
    commands: mpsc::Sender<Command>,
    /// The actor's state, published by the actor.
    state: watch::Receiver<State>,
}

impl Connection {
    /// Starts the actor. It connects lazily, on the first request.
    pub fn start(target: Target) -> Connection {
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        let (state_tx, state) = watch::channel(State::Connecting);
        tokio::spawn(run(target, rx, state_tx));
        Connection { commands, state }
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Connects now, so that a wrong endpoint or CA shows at start.
    pub async fn probe(target: &Target) -> Result<(), ConnectError> {
        let addr = format!("{}:{}", target.host, target.port);
        match timeout(CONNECT_TIMEOUT, target.connect()).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(ConnectError::Timeout(addr, CONNECT_TIMEOUT)),
        }
    }

    /// Hands one request to the actor and returns at once; the receiver yields
    /// how it ended (at most `deadline` after it was written).
    pub async fn submit(
        &self,
        request: http::Request<Full<Bytes>>,
        deadline: Duration,
    ) -> oneshot::Receiver<Exchange> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Send {
            request,
            deadline,
            reply,
        };
        if let Err(mpsc::error::SendError(Command::Send { reply, .. })) =
            self.commands.send(command).await
        {
            let _ = reply.send(Exchange::NotProcessed(
                "the APNs connection actor has stopped".into(),
            ));
        }
        answer
    }

    /// Sends one request and waits for APNs' answer, at most `deadline`.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        deadline: Duration,
    ) -> ApnsAnswer {
        match self.submit(request, deadline).await.await {
            Ok(Exchange::Answered(answer)) => answer,
            Ok(Exchange::NotProcessed(why)) => ApnsAnswer::Transport(why),
            Err(_) => ApnsAnswer::Transport("the APNs request was dropped".into()),
        }
    }
}

async fn run(target: Target, mut commands: mpsc::Receiver<Command>, state: watch::Sender<State>) {
    let mut link: Option<SendRequest<Full<Bytes>>> = None;
    // Which connection `link` is; a request that timed out marks its
    // connection's generation here, and the actor replaces that connection.
    let mut generation: u64 = 0;
    let unhealthy = Arc::new(AtomicU64::new(u64::MAX));
    // Consecutive failed connects, the earliest next attempt, and why the last failed.
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut last_error = String::new();
    let app = target.app.clone();
    let set_state = |to: State| {
        let from = state.send_replace(to);
        if from != to {
            events::emit(events::ConnectionState {
                app: &app,
                from: Some(from),
                to,
            });
        }
    };
    events::emit(events::ConnectionState {
        app: &app,
        from: None,
        to: State::Connecting,
    });
    let streams = events::metrics()
        .streams_in_use
        .get_or_create_owned(&events::AppLabel { app: app.clone() });
    while let Some(Command::Send {
        request,
        deadline,
        reply,
    }) = commands.recv().await
    {
        if link.is_some() && unhealthy.load(Ordering::Relaxed) == generation {
            tracing::warn!(host = %target.host, "an APNs request got no answer in time; replacing the connection");
            set_state(State::Draining);
            // In-flight requests keep the old connection until they end.
            link = None;
        }
        if link.as_ref().is_none_or(SendRequest::is_closed) {
            if link.take().is_some() {
                set_state(State::Connecting);
            }
            if retry_at.is_none_or(|at| Instant::now() >= at) {
                match timeout(CONNECT_TIMEOUT, target.connect()).await {
                    Ok(Ok(sender)) => {
                        link = Some(sender);
                        generation += 1;
                        failures = 0;
                        retry_at = None;
                        set_state(State::Ready);
                    }
                    outcome => {
                        last_error = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("connect took longer than {CONNECT_TIMEOUT:?}"),
                        };
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures);
                        events::emit(events::ConnectFailed {
                            app: &app,
                            error: &last_error,
                            retry_in: wait,
                        });
                        retry_at = Some(Instant::now() + wait);
                        set_state(State::Connecting);
                    }
                }
            }
        }
        match &link {
            Some(sender) => {
                let sender = sender.clone();
                let unhealthy = unhealthy.clone();
                let this = generation;
                let streams = streams.clone();
                tokio::spawn(async move {
                    streams.inc();
                    let outcome = exchange(sender, request, deadline).await;
                    streams.dec();
                    if outcome == Exchange::Answered(ApnsAnswer::Transport(timeout_text(deadline)))
                    {
                        unhealthy.store(this, Ordering::Relaxed);
                    }
                    let _ = reply.send(outcome);
                });
            }
            None => {
                // Nothing was sent: another connection may take it.
                let _ = reply.send(Exchange::NotProcessed(format!(
                    "cannot connect to APNs: {last_error}"
                )));
            }
        }
    }
    set_state(State::Dead);
}

fn timeout_text(deadline: Duration) -> String {
    format!("no answer from APNs within {deadline:?}")
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
) -> Exchange {
    let round_trip = async {
        if sender.ready().await.is_err() {
            return Err(Exchange::NotProcessed("the APNs connection closed".into()));
        }
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let error = e.into_error();
                return Err(if unsent || never_processed(&error) {
                    Exchange::NotProcessed(format!("APNs did not process the request: {error}"))
                } else {
                    Exchange::Answered(ApnsAnswer::Transport(format!(
                        "APNs request failed: {}",
                        describe(&error)
                    )))
                });
            }
        };
        let status = response.status().as_u16();
        // APNs' error bodies are a few dozen bytes; anything past the limit is
        // not APNs, and is not kept in memory.
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                let detail = match e.downcast_ref::<hyper::Error>() {
                    Some(e) => describe(e),
                    None => e.to_string(),
                };
                Exchange::Answered(ApnsAnswer::Transport(format!(
                    "APNs answer cut off: {detail}"
                )))
            })?
            .to_bytes();
        Ok((status, body))
    };
    match timeout(deadline, round_trip).await {
        Err(_) => Exchange::Answered(ApnsAnswer::Transport(timeout_text(deadline))),
        Ok(Err(exchange)) => exchange,
        Ok(Ok((code, body))) => Exchange::Answered(answer_from(code, &body)),
    }
}

/// The HTTP/2 error under a hyper error, if any.
fn h2_error(error: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

/// A stream the server refused or dropped with GOAWAY before processing it.
/// RFC 9113 §8.7: such requests are safe to retry.
fn never_processed(error: &hyper::Error) -> bool {
    h2_error(error).is_some_and(|e| {
        (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}

fn describe(error: &hyper::Error) -> String {
    match h2_error(error) {
        Some(h2) => format!("{error} ({h2})"),
        None => error.to_string(),
    }
}

/// Most bytes of an APNs answer body read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Whether `reason` looks like one of Apple's reason codes. Anything else (an
/// endpoint that is not APNs, a proxy's page) is treated as no reason: it
/// would otherwise travel into routing keys, headers and logs.
fn plausible_reason(reason: &str) -> bool {
    (1..=64).contains(&reason.len()) && reason.bytes().all(|b| b.is_ascii_alphanumeric())
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
    let reason = reason.filter(|r| plausible_reason(r));
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
    fn implausible_reasons_are_dropped() {
        let long = format!(r#"{{"reason":"{}"}}"#, "A".repeat(300));
        for body in [
            long.as_str(),
            r#"{"reason":"Bad.Topic"}"#,
            r#"{"reason":"a b"}"#,
            r#"{"reason":""}"#,
            r#"{"reason":"é"}"#,
        ] {
            assert_eq!(
                answer_from(410, body.as_bytes()),
                ApnsAnswer::Status {
                    code: 410,
                    reason: None,
                    timestamp_ms: None
                },
                "{body}"
            );
        }
    }

    proptest::proptest! {
        /// Any body, any status: never a panic, and a reason only when it is
        /// a short alphanumeric code.
        #[test]
        fn any_answer_is_read_safely(code in 0u16..1000, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let ApnsAnswer::Status { reason: Some(r), .. } = answer_from(code, &body) {
                proptest::prop_assert!(plausible_reason(&r));
            }
        }

        #[test]
        fn json_answers_keep_plausible_reasons(reason in "[A-Za-z0-9]{1,64}", ts in proptest::prelude::any::<u64>()) {
            let body = format!(r#"{{"reason":"{reason}","timestamp":{ts}}}"#);
            proptest::prop_assert_eq!(
                answer_from(410, body.as_bytes()),
                ApnsAnswer::Status { code: 410, reason: Some(reason), timestamp_ms: Some(ts) }
            );
        }
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
