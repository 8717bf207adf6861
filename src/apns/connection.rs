//! One APNs connection actor: a task that owns the making of one HTTP/2
//! connection over rustls, reconnecting with exponential backoff and jitter
//! when it dies or misbehaves. Requests do not pass through the actor: a
//! caller takes the live connection (a [`Link`]) from the handle and runs its
//! exchange in its own task, straight on `h2`. Only a caller that finds no
//! usable link asks the actor for one (message + oneshot), which happens once
//! per connection, not once per request.
//!
//! Why `h2` and not hyper's client: hyper spawns two tasks per request (the
//! body pipe and the response watcher) and hands every request through a
//! channel to its connection task; with `h2` a request is a header block and
//! one data frame queued on the connection, and the answer is awaited where it
//! was asked for: no task, channel or oneshot per request.

use super::tls::TlsError;
use crate::events;
use crate::outcome::ApnsAnswer;
use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
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
/// Callers waiting for the actor to make a connection. A full channel makes
/// further callers wait their turn.
const COMMAND_CAPACITY: usize = 256;
/// Streams a new connection may open before APNs' SETTINGS arrive: enough to
/// start work at once, few enough that a server allowing fewer refuses
/// little (a refused stream is sent again, never lost).
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    /// Connections send an HTTP/2 PING this often, so that a connection a
    /// middlebox would drop stays open, and one it silently dropped is
    /// noticed before a request is lost on it.
    pub keepalive: Duration,
    /// The app's metrics: its label, and the streams-in-use gauge.
    pub metrics: events::AppMetrics,
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
    H2(String, h2::Error),
    #[error("connecting to {0} took longer than {1:?}")]
    Timeout(String, Duration),
    #[error(transparent)]
    Setup(#[from] TlsError),
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;
type Io = super::cork::Corked<Tls>;

impl Target {
    /// Connects, and spawns the task that drives the connection (reads and
    /// writes its frames, pings it) until it ends or `health` says it stalled;
    /// `health` is set to [`Condition::Ended`] when it ends.
    async fn connect(&self, health: Arc<Health>) -> Result<SendRequest<Bytes>, ConnectError> {
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
        let (io, drain) = super::cork::cork(tls);
        let (sender, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .handshake::<Io, Bytes>(io)
            .await
            .map_err(|e| ConnectError::H2(addr.clone(), e))?;
        events::emit(events::ConnectionOpened {
            app: self.metrics.app(),
            addr: &addr,
        });
        let app = self.metrics.app().clone();
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            let error = drive(connection, drain, keepalive, &health.stalled).await;
            health.mark(Condition::Ended);
            events::emit(events::ConnectionClosed {
                app: &app,
                addr: &addr,
                error: error.as_deref(),
            });
        });
        Ok(sender)
    }
}

/// Reads and writes the connection's frames until it ends, and pings it every
/// `keepalive`: a PING unanswered for [`KEEPALIVE_TIMEOUT`] ends it. One timer
/// serves both waits, reset only when a ping is sent or answered, so that the
/// frames of busy connections cost no timer work.
///
/// A request that got no answer in time (`stalled`) ends the connection at
/// once: every other request in flight on it then ends too, as sent with an
/// unknown fate, instead of each waiting out its own deadline; they go to a
/// retry tier together, and the next requests get a new connection.
async fn drive(
    mut connection: h2::client::Connection<Io, Bytes>,
    drain: super::cork::Cork<Tls>,
    keepalive: Duration,
    stalled: &tokio::sync::Notify,
) -> Option<String> {
    use std::task::Poll;
    // Always there on a new connection; without it the connection would just
    // go unpinged.
    let mut pings = connection.ping_pong();
    let timer = tokio::time::sleep(keepalive);
    tokio::pin!(timer);
    let stall = stalled.notified();
    tokio::pin!(stall);
    let mut awaiting_pong = false;
    loop {
        // Everything is polled once, which registers this task's waker with
        // each of them. `Some(why)`: the connection is over (`why` is `None`
        // when it closed cleanly); `None`: wait for the next wake-up.
        let step: Option<Option<String>> = std::future::poll_fn(|cx| {
            let over = |error: String| Poll::Ready(Some(Some(error)));
            if let Some(pings) = pings.as_mut() {
                if awaiting_pong && let Poll::Ready(pong) = pings.poll_pong(cx) {
                    if let Err(e) = pong {
                        return over(format!("keepalive ping failed: {e}"));
                    }
                    awaiting_pong = false;
                    timer.as_mut().reset(Instant::now() + keepalive);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    if awaiting_pong {
                        return over(format!(
                            "keepalive ping unanswered for {KEEPALIVE_TIMEOUT:?}"
                        ));
                    }
                    if let Err(e) = pings.send_ping(h2::Ping::opaque()) {
                        return over(format!("keepalive ping failed: {e}"));
                    }
                    awaiting_pong = true;
                    timer.as_mut().reset(Instant::now() + KEEPALIVE_TIMEOUT);
                    // A new deadline is armed by polling it.
                    let _ = timer.as_mut().poll(cx);
                }
            }
            // The connection reads what arrived and queues what is to be
            // sent (a ping sent above included).
            if let Poll::Ready(ended) = std::pin::Pin::new(&mut connection).poll(cx) {
                return Poll::Ready(Some(ended.err().map(|e| e.to_string())));
            }
            if stall.as_mut().poll(cx).is_ready() {
                return over("a request got no answer in time; connection closed".into());
            }
            // What it queued goes out now, in one write.
            if let Poll::Ready(Err(e)) = drain.poll_drain(cx) {
                return over(format!("writing to APNs failed: {e}"));
            }
            Poll::Ready(None)
        })
        .await;
        if let Some(ended) = step {
            return ended;
        }
        woken().await;
        // Whatever woke the connection (a request queued on it, an answer
        // arriving), the tasks that are ready to run go first: the requests
        // they queue meanwhile go out in the same write.
        tokio::task::yield_now().await;
    }
}

