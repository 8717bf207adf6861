//! Settings: an optional TOML file (`--config` / `MISIVA_CONFIG`) overridden by the
//! `MISIVA_*` environment variables of CONTRACT §4. Every mistake is a
//! [`ConfigError`] reported at start; configuration never causes a restart.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never reach a log, an error or a metric. `Debug` and
/// `Display` print a placeholder; [`Secret::expose`] is the only way in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name} is {value:?}: {problem}")]
    Invalid {
        name: String,
        value: String,
        problem: String,
    },
    #[error("app {app:?}: {problem}")]
    App { app: String, problem: String },
}

fn invalid(name: &str, value: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: value.into(),
        problem: problem.into(),
    }
}

/// The async runtime for `threads` threads: one is a current-thread runtime
/// (the requests and their connections share the thread), more a
/// multi-threaded one with that many workers, 0 tokio's default (one per CPU).
/// The worker and the pool benchmark both build theirs here.
pub fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder
}

/// Threads of the async runtime: `MISIVA_RUNTIME_THREADS`, else the CPUs the
/// process may use (which counts a container's CPU limit). With one, the
/// worker runs a single-threaded runtime: no work stealing and no wake-ups
/// across threads, the least CPU per notification (see
/// `docs/benchmarks.md`); with more, one worker thread each.
/// `raw` is the variable's value, if set.
pub fn runtime_threads(raw: Option<std::ffi::OsString>) -> Result<usize, ConfigError> {
    const NAME: &str = "MISIVA_RUNTIME_THREADS";
    match raw.map(std::ffi::OsString::into_string) {
        None => Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get)),
        Some(Err(_)) => Err(invalid(NAME, "?", "not UTF-8")),
        Some(Ok(raw)) => raw
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                invalid(
                    NAME,
                    crate::bounded::cut(&raw, 64),
                    "expected a number of threads from 1 to 1024",
                )
            }),
    }
}

/// Where an app's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Production,
    Sandbox,
    /// Anything else speaking APNs over HTTP/2 + TLS: the simulator, a proxy.
    Custom {
        host: String,
        port: u16,
    },
}

impl Endpoint {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "production" => return Ok(Endpoint::Production),
            "sandbox" | "development" => return Ok(Endpoint::Sandbox),
            _ => {}
        }
        let rest = raw
            .strip_prefix("https://")
            .ok_or("expected production, sandbox or https://host:port")?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
                (host, port)
            }
            _ => (rest, 443),
        };
        if host.is_empty() || host.contains('/') {
            return Err("expected https://host:port without a path".into());
        }
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // The host must work both as a TLS server name and inside a request
        // URI; checked here, so that no request can fail to build later.
        if !valid_host(host) {
            return Err(format!(
                "{} is not a valid host name or IP address",
                crate::bounded::quote(host)
            ));
        }
        if host.contains(':') && !bracketed {
            return Err("an IPv6 address must be written in brackets: https://[::1]:443".into());
        }
        let endpoint = Endpoint::Custom {
            host: host.to_owned(),
            port,
        };
        if endpoint
            .authority()
            .parse::<http::uri::Authority>()
            .is_err()
        {
            return Err(format!(
                "{} cannot be used in a request URI",
                crate::bounded::quote(host)
            ));
        }
        Ok(endpoint)
    }

    /// `host:port` as a request URI carries it (IPv6 addresses in brackets).
    pub fn authority(&self) -> String {
        let host = self.host();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        match self.port() {
            443 => host,
            port => format!("{host}:{port}"),
        }
    }

    /// The endpoint of channel management (CONTRACT §7): `production` and
    /// `sandbox` name Apple's management hosts and ports, anything else is a
    /// URL as for [`Endpoint::parse`].
    pub fn parse_channels(raw: &str) -> Result<Self, String> {
        let apple = |host: &str, port| Endpoint::Custom {
            host: host.to_owned(),
            port,
        };
        match raw {
            "production" => Ok(apple("api-manage-broadcast.push.apple.com", 2196)),
            "sandbox" | "development" => {
                Ok(apple("api-manage-broadcast.sandbox.push.apple.com", 2195))
            }
            _ => Endpoint::parse(raw),
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Endpoint::Production => "api.push.apple.com",
            Endpoint::Sandbox => "api.sandbox.push.apple.com",
            Endpoint::Custom { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Custom { port, .. } => *port,
            _ => 443,
        }
    }
}

/// How an app proves itself to APNs.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Token auth: an ES256 `.p8` key (PKCS#8 PEM), its key id and the team id.
    Token {
        key_file: PathBuf,
        key_id: String,
        team_id: String,
    },
    /// Certificate auth: PKCS#12 (with password) or PEM certificate + key.
    Certificate {
        cert_file: PathBuf,
        password: Option<Secret<String>>,
    },
}

