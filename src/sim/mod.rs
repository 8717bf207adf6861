//! `misiva apns-sim`: an APNs look-alike for staging, load tests and CI. It speaks
//! HTTP/2 over TLS with a certificate it generates (its CA written where the worker
//! can trust it), validates requests as Apple does, verifies provider tokens
//! against the public half of configured keys, answers deterministically by token
//! prefix, injects faults on demand and counts what it accepted.

mod certs;
mod channels;
mod handler;
mod idle;

pub use certs::ClientCertificate;
pub use channels::ChannelInfo;
pub use handler::{Accepted, PREFIXES};

use crate::jwt::{KeyError, public_key_from_pem};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A key the simulator accepts provider tokens from.
#[derive(Debug, Clone)]
pub struct SimKey {
    pub key_id: String,
    pub team_id: String,
    /// Uncompressed P-256 point.
    pub public_key: Vec<u8>,
}

impl SimKey {
    /// Reads the public half from a `.p8` or a `BEGIN PUBLIC KEY` PEM file.
    pub fn from_file(key_id: &str, team_id: &str, path: &Path) -> Result<SimKey, KeyError> {
        let label = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| KeyError::Read(label.clone(), e))?;
        Ok(SimKey {
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            public_key: public_key_from_pem(&label, &pem)?,
        })
    }
}

/// The keys of a keys directory: each `<TEAM_ID>.<KEY_ID>.p8` or `.pem`
/// file, sorted by name; files that are not keys are listed as problems.
pub fn read_keys_dir(dir: &Path) -> std::io::Result<(Vec<SimKey>, Vec<String>)> {
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("p8" | "pem")))
        .collect();
    entries.sort();
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for path in entries {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let Some((team, key_id)) = stem.split_once('.') else {
            problems.push(format!(
                "{}: expected <TEAM_ID>.<KEY_ID>.p8",
                path.display()
            ));
            continue;
        };
        match SimKey::from_file(key_id, team, &path) {
            Ok(key) => keys.push(key),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok((keys, problems))
}

/// Fault knobs, changeable while the simulator runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Fraction (0..=1) of otherwise valid requests answered with `error_status`.
    pub error_rate: f64,
    /// 500 (InternalServerError), 503 (ServiceUnavailable) or 429 (TooManyRequests).
    pub error_status: u16,
    /// Added before every answer.
    pub latency: Duration,
    /// Each connection sends GOAWAY after answering its Nth request.
    pub goaway_after: Option<u64>,
    /// Each connection is dropped (TCP closed, no GOAWAY) right after accepting
    /// its Nth request, before answering it.
    pub reset_after: Option<u64>,
    /// Each connection leaves every request after its Nth unanswered.
    pub stall_after: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: 503,
            latency: Duration::ZERO,
            goaway_after: None,
            reset_after: None,
            stall_after: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub keys: Vec<SimKey>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on every connection.
    pub max_streams: u32,
    pub faults: Faults,
    /// Keep every accepted notification in memory (tests); otherwise only count.
    pub record: bool,
    /// Extra DNS names for the server certificate (beside localhost, 127.0.0.1, ::1).
    pub hostnames: Vec<String>,
    /// Log every accepted notification at info level (the demo shows them).
    pub log_deliveries: bool,
    /// Close connections on which nothing (not even a PING) arrived for this long.
    pub idle_timeout: Option<Duration>,
    /// Certificate-based auth: clients must present a certificate from the
    /// simulator's client CA (see [`Simulator::issue_client_certificate`]),
    /// and provider tokens are not required.
    pub certificate_auth: bool,
    /// Age past which a provider token is answered `ExpiredProviderToken`
    /// (Apple: one hour). Tests shorten it to make tokens expire while jobs flow.
    pub token_max_age: Duration,
    /// Refuse a device push whose topic lacks its push type's suffix, or
    /// has one it should not (`400 BadTopic`), as Apple does.
    pub strict_topics: bool,
    /// Where channel management listens (Apple: its own host and port);
    /// `None`: no management listener.
    pub channels_listen: Option<SocketAddr>,
}