/// Pending on its first poll, ready on the next: the task was woken by
/// whatever it registered its waker with before.
fn woken() -> impl std::future::Future<Output = ()> {
    let mut first = true;
    std::future::poll_fn(move |_| {
        if std::mem::take(&mut first) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
}

/// How a connection is doing. Ordered: a connection only ever moves down
/// the list, and `Ended` wins over `Stalled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Condition {
    /// The connection is usable.
    Healthy = 0,
    /// A request on it got no answer in time: it is closed and replaced.
    Stalled = 1,
    /// It ended, or refused new streams (GOAWAY).
    Ended = 2,
}

impl Condition {
    fn from_u8(raw: u8) -> Condition {
        match raw {
            0 => Condition::Healthy,
            1 => Condition::Stalled,
            _ => Condition::Ended,
        }
    }
}

/// One live HTTP/2 connection as callers use it: cloned per request.
#[derive(Clone)]
pub struct Link {
    sender: SendRequest<Bytes>,
    shared: Arc<LinkShared>,
}

/// How a connection is doing, shared by its link and the task that drives it.
#[derive(Default)]
struct Health {
    /// A [`Condition`], as its `u8` (an atomic, so that callers, the
    /// connection's task and the actor share it without a lock).
    state: AtomicU8,
    /// Woken once, when a request on the connection gets no answer in time.
    stalled: tokio::sync::Notify,
}

struct LinkShared {
    health: Arc<Health>,
    /// The app's gauge of streams in use.
    streams: events::UnitGauge,
}

impl Health {
    fn condition(&self) -> Condition {
        Condition::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves the connection down to `condition`, never back up.
    fn mark(&self, condition: Condition) {
        let before = Condition::from_u8(self.state.fetch_max(condition as u8, Ordering::Relaxed));
        if condition == Condition::Stalled && before == Condition::Healthy {
            self.stalled.notify_one();
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("health", &self.shared.health.condition())
            .finish_non_exhaustive()
    }
}

impl Link {
    fn usable(&self) -> bool {
        self.shared.health.condition() == Condition::Healthy
    }

    fn mark(&self, condition: Condition) {
        self.shared.health.mark(condition);
    }

    /// Sends one request (the headers, then `body` as its only data frame)
    /// and waits for APNs' answer, at most `deadline`. The request's head is
    /// made by `build` once a stream may open, so that it never waits inside
    /// the future: every request future lives in its delivery's future, and
    /// a head held across an await would add its 224 bytes there at every
    /// level of the call chain.
    pub fn request(
        &self,
        build: impl FnOnce() -> http::Request<()>,
        body: Bytes,
        deadline: Duration,
    ) -> impl Future<Output = RequestEnd> {
        async move {
            // Counted down on drop: a caller may give up on the request (a
            // stopping consumer aborts its deliveries) and the gauge must not drift.
            let _in_use = self.shared.streams.hold();
            match timeout(deadline, self.round_trip(build, body)).await {
                Err(_) => {
                    self.mark(Condition::Stalled);
                    RequestEnd::Answered(ApnsAnswer::Transport(format!(
                        "no answer from APNs within {deadline:?}"
                    )))
                }
                Ok(Err(exchange)) => exchange,
                Ok(Ok((code, body))) => RequestEnd::Answered(answer_from(code, &body)),
            }
        }
    }

    fn round_trip(
        &self,
        build: impl FnOnce() -> http::Request<()>,
        body: Bytes,
    ) -> impl Future<Output = Result<(u16, Bytes), RequestEnd>> {
        async move {
            let not_taken = |e: h2::Error| {
                self.mark(Condition::Ended);
                RequestEnd::NotProcessed(format!("the APNs connection took no new request: {e}"))
            };
            // A fresh handle has no stream of its own waiting to open, so this
            // only fails (or waits) when the connection itself cannot open streams.
            let mut sender = self.sender.clone().ready().await.map_err(not_taken)?;
            // An error here means no stream was made: nothing was sent.
            let request = build();
            // A broadcast's answer names it (`apns-unique-id`): reported below.
            let broadcast = request.uri().path().starts_with("/4/");
            let (response, mut stream) = sender.send_request(request, false).map_err(not_taken)?;
            let failed = |e: h2::Error| {
                if never_processed(&e) {
                    RequestEnd::NotProcessed(format!("APNs did not process the request: {e}"))
                } else {
                    RequestEnd::Answered(ApnsAnswer::Transport(format!("APNs request failed: {e}")))
                }
            };
            // The body is queued on the stream; the connection's task writes it
            // as the peer's flow-control window allows. If it cannot be, the
            // stream already ended (a GOAWAY or a reset arrived between the
            // head and this call: h2 says "inactive stream"), the request never
            // got its END_STREAM, and APNs cannot have processed it: it may be
            // sent again. Reported as a failure instead, a request APNs never
            // saw would go to a retry tier and count against the breaker.
            stream.send_data(body, true).map_err(|e| {
                RequestEnd::NotProcessed(format!("the request's body was never sent: {e}"))
            })?;
            let response = response.await.map_err(failed)?;
            let status = response.status().as_u16();
            if broadcast
                && let Some(unique_id) = response
                    .headers()
                    .get("apns-unique-id")
                    .and_then(|v| v.to_str().ok())
            {
                events::emit(events::BroadcastAnswered { unique_id, status });
            }
            let mut answer = response.into_body();
            // APNs' error bodies are a few dozen bytes; anything past the limit is
            // not APNs, and is not kept in memory.
            let mut read = Vec::new();
            while let Some(chunk) = answer.data().await {
                let chunk = chunk.map_err(|e| {
                    RequestEnd::Answered(ApnsAnswer::Transport(format!("APNs answer cut off: {e}")))
                })?;
                let _ = answer.flow_control().release_capacity(chunk.len());
                if read.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(RequestEnd::Answered(ApnsAnswer::Transport(format!(
                        "APNs answer cut off: longer than {MAX_ANSWER_BYTES} bytes"
                    ))));
                }
                read.extend_from_slice(&chunk);
            }
            Ok((status, Bytes::from(read)))
        }
    }
}

enum Command {
    /// A caller found no usable link: make one (or hand over the one another
    /// caller's request already brought).
    Link {
        reply: oneshot::Sender<Result<Link, String>>,
    },
}

/// How one request ended on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEnd {
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

impl State {
    /// The metric label of the state; `None` for a stopped actor, which is
    /// counted in no state.
    pub fn label(self) -> Option<&'static str> {
        match self {
            State::Connecting => Some("connecting"),
            State::Ready => Some("ready"),
            State::Draining => Some("draining"),
            State::Dead => None,
        }
    }
}

/// Handle to one connection actor.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Requests for a new link; bounded so that callers queue while the actor connects.
    commands: mpsc::Sender<Command>,
    /// The actor's state, published by the actor.
    state: watch::Receiver<State>,
    /// The live link, published by the actor.
    link: watch::Receiver<Option<Link>>,
}