/// One credentials profile (`[apps.<name>]`).
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub endpoint: Endpoint,
    /// Where broadcasts go, when not to `endpoint` (CONTRACT §7).
    pub broadcast_endpoint: Option<Endpoint>,
    /// Where `misiva channels` manages the app's channels.
    pub channels_endpoint: Endpoint,
    pub ca_file: Option<PathBuf>,
    pub auth: Auth,
    pub topic: Option<String>,
    pub connections: usize,
    /// How long one request may wait for its answer.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 PINGs on idle connections.
    pub keepalive: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: Secret<String>,
    pub queue: String,
    pub dead_letter_queue: String,
    pub feedback_exchange: String,
    pub feedback_queue: String,
    /// Consumer actors per shard of the work queue.
    pub consumers: usize,
    /// Work-queue shards (CONTRACT §6); 1 is the plain work queue.
    pub shards: usize,
    pub prefetch: u16,
    /// Consumer actors of the urgent lane (CONTRACT §9).
    pub urgent_consumers: usize,
    /// Unacked deliveries per urgent consumer.
    pub urgent_prefetch: u16,
    /// Per cent of each app's places in flight (and the matching room for
    /// many-token jobs) kept for the urgent lane.
    pub urgent_reserve: u8,
    pub apps: BTreeMap<String, AppConfig>,
    pub admin_addr: String,
    pub log: String,
    pub log_format: LogFormat,
    /// How long a stopping worker may take to settle what is in flight.
    pub shutdown_grace: Duration,
    /// Delay of each retry tier, shortest first.
    pub retry_delays: Vec<Duration>,
    /// Deliveries a job gets before its unsettled tokens are dead-lettered.
    pub max_attempts: u32,
    /// Deliveries of one message by the broker (redeliveries included) before
    /// it is dead-lettered as `poison` without being dispatched again.
    pub max_deliveries: u32,
    /// Longest a delivery waits for APNs (an open breaker) before its tokens
    /// go to a retry tier; below RabbitMQ's `consumer_timeout`.
    pub max_hold: Duration,
    /// Restarts the broker-facing supervisors allow within a period before
    /// they give up (and, at the top, the process exits non-zero).
    pub restart_intensity: (u32, Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
    /// Unset: JSON for log collectors, text when a person watches a terminal.
    Auto,
}

/// The file's shape. Field names are the environment variables without the
/// `MISIVA_` prefix, in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    amqp_url: Option<String>,
    queue: Option<String>,
    dead_letter_queue: Option<String>,
    feedback_exchange: Option<String>,
    feedback_queue: Option<String>,
    consumers: Option<usize>,
    shards: Option<usize>,
    prefetch: Option<u16>,
    urgent_consumers: Option<usize>,
    urgent_prefetch: Option<u16>,
    urgent_reserve: Option<String>,
    admin_addr: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    shutdown_grace_secs: Option<u64>,
    retry_delays: Option<Vec<String>>,
    max_attempts: Option<u32>,
    max_deliveries: Option<u32>,
    max_hold: Option<String>,
    restart_intensity: Option<String>,
    #[serde(default)]
    apps: BTreeMap<String, FileApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    endpoint: Option<String>,
    broadcast_endpoint: Option<String>,
    channels_endpoint: Option<String>,
    ca_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    key_id: Option<String>,
    team_id: Option<String>,
    cert_file: Option<PathBuf>,
    cert_password: Option<String>,
    /// A file holding the certificate's password (a mounted Secret), so the
    /// configuration file itself holds no secret.
    cert_password_file: Option<PathBuf>,
    topic: Option<String>,
    connections: Option<usize>,
    request_timeout_ms: Option<u64>,
    keepalive_secs: Option<u64>,
}

/// The work queue's own delivery limit: past it, the broker dead-letters a
/// message itself. The worker parks poison earlier (`MISIVA_MAX_DELIVERIES`,
/// below this); the broker's limit catches what kills a worker before it can
/// (a process abort while reading the message). 20 is also RabbitMQ 4's
/// default, made explicit so that 3.x behaves the same.
pub const BROKER_DELIVERY_LIMIT: u32 = 20;

pub const DEFAULT_PREFETCH: u16 = 500;
/// Urgent jobs are mostly single-token and few: 100 unacked per consumer
/// carries thousands a second at APNs' usual round trip.
pub const DEFAULT_URGENT_PREFETCH: u16 = 100;
/// The share of places in flight the ordinary lane may never take.
pub const DEFAULT_URGENT_RESERVE: u8 = 10;