/// A provider-token event the simulator saw, for tests of renewal timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// Seconds since the simulator started.
    pub at: Duration,
    /// A hash of the bearer token (never the token itself).
    pub token: u64,
    pub kind: TokenEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEventKind {
    /// A token was verified and accepted on a connection for the first time.
    Accepted,
    /// A request was answered `ExpiredProviderToken`.
    Expired,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keys: Vec::new(),
            max_streams: 1000,
            faults: Faults::default(),
            record: true,
            hostnames: Vec::new(),
            log_deliveries: false,
            idle_timeout: None,
            certificate_auth: false,
            token_max_age: Duration::from_secs(3600),
            strict_topics: false,
            channels_listen: None,
        }
    }
}

/// What the simulator has seen, shared by every connection.
#[derive(Debug)]
pub(crate) struct State {
    /// The keys provider tokens may be signed with; changeable while
    /// running (rotation tests, the CLI's keys directory).
    keys: std::sync::RwLock<Arc<Vec<SimKey>>>,
    /// Common names of client certificates no longer accepted.
    revoked: Mutex<HashSet<String>>,
    record: bool,
    log_deliveries: bool,
    /// Current fault knobs; a watch so that changes apply to the next request.
    faults: watch::Receiver<Faults>,
    accepted_count: AtomicU64,
    /// Every accepted notification, when `record` is on.
    accepted: Mutex<Vec<Accepted>>,
    /// Answers other than 200, by status and reason.
    rejected: Mutex<BTreeMap<(u16, String), u64>>,
    /// Requests per device token, whatever the answer, when `record` is on.
    requests: Mutex<std::collections::HashMap<String, u32>>,
    connections: AtomicU64,
    /// Every connection ever accepted, for the per-connection reports.
    connection_states: Mutex<Vec<Arc<handler::ConnectionState>>>,
    /// Bumped to make every open connection send GOAWAY.
    goaway_all: watch::Sender<u64>,
    idle_timeout: Option<Duration>,
    certificate_auth: bool,
    /// Seconds a provider token lives; changeable while running.
    token_max_age: AtomicU64,
    started: std::time::Instant,
    token_events: Mutex<Vec<TokenEvent>>,
    strict_topics: bool,
    /// Broadcast channels, made through the management listener.
    channels: Mutex<channels::Store>,
}

/// A running simulator. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    /// The channel management listener's address, when there is one.
    channels_addr: Option<SocketAddr>,
    ca_pem: String,
    state: Arc<State>,
    /// Sends new fault knobs to the request handlers.
    faults: watch::Sender<Faults>,
    /// Issues client certificates in certificate-auth mode.
    client_issuer: Option<rcgen::Issuer<'static, rcgen::KeyPair>>,
    /// Ends the accept loop when the simulator is dropped.
    _stop: watch::Sender<()>,
}

