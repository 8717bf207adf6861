//! The APNs side: one client per app (credentials profile), each with its own
//! connection, provider token and default topic. Only this module (and the
//! simulator) speaks HTTP/2.

mod auth;
mod breaker;
mod connection;
mod cork;
pub mod manage;
mod pool;
mod registry;
mod tls;

pub use auth::ProviderToken;
pub use breaker::{Breaker, Pass, Ticket};
pub use connection::{ConnectError, Connection, RequestEnd, State, Target};
pub use pool::Pool;
pub use registry::{Apns, AppSource, AppView, Unavailable, Upsert};
pub use tls::{ClientIdentity, TlsError, client_config};

use crate::config::{AppConfig, Auth};
use crate::events::{self, AppMetrics};
use crate::job::{ChannelId, DeviceToken, Job, PushType, Topic};
use crate::jwt::{KeyError, SigningKey};
use crate::lane::Lane;
use crate::outcome::{ApnsAnswer, TokenOutcome, classify};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::Duration;

/// A problem with an app's APNs settings: reported at start, never retried.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("app {app:?}: {source}")]
    Key { app: String, source: KeyError },
    #[error("app {app:?}: {source}")]
    Tls { app: String, source: TlsError },
    #[error("app {app:?}: {authority:?} is not a valid host and port")]
    Endpoint { app: String, authority: String },
    #[error("app {app:?}: topic {topic:?} is not a valid apns-topic")]
    Topic { app: String, topic: String },
}

/// Where one request goes: a device, or a broadcast channel's subscribers.
#[derive(Debug, Clone, Copy)]
pub enum Recipient<'a> {
    Device(&'a DeviceToken),
    Channel(&'a ChannelId),
}

impl Recipient<'_> {
    /// The metric label of the target kind: a fixed set.
    fn label(self) -> &'static str {
        match self {
            Recipient::Device(_) => "token",
            Recipient::Channel(_) => "channel",
        }
    }
}

/// Everything of a job that is the same for each of its tokens, prepared once.
#[derive(Debug, Clone)]
pub struct JobRequest {
    topic: Option<HeaderValue>,
    /// A channel job's `/4/broadcasts/apps/<bundle id>`; `None` when the job
    /// names no topic and the app has none.
    broadcast_path: Option<http::uri::PathAndQuery>,
    push_type: HeaderValue,
    priority: Option<HeaderValue>,
    expiration: Option<HeaderValue>,
    collapse_id: Option<HeaderValue>,
    apns_id: Option<HeaderValue>,
    /// Seeds the per-token `apns-id` when the job gives none.
    job_id: String,
    payload: Bytes,
}

/// Namespace of the `apns-id`s Misiva derives (UUID v5 of "job id/token"), so
/// that one job's notification to one device has the same id on every attempt
/// and operators can follow it from the queue to APNs' logs.
const APNS_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d69_7369_7661_4000_8000_6170_6e73_6964);