/// "10%" or "10" → 10, for 0 to 50: more than half kept idle for the urgent
/// lane would starve the ordinary one for nothing.
fn parse_percent(text: &str) -> Option<u8> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
    let value: u8 = number.parse().ok()?;
    (value <= 50).then_some(value)
}
/// The most work-queue shards: a quorum queue is a Raft group on every node
/// that holds it, so shards cost the broker memory and processes; 64 is far
/// beyond what one cluster's nodes can lead usefully.
pub const MAX_SHARDS: usize = 64;
pub const DEFAULT_CONNECTIONS: usize = 1;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Config {
    /// Loads from the process environment and the file it names, if any.
    pub fn load(file: Option<PathBuf>) -> Result<Config, ConfigError> {
        Config::load_with(file, true)
    }

    /// Loads what commands that talk only to the broker need (`topology`,
    /// `send`, `publish`, `dlq`): the same settings, but no APNs credentials
    /// are required (`apps` may be empty). What is configured is still checked.
    pub fn load_for_broker(file: Option<PathBuf>) -> Result<Config, ConfigError> {
        Config::load_with(file, false)
    }

    fn load_with(file: Option<PathBuf>, require_apps: bool) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("MISIVA_"))
            .collect();
        let file = file.or_else(|| env.get("MISIVA_CONFIG").map(PathBuf::from));
        let parsed = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: describe_toml_error(&text, &e),
                })?
            }
            None => FileConfig::default(),
        };
        Config::from_parts(parsed, &env, require_apps)
    }

    /// Loads from an explicit environment map; tests use this.
    pub fn from_env_map(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_parts(FileConfig::default(), env, true)
    }

    fn from_parts(
        file: FileConfig,
        env: &HashMap<String, String>,
        require_apps: bool,
    ) -> Result<Config, ConfigError> {
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        let number = |name: &str, file_value: Option<u64>| -> Result<Option<u64>, ConfigError> {
            match var(name) {
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| invalid(name, v, "expected a whole number")),
                None => Ok(file_value),
            }
        };

        let amqp_url = var("MISIVA_AMQP_URL")
            .or(file.amqp_url)
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        // One URL, or the nodes of a cluster separated by commas: every one
        // must be an AMQP URL.
        let valid = |url: &str| url.starts_with("amqp://") || url.starts_with("amqps://");
        if !amqp_urls(&amqp_url).all(valid) || amqp_urls(&amqp_url).next().is_none() {
            // The URL may hold a password: name the variable, not the value.
            return Err(invalid(
                "MISIVA_AMQP_URL",
                "(hidden)",
                "expected amqp://user:pass@host:port/vhost or amqps://..., or several separated by commas",
            ));
        }
        let queue = var("MISIVA_QUEUE")
            .or(file.queue)
            .unwrap_or_else(|| "misiva.jobs".into());
        let dead_letter_queue = file
            .dead_letter_queue
            .unwrap_or_else(|| format!("{queue}.dead"));
        let feedback_exchange = file
            .feedback_exchange
            .unwrap_or_else(|| "misiva.feedback".into());
        let feedback_queue = file
            .feedback_queue
            .unwrap_or_else(|| feedback_exchange.clone());
        let consumers = number("MISIVA_CONSUMERS", file.consumers.map(|c| c as u64))?.unwrap_or(2);
        if !(1..=256).contains(&consumers) {
            return Err(invalid(
                "MISIVA_CONSUMERS",
                consumers.to_string(),
                "expected 1 to 256",
            ));
        }
        let shards = number("MISIVA_SHARDS", file.shards.map(|c| c as u64))?.unwrap_or(1);
        if !(1..=MAX_SHARDS as u64).contains(&shards) {
            return Err(invalid(
                "MISIVA_SHARDS",
                shards.to_string(),
                format!("expected 1 to {MAX_SHARDS}"),
            ));
        }
        let prefetch = number("MISIVA_PREFETCH", file.prefetch.map(u64::from))?
            .unwrap_or(u64::from(DEFAULT_PREFETCH));
        if !(1..=u64::from(u16::MAX)).contains(&prefetch) {
            return Err(invalid(
                "MISIVA_PREFETCH",
                prefetch.to_string(),
                "expected 1 to 65535",
            ));
        }
        let urgent_consumers = number(
            "MISIVA_URGENT_CONSUMERS",
            file.urgent_consumers.map(|c| c as u64),
        )?
        .unwrap_or(1);
        if !(1..=64).contains(&urgent_consumers) {
            return Err(invalid(
                "MISIVA_URGENT_CONSUMERS",
                urgent_consumers.to_string(),
                "expected 1 to 64",
            ));
        }
        let urgent_prefetch = number(
            "MISIVA_URGENT_PREFETCH",
            file.urgent_prefetch.map(u64::from),
        )?
        .unwrap_or(u64::from(DEFAULT_URGENT_PREFETCH));
        if !(1..=u64::from(u16::MAX)).contains(&urgent_prefetch) {
            return Err(invalid(
                "MISIVA_URGENT_PREFETCH",
                urgent_prefetch.to_string(),
                "expected 1 to 65535",
            ));
        }
        let urgent_reserve = match var("MISIVA_URGENT_RESERVE").or(file.urgent_reserve) {
            None => DEFAULT_URGENT_RESERVE,
            Some(text) => parse_percent(&text).ok_or_else(|| {
                invalid(
                    "MISIVA_URGENT_RESERVE",
                    text.clone(),
                    "expected a share of 0% to 50%, such as 10%",
                )
            })?,
        };
        let log_format = match var("MISIVA_LOG_FORMAT")
            .or(file.log_format)
            .as_deref()
            .unwrap_or("auto")
        {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => return Err(invalid("MISIVA_LOG_FORMAT", other, "expected json or text")),
        };

        let retry_delays = match var("MISIVA_RETRY_DELAYS") {
            Some(list) => parse_delays("MISIVA_RETRY_DELAYS", list.split(','))?,
            None => match &file.retry_delays {
                Some(list) => parse_delays("retry_delays", list.iter().map(String::as_str))?,
                None => DEFAULT_RETRY_DELAYS
                    .iter()
                    .map(|s| Duration::from_secs(*s))
                    .collect(),
            },
        };
        let max_attempts =
            number("MISIVA_MAX_ATTEMPTS", file.max_attempts.map(u64::from))?.unwrap_or(8);
        if !(1..=1000).contains(&max_attempts) {
            return Err(invalid(
                "MISIVA_MAX_ATTEMPTS",
                max_attempts.to_string(),
                "expected 1 to 1000",
            ));
        }

        let shutdown_grace =
            number("MISIVA_SHUTDOWN_GRACE", file.shutdown_grace_secs)?.unwrap_or(20);
        if shutdown_grace > 3600 {
            return Err(invalid(
                "MISIVA_SHUTDOWN_GRACE",
                shutdown_grace.to_string(),
                "expected 0 to 3600 seconds",
            ));
        }
        let shutdown_grace = Duration::from_secs(shutdown_grace);
        // Names go into AMQP short strings (255 bytes); retry tiers append
        // ".retry.<delay>" to the work queue's name.
        for (name, value, limit) in [
            ("MISIVA_QUEUE", &queue, 230),
            ("dead_letter_queue", &dead_letter_queue, 255),
            ("feedback_exchange", &feedback_exchange, 255),
            ("feedback_queue", &feedback_queue, 255),
        ] {
            if value.is_empty() || value.len() > limit || value.starts_with("amq.") {
                return Err(invalid(
                    name,
                    crate::bounded::cut(value, 64),
                    format!("expected 1 to {limit} bytes, not starting with amq."),
                ));
            }
        }
        let max_hold = match var("MISIVA_MAX_HOLD").or(file.max_hold) {
            None => Duration::from_secs(600),
            Some(raw) => match parse_duration(&raw) {
                Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(25 * 60) => d,
                _ => {
                    return Err(invalid(
                        "MISIVA_MAX_HOLD",
                        crate::bounded::cut(&raw, 32),
                        "expected a duration from 1s to 25m (RabbitMQ's consumer_timeout is 30m)",
                    ));
                }
            },
        };
        let max_deliveries =
            number("MISIVA_MAX_DELIVERIES", file.max_deliveries.map(u64::from))?.unwrap_or(10);
        if !(1..u64::from(BROKER_DELIVERY_LIMIT)).contains(&max_deliveries) {
            return Err(invalid(
                "MISIVA_MAX_DELIVERIES",
                max_deliveries.to_string(),
                format!(
                    "expected 1 to {}: the work queue's own delivery limit is {}, and the worker must park a poison message before the broker does",
                    BROKER_DELIVERY_LIMIT - 1,
                    BROKER_DELIVERY_LIMIT
                ),
            ));
        }
        let restart_intensity =
            match var("MISIVA_RESTART_INTENSITY").or(file.restart_intensity.clone()) {
                None => (10, Duration::from_secs(60)),
                Some(raw) => raw
                    .split_once('/')
                    .and_then(|(n, p)| Some((n.trim().parse().ok()?, parse_duration(p)?)))
                    .filter(|(n, p): &(u32, Duration)| *n > 0 && !p.is_zero())
                    .ok_or_else(|| {
                        invalid(
                            "MISIVA_RESTART_INTENSITY",
                            raw.clone(),
                            "expected restarts/period, like 10/60s",
                        )
                    })?,
            };

        // The environment describes the `default` app, on top of its file section.
        let mut apps_raw = file.apps;
        let default = apps_raw.entry("default".to_owned()).or_default();
        let overrides: [(&str, &mut Option<String>); 7] = [
            ("MISIVA_APNS_ENDPOINT", &mut default.endpoint),
            (
                "MISIVA_APNS_BROADCAST_ENDPOINT",
                &mut default.broadcast_endpoint,
            ),
            (
                "MISIVA_APNS_CHANNELS_ENDPOINT",
                &mut default.channels_endpoint,
            ),
            ("MISIVA_APNS_KEY_ID", &mut default.key_id),
            ("MISIVA_APNS_TEAM_ID", &mut default.team_id),
            ("MISIVA_APNS_CERT_PASSWORD", &mut default.cert_password),
            ("MISIVA_APNS_TOPIC", &mut default.topic),
        ];
        for (name, slot) in overrides {
            if let Some(v) = var(name) {
                *slot = Some(v);
            }
        }
        for (name, slot) in [
            ("MISIVA_APNS_CA_FILE", &mut default.ca_file),
            ("MISIVA_APNS_KEY_FILE", &mut default.key_file),
            ("MISIVA_APNS_CERT_FILE", &mut default.cert_file),
        ] {
            if let Some(v) = var(name) {
                *slot = Some(PathBuf::from(v));
            }
        }
        if let Some(n) = number("MISIVA_APNS_CONNECTIONS", None)? {
            default.connections = Some(n as usize);
        }

        let mut apps = BTreeMap::new();
        for (name, raw) in apps_raw {
            let has_credentials = raw.key_file.is_some() || raw.cert_file.is_some();
            if name == "default" && !has_credentials && raw.key_id.is_none() {
                // A deployment with only named apps in its file needs no default.
                continue;
            }
            apps.insert(name.clone(), app_config(&name, raw)?);
        }
        if apps.is_empty() && require_apps {
            return Err(ConfigError::App {
                app: "default".into(),
                problem: "no APNs credentials: set MISIVA_APNS_KEY_FILE, MISIVA_APNS_KEY_ID and MISIVA_APNS_TEAM_ID (token auth) or MISIVA_APNS_CERT_FILE (certificate auth), or configure [apps.<name>] in the config file".into(),
            });
        }

        Ok(Config {
            amqp_url: Secret::new(amqp_url),
            queue,
            dead_letter_queue,
            feedback_exchange,
            feedback_queue,
            consumers: consumers as usize,
            shards: shards as usize,
            prefetch: prefetch as u16,
            urgent_consumers: urgent_consumers as usize,
            urgent_prefetch: urgent_prefetch as u16,
            urgent_reserve,
            apps,
            admin_addr: var("MISIVA_ADMIN_ADDR")
                .or(file.admin_addr)
                .unwrap_or_else(|| "0.0.0.0:9090".into()),
            log: var("MISIVA_LOG")
                .or(file.log)
                .unwrap_or_else(|| "info".into()),
            log_format,
            shutdown_grace,
            retry_delays,
            max_attempts: max_attempts as u32,
            max_deliveries: max_deliveries as u32,
            max_hold,
            restart_intensity,
        })
    }
}