impl Simulator {
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        let certs = certs::generate(&config.hostnames, config.certificate_auth)
            .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (faults_tx, faults_rx) = watch::channel(config.faults.clone());
        let state = Arc::new(State {
            keys: std::sync::RwLock::new(Arc::new(config.keys)),
            revoked: Mutex::new(HashSet::new()),
            record: config.record,
            log_deliveries: config.log_deliveries,
            faults: faults_rx,
            accepted_count: AtomicU64::new(0),
            accepted: Mutex::new(Vec::new()),
            rejected: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(std::collections::HashMap::new()),
            connections: AtomicU64::new(0),
            connection_states: Mutex::new(Vec::new()),
            goaway_all: watch::channel(0).0,
            idle_timeout: config.idle_timeout,
            certificate_auth: config.certificate_auth,
            token_max_age: AtomicU64::new(config.token_max_age.as_secs()),
            started: std::time::Instant::now(),
            token_events: Mutex::new(Vec::new()),
            strict_topics: config.strict_topics,
            channels: Mutex::new(channels::Store::new()),
        });
        let (stop, stopped) = watch::channel(());
        let acceptor = TlsAcceptor::from(certs.server_config);
        let channels_addr = match config.channels_listen {
            None => None,
            Some(listen) => {
                let listener = TcpListener::bind(listen).await?;
                let addr = listener.local_addr()?;
                tokio::spawn(accept_loop(
                    listener,
                    acceptor.clone(),
                    config.max_streams,
                    state.clone(),
                    Listener::Management,
                    stopped.clone(),
                ));
                Some(addr)
            }
        };
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            config.max_streams,
            state.clone(),
            Listener::Push,
            stopped,
        ));
        tracing::info!(%addr, "APNs simulator listening");
        Ok(Simulator {
            addr,
            channels_addr,
            ca_pem: certs.ca_pem,
            state,
            faults: faults_tx,
            client_issuer: certs.client_issuer,
            _stop: stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`, the value for `MISIVA_APNS_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// `https://127.0.0.1:<port>` of channel management, the value for
    /// `MISIVA_APNS_CHANNELS_ENDPOINT`, when it listens.
    pub fn channels_endpoint(&self) -> Option<String> {
        self.channels_addr
            .map(|addr| format!("https://127.0.0.1:{}", addr.port()))
    }

    /// Every channel, by (bundle id, channel id).
    pub fn channels(&self) -> BTreeMap<(String, String), ChannelInfo> {
        lock(&self.state.channels).clone()
    }

    /// Makes a channel for `bundle` directly, as `misiva channels create`
    /// would through the management listener (benchmarks use it).
    pub fn create_channel(&self, bundle: &str, storage: u8) -> String {
        let id = channels::new_channel_id();
        lock(&self.state.channels).insert(
            (bundle.to_owned(), id.clone()),
            ChannelInfo {
                storage: storage.min(1),
            },
        );
        id
    }

    /// Deletes a channel as if another tool had: broadcasts to it are then
    /// answered `ChannelNotRegistered`.
    pub fn delete_channel(&self, bundle: &str, channel: &str) -> bool {
        lock(&self.state.channels)
            .remove(&(bundle.to_owned(), channel.to_owned()))
            .is_some()
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate for `topic`, in certificate-auth mode (`None` otherwise).
    pub fn issue_client_certificate(
        &self,
        topic: &str,
        password: &str,
    ) -> Option<ClientCertificate> {
        let issuer = self.client_issuer.as_ref()?;
        certs::issue_client(issuer, topic, password).ok()
    }

    /// Replaces the keys provider tokens may be signed with: a token
    /// signed by a key no longer here is answered `InvalidProviderToken`.
    pub fn set_keys(&self, keys: Vec<SimKey>) {
        *self.state.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// The key ids accepted now.
    pub fn key_ids(&self) -> Vec<String> {
        let keys = self.state.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.iter().map(|k| k.key_id.clone()).collect()
    }

    /// Stops accepting client certificates with this common name (the
    /// `topic` they were issued for): their requests are answered
    /// `403 BadCertificate`, as APNs answers a revoked certificate.
    pub fn revoke_client_certificate(&self, common_name: &str) {
        lock(&self.state.revoked).insert(common_name.to_owned());
    }

    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    pub fn accepted_count(&self) -> u64 {
        self.state.accepted_count.load(Ordering::Relaxed)
    }

    /// Every accepted notification so far (empty unless `record` is on).
    pub fn accepted(&self) -> Vec<Accepted> {
        lock(&self.state.accepted).clone()
    }

    /// Answers other than 200, by (status, reason).
    /// Provider tokens accepted and rejected as expired, in order.
    pub fn token_events(&self) -> Vec<TokenEvent> {
        lock(&self.state.token_events).clone()
    }

    pub fn rejected(&self) -> BTreeMap<(u16, String), u64> {
        lock(&self.state.rejected).clone()
    }

    /// How many requests each device token got, whatever the answer (empty
    /// unless `record` is on).
    pub fn requests_by_token(&self) -> std::collections::HashMap<String, u32> {
        lock(&self.state.requests).clone()
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// For each connection so far: the most requests it had in flight at once.
    pub fn max_concurrent_streams(&self) -> Vec<usize> {
        lock(&self.state.connection_states)
            .iter()
            .map(|c| c.max_in_flight.load(Ordering::Relaxed))
            .collect()
    }

    /// For each connection so far: the key ids of the tokens used on it.
    pub fn key_ids_per_connection(&self) -> Vec<std::collections::HashSet<String>> {
        lock(&self.state.connection_states)
            .iter()
            .map(|c| lock(&c.key_ids).clone())
            .collect()
    }

    /// Sends GOAWAY on every open connection (they finish what they started).
    /// Changes how long provider tokens live from now on: 0 makes APNs answer
    /// `ExpiredProviderToken` to every token older than a second, as when the
    /// provider's clock or key is rejected.
    pub fn set_token_max_age(&self, age: Duration) {
        self.state
            .token_max_age
            .store(age.as_secs(), Ordering::Relaxed);
    }

    pub fn goaway_all(&self) {
        self.state.goaway_all.send_modify(|n| *n += 1);
    }
}

/// The simulator's maps are only ever pushed to or read whole, so a panic
/// elsewhere cannot leave them half-written: a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which of Apple's services a listener plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// Device pushes and broadcasts.
    Push,
    /// Channel management.
    Management,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    max_streams: u32,
    state: Arc<State>,
    kind: Listener,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            // Ends when the simulator is dropped (its sender with it).
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "simulator TLS handshake failed");
                    return;
                }
            };
            state.connections.fetch_add(1, Ordering::Relaxed);
            let connection = Arc::new(handler::ConnectionState::default());
            if let Some(name) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| certs::common_name(leaf.as_ref()))
            {
                *lock(&connection.certificate) = Some(name);
            }
            lock(&state.connection_states).push(connection.clone());
            let last_read = Arc::new(AtomicU64::new(0));
            let started = tokio::time::Instant::now();
            let io = idle::Watched::new(tls, last_read.clone(), started);
            let mut goaway_all = state.goaway_all.subscribe();
            let idle_timeout = state.idle_timeout;
            let service = {
                let connection = connection.clone();
                service_fn(move |request| {
                    let state = state.clone();
                    let connection = connection.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(match kind {
                            Listener::Push => handler::handle(&state, &connection, request).await,
                            Listener::Management => {
                                channels::manage(&state, &connection, request).await
                            }
                        })
                    }
                })
            };
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(max_streams)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(served);
            let mut idle_check = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    result = &mut served => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "simulator connection ended");
                        }
                        return;
                    }
                    _ = connection.goaway.notified() => served.as_mut().graceful_shutdown(),
                    Ok(()) = goaway_all.changed() => served.as_mut().graceful_shutdown(),
                    // Dropping the connection closes TCP with no GOAWAY: a reset.
                    _ = connection.reset.notified() => return,
                    _ = idle_check.tick(), if idle_timeout.is_some() => {
                        let quiet = started.elapsed().saturating_sub(Duration::from_millis(last_read.load(Ordering::Relaxed)));
                        if idle_timeout.is_some_and(|limit| quiet > limit) {
                            tracing::debug!(%peer, ?quiet, "simulator closing an idle connection");
                            return;
                        }
                    }
                }
            }
        });
    }
}