impl Connection {
    /// Starts the actor. It connects lazily, on the first request.
    pub fn start(target: Target) -> Connection {
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        let (state_tx, state) = watch::channel(State::Connecting);
        let (link_tx, link) = watch::channel(None);
        tokio::spawn(run(target, rx, state_tx, link_tx));
        Connection {
            commands,
            state,
            link,
        }
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Connects now, so that a wrong endpoint or CA shows at start.
    pub async fn probe(target: &Target) -> Result<(), ConnectError> {
        let addr = format!("{}:{}", target.host, target.port);
        match timeout(CONNECT_TIMEOUT, target.connect(Arc::default())).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(ConnectError::Timeout(addr, CONNECT_TIMEOUT)),
        }
    }

    /// The live connection, connecting first when there is none (or the last
    /// one ended or stalled). `Err` when no connection can be made now: the
    /// caller may try another.
    pub async fn link(&self) -> Result<Link, String> {
        if let Some(link) = self.link.borrow().as_ref().filter(|l| l.usable()) {
            return Ok(link.clone());
        }
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Link { reply }).await.is_err() {
            return Err("the APNs connection actor has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the APNs connection actor has stopped".into()))
    }

    /// Sends one request and waits for APNs' answer, at most `deadline` once
    /// a connection is there. A request no connection took is reported as a
    /// transport failure: there is no other connection to try here.
    pub async fn send(
        &self,
        request: http::Request<()>,
        body: Bytes,
        deadline: Duration,
    ) -> ApnsAnswer {
        let outcome = match self.link().await {
            Ok(link) => link.request(move || request, body, deadline).await,
            Err(why) => RequestEnd::NotProcessed(why),
        };
        match outcome {
            RequestEnd::Answered(answer) => answer,
            RequestEnd::NotProcessed(why) => ApnsAnswer::Transport(why),
        }
    }
}