/// The URLs in `MISIVA_AMQP_URL`: one, or a cluster's nodes separated by
/// commas (the worker connects to the first that answers, in order).
pub fn amqp_urls(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// A DNS name (labels of letters, digits and inner hyphens, 253 bytes at
/// most) or an IP address: what TLS can verify and a URI can carry.
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// A TOML error without the offending text: toml's own message quotes the
/// whole line, and serde's quotes the value, which may be a password or an
/// AMQP URL. What is left: where, which key, and what was expected.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let mut out = String::new();
    if let Some(span) = error.span() {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        out.push_str(&format!("line {line}, column {column}: "));
        let line_text = text.lines().nth(line - 1).unwrap_or_default();
        if let Some((key, _)) = line_text.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.len() <= 64 && !key.contains(['"', '\'']) {
                out.push_str(&format!("key `{key}`: "));
            }
        }
    }
    let message = error.message();
    let message = match message.split_once(", expected") {
        // serde: "invalid type: string \"hunter2\", expected u64".
        Some((_, expected)) if message.starts_with("invalid") => {
            format!("wrong type or value; expected{expected}")
        }
        _ => message.lines().next().unwrap_or_default().to_owned(),
    };
    out.push_str(crate::bounded::cut(&message, 300));
    out
}

/// Default retry tiers, in seconds: 1s, 5s, 30s, 2m, 10m.
pub const DEFAULT_RETRY_DELAYS: [u64; 5] = [1, 5, 30, 120, 600];