type Body = Full<Bytes>;
pub mod cli;

impl State {
    fn token_event(&self, bearer: &str, kind: TokenEventKind) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bearer.hash(&mut hasher);
        let event = TokenEvent {
            at: self.started.elapsed(),
            token: hasher.finish(),
            kind,
        };
        let mut events = lock(&self.token_events);
        // Bounded: a long-running simulator keeps the most recent events only.
        if events.len() >= 100_000 {
            events.drain(..50_000);
        }
        events.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_directory_gives_every_key_its_team_and_lists_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("TEAMONE001.KEYONE0001.p8"),
            crate::jwt::generate_p8(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("TEAMTWO001.KEYTWO0001.p8"),
            crate::jwt::generate_p8(),
        )
        .unwrap();
        std::fs::write(dir.path().join("noteam.p8"), crate::jwt::generate_p8()).unwrap();
        std::fs::write(dir.path().join("TEAM.BAD.pem"), "not a key").unwrap();
        std::fs::write(dir.path().join("README"), "ignored").unwrap();
        let (keys, problems) = read_keys_dir(dir.path()).unwrap();
        let ids: Vec<(&str, &str)> = keys
            .iter()
            .map(|k| (k.team_id.as_str(), k.key_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("TEAMONE001", "KEYONE0001"), ("TEAMTWO001", "KEYTWO0001")]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(read_keys_dir(&dir.path().join("missing")).is_err());
    }
}