/// The `apns-id` of `job_id`'s notification to `token`.
pub fn derived_apns_id(job_id: &str, token: &DeviceToken) -> uuid::Uuid {
    // `Uuid::new_v5` of "job id/token", hashed in parts so that no string is
    // built per request (the test below holds the two equal).
    let mut hash = sha1_smol::Sha1::new();
    hash.update(APNS_ID_NAMESPACE.as_bytes());
    hash.update(job_id.as_bytes());
    hash.update(b"/");
    hash.update(token.as_str().as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.digest().bytes()[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

impl JobRequest {
    /// `default_topic` is the app's, used when the job names none.
    pub fn new(job: &Job, default_topic: Option<&Topic>) -> JobRequest {
        let topic = match &job.topic {
            Some(topic) => header(topic.as_str()),
            None => default_topic
                .map(|t| t.for_push_type(job.push_type))
                .and_then(|t| header(t.as_str())),
        };
        JobRequest::with_topic(job, topic, default_topic)
    }

    fn with_topic(
        job: &Job,
        topic: Option<HeaderValue>,
        default_topic: Option<&Topic>,
    ) -> JobRequest {
        let broadcast = job.channel.is_some();
        JobRequest {
            topic,
            broadcast_path: job
                .channel
                .as_ref()
                .and(job.topic.as_ref().or(default_topic))
                .and_then(|topic| {
                    http::uri::PathAndQuery::try_from(format!(
                        "{BROADCAST_PATH}{}",
                        topic.bundle_id()
                    ))
                    .ok()
                }),
            push_type: HeaderValue::from_static(job.push_type.as_str()),
            // A broadcast states both: Apple requires them on every one.
            priority: match (job.priority, broadcast) {
                (Some(p), _) => Some(HeaderValue::from_static(p.as_str())),
                (None, true) => Some(HeaderValue::from_static("10")),
                (None, false) => None,
            },
            expiration: match (job.expiration, broadcast) {
                (Some(e), _) => Some(HeaderValue::from(e)),
                (None, true) => Some(HeaderValue::from_static("0")),
                (None, false) => None,
            },
            collapse_id: job.collapse_id.as_ref().and_then(|c| header(c.as_str())),
            apns_id: job.apns_id.and_then(|id| header(&id.to_header())),
            job_id: job.id.to_string(),
            payload: job.payload.clone(),
        }
    }
}

/// Every value a job carries was validated by `job::decode` to be printable
/// ASCII, so conversion to a header value cannot fail; `.ok()` keeps it total.
fn header(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

/// An app's credentials: its provider token (token auth), and the TLS
/// configuration with its client certificate (certificate auth) and CA,
/// with what may be said of them.
fn credentials(
    app: &str,
    config: &AppConfig,
) -> Result<
    (
        Option<ProviderToken>,
        Arc<rustls::ClientConfig>,
        CredentialFacts,
    ),
    SetupError,
> {
    let tls_err = |source| SetupError::Tls {
        app: app.to_owned(),
        source,
    };
    let (token, identity, facts) = match &config.auth {
        Auth::Token {
            key_file,
            key_id,
            team_id,
        } => {
            let key = SigningKey::from_file(key_file).map_err(|source| SetupError::Key {
                app: app.to_owned(),
                source,
            })?;
            let facts = CredentialFacts {
                auth: "token",
                key_id: Some(key_id.clone()),
                certificate_expiry: None,
            };
            (
                Some(ProviderToken::new(
                    app,
                    key,
                    key_id.clone(),
                    team_id.clone(),
                )),
                None,
                facts,
            )
        }
        Auth::Certificate {
            cert_file,
            password,
        } => {
            let password = password.as_ref().map(|p| p.expose().as_str());
            let identity = ClientIdentity::from_file(cert_file, password).map_err(tls_err)?;
            let facts = CredentialFacts {
                auth: "certificate",
                key_id: None,
                certificate_expiry: identity.not_after(),
            };
            (None, Some(identity), facts)
        }
    };
    let tls = client_config(config.ca_file.as_deref(), identity).map_err(tls_err)?;
    Ok((token, tls, facts))
}

/// What may be said of an app's credentials, in `GET /apps` and the
/// metrics: never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFacts {
    /// `token` or `certificate`.
    pub auth: &'static str,
    pub key_id: Option<String>,
    /// The client certificate's `notAfter`, in seconds since the epoch.
    pub certificate_expiry: Option<i64>,
}

/// Reads and checks an app's credentials without connecting: its key
/// loads and signs, or its certificate and private key load (with their
/// password) and, with its CA, make a TLS configuration. For `misiva apps
/// check` and the apps directory's watcher, which must find what the
/// worker would refuse.
pub fn check_credentials(app: &str, config: &AppConfig) -> Result<CredentialFacts, SetupError> {
    credentials(app, config).map(|(_, _, facts)| facts)
}

/// The client of one app.
#[derive(Debug, Clone)]
pub struct ApnsClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    /// This app's connections; no other app's requests ever use them, as APNs
    /// binds a token-auth connection to one team.
    pool: Pool,
    /// Token auth: the app's provider token, shared by all its connections.
    /// `None` for certificate auth, where the TLS client certificate is the credential.
    token: Option<ProviderToken>,
    /// `host:port`, the authority of every request URI.
    authority: http::uri::Authority,
    topic: Option<Topic>,
    /// The default topic of each push type (with its suffix) as a header
    /// value and as the verdicts' text, made once, by [`PushType::index`].
    topics: Vec<(Option<HeaderValue>, Option<Arc<str>>)>,
    /// Broadcasts' own connections and authority, when they do not go to
    /// the app's endpoint (`broadcast_endpoint`).
    broadcast: Option<(Pool, http::uri::Authority)>,
    request_timeout: Duration,
    target: Target,
    /// Pauses this app's requests while APNs fails all of them.
    breaker: Breaker,
    /// Handles to this app's metrics on the notification path.
    metrics: AppMetrics,
    /// Bounds the app's requests in flight, whatever the number of jobs and
    /// their fan-out: about what its connections may carry at once
    /// ([`STREAMS_PER_CONNECTION`] each). More would only queue inside `h2`,
    /// costing memory (~10 KB a request) and no throughput.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// The places the normal lane may take: all but the urgent lane's
    /// reserve. A normal request holds one of these and one of `in_flight`;
    /// an urgent request only the latter, so the reserve is always free for
    /// it (CONTRACT §9).
    normal_places: Arc<tokio::sync::Semaphore>,
    /// Bounds the tokens of the app's many-token jobs in progress (see
    /// [`ApnsClient::admit`]), for the normal lane.
    room: Arc<tokio::sync::Semaphore>,
    /// The same for the urgent lane, on its own: an urgent job never waits
    /// for room a campaign's jobs hold.
    urgent_room: Arc<tokio::sync::Semaphore>,
    /// The room's size, in tokens.
    room_tokens: u32,
}

/// Room for one many-token job among its app's jobs in progress, held until
/// the job's verdict (see [`ApnsClient::admit`]). Single-token jobs take none.
#[derive(Debug)]
pub struct Room {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Tokens of an app's many-token jobs in progress at once, for `places`
/// requests in flight: enough jobs to keep every place busy (a job has at most
/// [`crate::dispatch::FANOUT_CONCURRENCY`] requests in flight), and four of
/// the largest jobs; about 150 bytes a token once decoded.
pub fn room_tokens(places: usize) -> usize {
    (16 * places).max(4 * crate::job::MAX_TOKENS)
}

/// A reserved place among an app's requests in flight (see [`ApnsClient::reserve`]).
#[derive(Debug)]
pub struct Place {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The normal lane's share, held beside the place itself.
    _normal: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The place's unit on the app's `notifications_in_flight` gauge.
    _counted: events::OwnedGaugeUnit,
}

/// Requests in flight per connection the client allows: APNs' usual
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
pub const STREAMS_PER_CONNECTION: usize = 1000;

impl ApnsClient {
    /// Builds the client of one app, with the default urgent reserve.
    pub async fn new(app: &str, config: &AppConfig) -> Result<ApnsClient, SetupError> {
        ApnsClient::with_reserve(app, config, crate::config::DEFAULT_URGENT_RESERVE).await
    }

    /// Builds the client of one app: reads its key and CA (errors here are
    /// configuration errors), and starts its pool of connection actors.
    /// `urgent_reserve` per cent of its places in flight are kept for the
    /// urgent lane.
    pub async fn with_reserve(
        app: &str,
        config: &AppConfig,
        urgent_reserve: u8,
    ) -> Result<ApnsClient, SetupError> {
        // First, so that every part below labels its metrics with this app.
        let metrics = AppMetrics::new(app);
        let (token, tls, _) = credentials(app, config)?;
        let topic = config
            .topic
            .clone()
            .map(|t| {
                Topic::parse(t.clone()).map_err(|_| SetupError::Topic {
                    app: app.to_owned(),
                    topic: t,
                })
            })
            .transpose()?;
        let target = Target {
            host: config.endpoint.host().to_owned(),
            port: config.endpoint.port(),
            tls,
            keepalive: config.keepalive,
            metrics: metrics.clone(),
        };
        let authority =
            http::uri::Authority::try_from(config.endpoint.authority()).map_err(|_| {
                SetupError::Endpoint {
                    app: app.to_owned(),
                    authority: config.endpoint.authority(),
                }
            })?;
        let broadcast = match &config.broadcast_endpoint {
            None => None,
            Some(endpoint) => {
                let authority =
                    http::uri::Authority::try_from(endpoint.authority()).map_err(|_| {
                        SetupError::Endpoint {
                            app: app.to_owned(),
                            authority: endpoint.authority(),
                        }
                    })?;
                let target = Target {
                    host: endpoint.host().to_owned(),
                    port: endpoint.port(),
                    ..target.clone()
                };
                Some((Pool::new(target, 1).await, authority))
            }
        };
        let places = config.connections * STREAMS_PER_CONNECTION;
        let room = room_tokens(places);
        // At least one place is kept when any share is asked for.
        let reserved = (places * usize::from(urgent_reserve)).div_ceil(100);
        Ok(ApnsClient {
            inner: Arc::new(ClientInner {
                pool: Pool::new(target.clone(), config.connections).await,
                token,
                authority,
                topics: PushType::ALL
                    .iter()
                    .map(|push_type| {
                        let topic = topic.as_ref().map(|t| t.for_push_type(*push_type));
                        (
                            topic.as_ref().and_then(|t| header(t.as_str())),
                            topic.as_ref().map(|t| Arc::from(t.as_str())),
                        )
                    })
                    .collect(),
                broadcast,
                topic,
                request_timeout: config.request_timeout,
                target,
                breaker: Breaker::new(app),
                metrics,
                in_flight: Arc::new(tokio::sync::Semaphore::new(places)),
                normal_places: Arc::new(tokio::sync::Semaphore::new(
                    places.saturating_sub(reserved).max(1),
                )),
                room: Arc::new(tokio::sync::Semaphore::new(room)),
                urgent_room: Arc::new(tokio::sync::Semaphore::new(room)),
                room_tokens: u32::try_from(room).unwrap_or(u32::MAX),
            }),
        })
    }

    pub fn default_topic(&self) -> Option<&Topic> {
        self.inner.topic.as_ref()
    }

    /// The default topic of `push_type` (with its suffix), shared.
    pub fn default_topic_name(&self, push_type: PushType) -> Option<Arc<str>> {
        self.inner
            .topics
            .get(push_type.index())
            .and_then(|(_, name)| name.clone())
    }

    /// The parts of `job`'s requests that are the same for each of its
    /// tokens, with this app's default topic when the job names none.
    pub fn job_request(&self, job: &Job) -> JobRequest {
        let topic = match &job.topic {
            Some(topic) => header(topic.as_str()),
            None => self
                .inner
                .topics
                .get(job.push_type.index())
                .and_then(|(header, _)| header.clone()),
        };
        JobRequest::with_topic(job, topic, self.inner.topic.as_ref())
    }

    /// Connects once to prove the endpoint and CA are right.
    pub async fn probe(&self) -> Result<(), ConnectError> {
        Connection::probe(&self.inner.target).await
    }

    /// Sends the job's notification to one device, after the app's circuit
    /// breaker lets it through.
    pub async fn send(&self, job: &JobRequest, token: &DeviceToken) -> ApnsAnswer {
        let place = self.reserve(Lane::Normal).await;
        let forever = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        match self
            .send_reserved(job, Recipient::Device(token), place, forever)
            .await
        {
            Some(answer) => answer,
            None => ApnsAnswer::Transport("held past its deadline".into()),
        }
    }

    /// Room for a job of `tokens` tokens among the app's jobs in progress, if
    /// there is some now; else the weight to [`admit`](Self::admit) it with.
    /// A job of one token needs none: its memory is bounded by the prefetch.
    ///
    /// Why: a consumer holds up to `prefetch` deliveries. Were each decoded
    /// and started at once, a backlog of 1,000-token jobs would have a
    /// thousand jobs in progress (each taking a place in turn, all finishing
    /// at the end), their decoded tokens about five times the bodies' size:
    /// hundreds of MiB, past the chart's memory limit, and a replica killed
    /// for it hands its deliveries to the next one, which dies the same way.
    /// Jobs admitted by room finish in order, and the rest wait as bodies.
    pub fn try_admit(&self, lane: Lane, tokens: usize) -> Result<Room, u32> {
        if tokens < 2 {
            return Ok(Room { _permit: None });
        }
        let room = self.room(lane);
        // At most all the room: a job never waits for more than exists.
        let weight = u32::try_from(tokens)
            .unwrap_or(u32::MAX)
            .min(self.inner.room_tokens);
        match room.clone().try_acquire_many_owned(weight) {
            Ok(permit) => Ok(Room {
                _permit: Some(permit),
            }),
            Err(_) => Err(weight),
        }
    }

    /// Waits for room of `weight` tokens (from [`try_admit`](Self::try_admit)),
    /// in arrival order, counted on the app's `jobs_waiting_for_room` gauge.
    pub async fn admit(&self, lane: Lane, weight: u32) -> Room {
        let _waiting = self.inner.metrics.waiting_for_room().hold();
        let permit = self
            .room(lane)
            .clone()
            .acquire_many_owned(weight)
            .await
            .expect("the room semaphore is never closed");
        Room {
            _permit: Some(permit),
        }
    }

    fn room(&self, lane: Lane) -> &Arc<tokio::sync::Semaphore> {
        match lane {
            Lane::Normal => &self.inner.room,
            Lane::Urgent => &self.inner.urgent_room,
        }
    }

    /// Waits for a place among the app's requests in flight. Reserve before
    /// building a request's future: a fan-out then holds at most as many
    /// futures as there are places, however many tokens and jobs wait. The
    /// normal lane first takes its share, so that it never holds the urgent
    /// lane's reserve.
    pub async fn reserve(&self, lane: Lane) -> Place {
        let normal = match lane {
            Lane::Urgent => None,
            Lane::Normal => Some(
                self.inner
                    .normal_places
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the normal lane's semaphore is never closed"),
            ),
        };
        let permit = self
            .inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the in-flight semaphore is never closed");
        Place {
            _permit: permit,
            _normal: normal,
            _counted: self.inner.metrics.in_flight().hold_owned(),
        }
    }

    /// Sends with a place already reserved; the place is freed when it returns.
    /// `None` when the app's breaker held the request past `deadline`: it was
    /// never sent. Only the wait is bounded; a request once sent is answered.
    pub fn send_reserved(
        &self,
        job: &JobRequest,
        to: Recipient<'_>,
        place: Place,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Option<ApnsAnswer>> {
        async move {
            // The place is held until the answer. An `async move` block only
            // takes what it names, so it must be named here: unnamed, the
            // place would be freed as soon as this function returned, and
            // nothing would bound the app's requests in flight.
            let _place = place;
            let ticket = tokio::time::timeout_at(deadline, self.inner.breaker.ticket())
                .await
                .ok()?;
            let answer = self.send_now(job, to).await;
            ticket.record(crate::outcome::counts_against_app(&answer));
            Some(answer)
        }
    }

    /// An `ExpiredProviderToken` answer renews the token and retries once, at
    /// once (CONTRACT §3).
    fn send_now(&self, job: &JobRequest, to: Recipient<'_>) -> impl Future<Output = ApnsAnswer> {
        async move {
            let inner = &self.inner;
            let Some(provider) = &inner.token else {
                return self.send_one(job, to, || self.request(job, to, None)).await;
            };
            let bearer = provider.header();
            let answer = self
                .send_one(job, to, || self.request(job, to, Some(&bearer)))
                .await;
            if let TokenOutcome::Credentials { renew: true, .. } = classify(&answer)
                && let Some(renewed) = provider.renew_after_rejection(&bearer)
            {
                // Boxed: a rare path, which would otherwise add the renewed
                // token and the first answer to every request's future.
                return Box::pin(self.send_one(job, to, || self.request(job, to, Some(&renewed))))
                    .await;
            }
            answer
        }
    }

    /// One request through the pool, timed and counted.
    fn send_one(
        &self,
        job: &JobRequest,
        to: Recipient<'_>,
        build: impl Fn() -> http::Request<()>,
    ) -> impl Future<Output = ApnsAnswer> {
        async move {
            let inner = &self.inner;
            let started = std::time::Instant::now();
            let pool = match (to, &inner.broadcast) {
                (Recipient::Channel(_), Some((pool, _))) => pool,
                _ => &inner.pool,
            };
            let answer = pool
                .send(build, &job.payload, inner.request_timeout, &inner.metrics)
                .await;
            events::emit(events::NotificationAnswered {
                app: &inner.metrics,
                target: to.label(),
                answer: &answer,
                elapsed: started.elapsed(),
            });
            answer
        }
    }

    /// The request's head; its body is the job's payload. Every part but the
    /// path and the `apns-id` comes ready-made from the job (or the app), so
    /// that a request costs a few reference counts, not a parse of each header.
    fn request(
        &self,
        job: &JobRequest,
        to: Recipient<'_>,
        bearer: Option<&HeaderValue>,
    ) -> http::Request<()> {
        let token = match to {
            Recipient::Device(token) => token,
            Recipient::Channel(channel) => return self.broadcast_request(job, channel, bearer),
        };
        let mut request = post(self.uri(token), job, bearer);
        let headers = request.headers_mut();
        let optional = [
            (APNS_TOPIC, &job.topic),
            (APNS_PRIORITY, &job.priority),
            (APNS_EXPIRATION, &job.expiration),
            (APNS_COLLAPSE_ID, &job.collapse_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
        let apns_id = match &job.apns_id {
            Some(id) => id.clone(),
            None => {
                let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                let text = derived_apns_id(&job.job_id, token)
                    .hyphenated()
                    .encode_lower(&mut text);
                // A hyphenated UUID is always a valid header value.
                let mut value = HeaderValue::from_str(text)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
                // Unique per request: HPACK must not insert it into the
                // connection's table, where it would only evict useful entries.
                value.set_sensitive(true);
                value
            }
        };
        headers.insert(APNS_ID, apns_id);
        request
    }

    /// `https://host:port/3/device/<token>`: the scheme and authority were
    /// parsed once at start; the path is a hex token, always a valid path.
    fn uri(&self, token: &DeviceToken) -> http::Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(self.inner.authority.clone());
        // Pushed, not `format!`ed: this runs once per notification, and the
        // formatting machinery costs more than the copy itself.
        let mut path = String::with_capacity(DEVICE_PATH.len() + token.as_str().len());
        path.push_str(DEVICE_PATH);
        path.push_str(token.as_str());
        parts.path_and_query = http::uri::PathAndQuery::try_from(path).ok();
        http::Uri::from_parts(parts).unwrap_or_default()
    }
}

impl ApnsClient {
    /// A broadcast's head (CONTRACT §7): no topic and no `apns-id`, the
    /// channel in `apns-channel-id`, and the bundle id in the path. A job
    /// with no topic (and an app with none) has no path: APNs answers that
    /// request `404 BadPath`, and the job is dead-lettered with that reason.
    fn broadcast_request(
        &self,
        job: &JobRequest,
        channel: &ChannelId,
        bearer: Option<&HeaderValue>,
    ) -> http::Request<()> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(match &self.inner.broadcast {
            Some((_, authority)) => authority.clone(),
            None => self.inner.authority.clone(),
        });
        parts.path_and_query = Some(
            job.broadcast_path
                .clone()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static(BROADCAST_PATH)),
        );
        let mut request = post(
            http::Uri::from_parts(parts).unwrap_or_default(),
            job,
            bearer,
        );
        let headers = request.headers_mut();
        if let Some(value) = header(channel.as_str()) {
            headers.insert(APNS_CHANNEL_ID, value);
        }
        for (name, value) in [
            (APNS_PRIORITY, &job.priority),
            (APNS_EXPIRATION, &job.expiration),
        ] {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
        request
    }
}

/// The head every request to APNs starts with, device push or broadcast:
/// `POST uri`, the content type, the job's push type and the provider token.
fn post(uri: http::Uri, job: &JobRequest, bearer: Option<&HeaderValue>) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(8);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(APNS_PUSH_TYPE, job.push_type.clone());
    if let Some(bearer) = bearer {
        headers.insert(http::header::AUTHORIZATION, bearer.clone());
    }
    request
}

/// The path of a broadcast, before the bundle id.
const BROADCAST_PATH: &str = "/4/broadcasts/apps/";
const APNS_CHANNEL_ID: HeaderName = HeaderName::from_static("apns-channel-id");

/// The path of a request, before the device token.
const DEVICE_PATH: &str = "/3/device/";
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The derived `apns-id` is exactly RFC 9562's UUID v5 of "job id/token".
        #[test]
        fn derived_ids_are_uuid_v5(job_id in "[ -~]{1,128}", token in "([0-9a-f]{2}){32,100}") {
            let token = DeviceToken::parse("token", &token).unwrap();
            let name = format!("{job_id}/{}", token.as_str());
            proptest::prop_assert_eq!(
                derived_apns_id(&job_id, &token),
                uuid::Uuid::new_v5(&APNS_ID_NAMESPACE, name.as_bytes())
            );
        }
    }
}