pub use crate::duration::{delay_label, parse_duration};

fn parse_delays<'a>(
    name: &str,
    items: impl Iterator<Item = &'a str>,
) -> Result<Vec<Duration>, ConfigError> {
    let mut delays = Vec::new();
    for item in items {
        match parse_duration(item) {
            Some(d) if !d.is_zero() && delays.last().is_none_or(|last| *last < d) => delays.push(d),
            _ => {
                return Err(invalid(
                    name,
                    item,
                    "expected increasing delays like 1s,5s,30s,2m,10m (units ms, s, m, h)",
                ));
            }
        }
    }
    if delays.is_empty() || delays.len() > 20 {
        return Err(invalid(name, "", "expected 1 to 20 delays"));
    }
    Ok(delays)
}

/// A password file's content without its final line break (what `echo` and
/// Kubernetes Secrets created from literals leave). Errors never show the content.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.kind().to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8".to_owned())?;
    Ok(text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text)
        .to_owned())
}

fn app_config(name: &str, raw: FileApp) -> Result<AppConfig, ConfigError> {
    let app_err = |problem: String| ConfigError::App {
        app: name.to_owned(),
        problem,
    };
    let endpoint = Endpoint::parse(raw.endpoint.as_deref().unwrap_or("production"))
        .map_err(|p| app_err(format!("endpoint: {p}")))?;
    let broadcast_endpoint = raw
        .broadcast_endpoint
        .as_deref()
        .map(Endpoint::parse)
        .transpose()
        .map_err(|p| app_err(format!("broadcast_endpoint: {p}")))?;
    // Apple's management host of the same environment as the pushes, unless
    // another is named.
    let channels_endpoint = Endpoint::parse_channels(raw.channels_endpoint.as_deref().unwrap_or(
        if endpoint == Endpoint::Sandbox {
            "sandbox"
        } else {
            "production"
        },
    ))
    .map_err(|p| app_err(format!("channels_endpoint: {p}")))?;
    let auth = match (raw.key_file, raw.cert_file) {
        (Some(key_file), None) => Auth::Token {
            key_file,
            key_id: raw
                .key_id
                .ok_or_else(|| app_err("token auth needs a key id (MISIVA_APNS_KEY_ID)".into()))?,
            team_id: raw.team_id.ok_or_else(|| {
                app_err("token auth needs a team id (MISIVA_APNS_TEAM_ID)".into())
            })?,
        },
        (None, Some(cert_file)) => Auth::Certificate {
            cert_file,
            password: match (raw.cert_password, raw.cert_password_file) {
                (Some(_), Some(_)) => {
                    return Err(app_err(
                        "both cert_password and cert_password_file are set; choose one".into(),
                    ));
                }
                (Some(password), None) => Some(Secret::new(password)),
                (None, Some(path)) => Some(Secret::new(read_password(&path).map_err(|e| {
                    app_err(format!(
                        "cert_password_file {}: {e}",
                        crate::bounded::quote(&path.display().to_string())
                    ))
                })?)),
                (None, None) => None,
            },
        },
        (Some(_), Some(_)) => {
            return Err(app_err(
                "both a token key and a certificate are configured; choose one".into(),
            ));
        }
        (None, None) => {
            return Err(app_err(
                "no credentials: set key_file, key_id and team_id, or cert_file".into(),
            ));
        }
    };
    let connections = raw.connections.unwrap_or(DEFAULT_CONNECTIONS);
    if !(1..=64).contains(&connections) {
        return Err(app_err(format!(
            "connections is {connections}; expected 1 to 64"
        )));
    }
    Ok(AppConfig {
        endpoint,
        broadcast_endpoint,
        channels_endpoint,
        ca_file: raw.ca_file,
        auth,
        topic: raw.topic,
        connections,
        request_timeout: match raw.request_timeout_ms {
            None => DEFAULT_REQUEST_TIMEOUT,
            Some(ms @ 100..=600_000) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(app_err(format!(
                    "request_timeout_ms is {ms}; expected 100 to 600000"
                )));
            }
        },
        keepalive: Duration::from_secs(raw.keepalive_secs.unwrap_or(60).clamp(1, 86_400)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgent_reserve_is_a_share_of_0_to_50_per_cent() {
        for (raw, share) in [
            ("10%", Some(10)),
            ("0", Some(0)),
            (" 50 % ", Some(50)),
            ("25", Some(25)),
        ] {
            assert_eq!(parse_percent(raw), share, "{raw}");
        }
        for raw in ["51%", "-1", "", "%", "ten", "10.5%", "300"] {
            assert_eq!(parse_percent(raw), None, "{raw}");
        }
    }

    #[test]
    fn runtime_threads_are_one_to_1024_or_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(runtime_threads(None).unwrap(), cpus);
        for (raw, threads) in [("1", 1), (" 4 ", 4), ("1024", 1024)] {
            assert_eq!(runtime_threads(Some(raw.into())).unwrap(), threads, "{raw}");
        }
        for raw in ["0", "1025", "", "two", "-1", "1.5"] {
            let error = runtime_threads(Some(raw.into())).unwrap_err().to_string();
            assert!(
                error.contains("MISIVA_RUNTIME_THREADS") && error.contains("1 to 1024"),
                "{raw}: {error}"
            );
        }
    }

    #[test]
    fn toml_errors_never_echo_values() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            "cert_pasword = \"hunter2\"\n",
            "[apps.a]\ncert_password = 12345\n",
            "amqp_url = \"amqp://u:hunter2@h\n",
            "amqp_url = 'amqp://u:hunter2@h' x\n",
            "consumers = \"hunter2\"\n",
        ];
        for (i, text) in cases.iter().enumerate() {
            let path = dir.path().join(format!("c{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let error = Config::load(Some(path)).unwrap_err().to_string();
            assert!(
                !error.contains("hunter2") && !error.contains("12345"),
                "{text:?} gave {error}"
            );
            assert!(error.contains("line "), "{error}");
        }
    }

    #[test]
    fn endpoints_are_checked_at_load() {
        let good = [
            ("https://127.0.0.1:2197", "127.0.0.1:2197"),
            ("https://[::1]:2197", "[::1]:2197"),
            ("https://sim.example.com", "sim.example.com"),
            ("https://localhost:8443/", "localhost:8443"),
        ];
        for (raw, authority) in good {
            assert_eq!(
                Endpoint::parse(raw).unwrap().authority(),
                authority,
                "{raw}"
            );
        }
        for bad in [
            "https://::1:2197",
            "https://ho st:1",
            "https://{x}:1",
            "https://a..b:1",
            "https://:1",
            "https://h:99999",
            "http://h:1",
            "https://h/path",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn out_of_range_numbers_are_configuration_errors() {
        assert_eq!(parse_duration("999999999999999999h"), None);
        for (name, value) in [
            ("MISIVA_SHUTDOWN_GRACE", "99999999999"),
            ("MISIVA_MAX_DELIVERIES", "20"),
            ("MISIVA_MAX_DELIVERIES", "0"),
            ("MISIVA_QUEUE", &"q".repeat(231)),
            ("MISIVA_QUEUE", "amq.jobs"),
        ] {
            let mut pairs = TOKEN_AUTH.to_vec();
            pairs.push((name, value));
            assert!(
                Config::from_env_map(&env(&pairs)).is_err(),
                "{name}={value} passed"
            );
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const TOKEN_AUTH: [(&str, &str); 3] = [
        ("MISIVA_APNS_KEY_FILE", "/k.p8"),
        ("MISIVA_APNS_KEY_ID", "KEY1"),
        ("MISIVA_APNS_TEAM_ID", "TEAM1"),
    ];

    #[test]
    fn defaults_from_the_contract() {
        let c = Config::from_env_map(&env(&TOKEN_AUTH)).unwrap();
        assert_eq!(c.amqp_url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.queue, "misiva.jobs");
        assert_eq!(c.dead_letter_queue, "misiva.jobs.dead");
        assert_eq!(c.feedback_exchange, "misiva.feedback");
        assert_eq!(c.consumers, 2);
        assert_eq!(c.prefetch, DEFAULT_PREFETCH);
        assert_eq!(c.log_format, LogFormat::Auto);
        let app = &c.apps["default"];
        assert_eq!(app.endpoint, Endpoint::Production);
        assert!(matches!(&app.auth, Auth::Token { key_id, .. } if key_id == "KEY1"));
    }

    #[test]
    fn retry_tiers() {
        let c = Config::from_env_map(&env(&TOKEN_AUTH)).unwrap();
        let labels: Vec<_> = c.retry_delays.iter().map(|d| delay_label(*d)).collect();
        assert_eq!(labels, ["1s", "5s", "30s", "2m", "10m"]);
        assert_eq!(c.max_attempts, 8);
        assert_eq!(c.restart_intensity, (10, Duration::from_secs(60)));
        let mut e = env(&TOKEN_AUTH);
        e.insert("MISIVA_RESTART_INTENSITY".into(), "3/10s".into());
        assert_eq!(
            Config::from_env_map(&e).unwrap().restart_intensity,
            (3, Duration::from_secs(10))
        );
        e.insert("MISIVA_RESTART_INTENSITY".into(), "often".into());
        assert!(Config::from_env_map(&e).is_err());
        let mut e = env(&TOKEN_AUTH);
        e.insert("MISIVA_RETRY_DELAYS".into(), "100ms,1s,1h".into());
        e.insert("MISIVA_MAX_ATTEMPTS".into(), "3".into());
        let c = Config::from_env_map(&e).unwrap();
        let labels: Vec<_> = c.retry_delays.iter().map(|d| delay_label(*d)).collect();
        assert_eq!(labels, ["100ms", "1s", "1h"]);
        assert_eq!(c.max_attempts, 3);
        for bad in ["5s,1s", "1x", "", "0s"] {
            e.insert("MISIVA_RETRY_DELAYS".into(), bad.into());
            if bad.is_empty() {
                continue; // an empty variable counts as unset
            }
            let msg = Config::from_env_map(&e).unwrap_err().to_string();
            assert!(msg.contains("MISIVA_RETRY_DELAYS"), "{bad}: {msg}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("sandbox").unwrap().host(),
            "api.sandbox.push.apple.com"
        );
        let e = Endpoint::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!((e.host(), e.port()), ("127.0.0.1", 8443));
        assert_eq!(Endpoint::parse("https://sim.local").unwrap().port(), 443);
        assert!(Endpoint::parse("http://x:1").is_err());
        assert!(Endpoint::parse("https://x:notaport").is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let mut e = env(&TOKEN_AUTH);
        e.insert("MISIVA_CONSUMERS".into(), "lots".into());
        let msg = Config::from_env_map(&e).unwrap_err().to_string();
        assert!(msg.contains("MISIVA_CONSUMERS"), "{msg}");
        let msg = Config::from_env_map(&env(&[])).unwrap_err().to_string();
        assert!(msg.contains("MISIVA_APNS_KEY_FILE"), "{msg}");
        let msg = Config::from_env_map(&env(&TOKEN_AUTH[..2]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("team id"), "{msg}");
    }

    #[test]
    fn secrets_do_not_print() {
        let mut e = env(&TOKEN_AUTH);
        e.insert(
            "MISIVA_AMQP_URL".into(),
            "amqp://u:hunter2@h:5672/%2f".into(),
        );
        let c = Config::from_env_map(&e).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        e.insert("MISIVA_AMQP_URL".into(), "tcp://u:hunter2@h".into());
        assert!(
            !Config::from_env_map(&e)
                .unwrap_err()
                .to_string()
                .contains("hunter2")
        );
    }

    #[test]
    fn certificate_passwords_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret-pw\n").unwrap();
        let file = |extra: &str| {
            let path = dir.path().join("misiva.toml");
            std::fs::write(
                &path,
                format!("[apps.shop]\ncert_file = \"/x.p12\"\n{extra}\n"),
            )
            .unwrap();
            Config::load_for_broker(Some(path))
        };
        let config = file(&format!(
            "cert_password_file = {:?}",
            password.display().to_string()
        ))
        .unwrap();
        match &config.apps["shop"].auth {
            Auth::Certificate { password, .. } => {
                assert_eq!(
                    password.as_ref().map(|p| p.expose().as_str()),
                    Some("s3cret-pw")
                );
            }
            other => panic!("{other:?}"),
        }
        let both = file(&format!(
            "cert_password = \"x\"\ncert_password_file = {:?}",
            password.display().to_string()
        ));
        assert!(both.unwrap_err().to_string().contains("choose one"));
        let missing = file("cert_password_file = \"/nonexistent/pw\"")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("not found"), "{missing}");
    }

    #[test]
    fn a_cluster_is_a_list_of_urls() {
        let both = "amqp://u:p@a:5672/%2f, amqps://u:p@b:5671/%2f";
        assert_eq!(
            amqp_urls(both).collect::<Vec<_>>(),
            ["amqp://u:p@a:5672/%2f", "amqps://u:p@b:5671/%2f"]
        );
        let mut vars = env(&TOKEN_AUTH);
        vars.insert("MISIVA_AMQP_URL".into(), both.into());
        assert!(Config::from_env_map(&vars).is_ok());
        for bad in ["amqp://a,http://b", ",", "amqp://a,secret-pw"] {
            vars.insert("MISIVA_AMQP_URL".into(), bad.into());
            let err = Config::from_env_map(&vars).unwrap_err().to_string();
            assert!(
                err.contains("MISIVA_AMQP_URL") && !err.contains("secret-pw"),
                "{err}"
            );
        }
    }
}