async fn run(
    target: Target,
    mut commands: mpsc::Receiver<Command>,
    state: watch::Sender<State>,
    link: watch::Sender<Option<Link>>,
) {
    // Consecutive failed connects, the earliest next attempt, and why the last failed.
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut last_error = String::new();
    let app = target.metrics.app().clone();
    let set_state = |to: State| {
        let from = state.send_replace(to);
        if from != to {
            events::emit(events::ConnectionState {
                app: &app,
                from: from.label(),
                to: to.label(),
            });
        }
    };
    events::emit(events::ConnectionState {
        app: &app,
        from: None,
        to: State::Connecting.label(),
    });
    let streams = target.metrics.streams().clone();
    while let Some(Command::Link { reply }) = commands.recv().await {
        // Callers that queued behind the one whose request brought a new
        // connection get that one.
        let current = link.borrow().clone();
        if let Some(current) = current.as_ref().filter(|l| l.usable()) {
            let _ = reply.send(Ok(current.clone()));
            continue;
        }
        if let Some(old) = current {
            if old.shared.health.condition() == Condition::Stalled {
                events::emit(events::ConnectionStalled {
                    app: &app,
                    host: &target.host,
                });
                set_state(State::Draining);
            }
            link.send_replace(None);
            set_state(State::Connecting);
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            let _ = reply.send(Err(format!("cannot connect to APNs: {last_error}")));
            continue;
        }
        let health = Arc::new(Health::default());
        match timeout(CONNECT_TIMEOUT, target.connect(health.clone())).await {
            Ok(Ok(sender)) => {
                let new = Link {
                    sender,
                    shared: Arc::new(LinkShared {
                        health,
                        streams: streams.clone(),
                    }),
                };
                link.send_replace(Some(new.clone()));
                failures = 0;
                retry_at = None;
                set_state(State::Ready);
                let _ = reply.send(Ok(new));
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
                let _ = reply.send(Err(format!("cannot connect to APNs: {last_error}")));
            }
        }
    }
    set_state(State::Dead);
}

/// Exponential backoff from 100 ms to [`MAX_BACKOFF`], with full jitter so that
/// many workers do not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(10))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// A stream the server refused or dropped with GOAWAY before processing it.
/// RFC 9113 §8.7: such requests are safe to retry.
fn never_processed(error: &h2::Error) -> bool {
    (error.is_go_away() && error.is_remote()) || error.reason() == Some(h2::Reason::REFUSED_STREAM)
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
        // Each wait is drawn between half its ceiling and the ceiling, and
        // the ceiling doubles with each failure up to MAX_BACKOFF: the
        // shortest wait after n failures is at least the longest after
        // n - 2, until the cap.
        for failures in 1..40u32 {
            let draws: Vec<Duration> = (0..200).map(|_| backoff(failures)).collect();
            let (low, high) = (*draws.iter().min().unwrap(), *draws.iter().max().unwrap());
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1u32 << failures.min(10))
                .min(MAX_BACKOFF);
            assert!(high <= ceiling, "{failures}: {high:?} over {ceiling:?}");
            assert!(
                low >= ceiling / 2,
                "{failures}: {low:?} under half of {ceiling:?}"
            );
            if failures >= 2 && ceiling < MAX_BACKOFF {
                let before =
                    Duration::from_millis(100).saturating_mul(1u32 << (failures - 2).min(10));
                assert!(
                    low >= before,
                    "{failures}: {low:?} does not grow past {before:?}"
                );
            }
        }
        assert!(
            backoff(1) < backoff(30),
            "the cap is far above the first wait"
        );
    }
}
