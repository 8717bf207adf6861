//! Settings: an optional TOML file (`--config` / `MISIVA_CONFIG`) overridden by the
//! `MISIVA_*` environment variables of CONTRACT §4. Every mistake is a
//! [`ConfigError`] reported at start; configuration never causes a restart.
//!
//! `settings` reads each value (variable, file, default, range) from one
//! table; `file` is the TOML file's shape and each app's section;
//! `endpoint`, `runtime` and `secret` are the types those produce.

mod apps_dir;
mod endpoint;
mod file;
mod runtime;
mod secret;
mod settings;
#[cfg(test)]
mod tests;

pub use crate::duration::{delay_label, parse_duration};
pub use apps_dir::{
    AppFile, AppFileProblem, AppsDir, MAX_APP_NAME, app_files, app_of_file, read_app_file,
    read_apps_dir, valid_app_name,
};
pub use endpoint::Endpoint;
pub use runtime::{runtime_builder, runtime_threads};
pub use secret::Secret;

use file::{FileConfig, app_config, describe_toml_error};
use settings::Sources;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

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
    /// The apps fixed for the process's life: from the file and the environment.
    pub apps: BTreeMap<String, AppConfig>,
    /// The directory of app files watched while the worker runs (CONTRACT §8).
    pub apps_dir: Option<PathBuf>,
    /// How long an app may go without a job before its connections close.
    pub app_idle: Duration,
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

/// The work queue's own delivery limit: past it, the broker dead-letters a
/// message itself. The worker parks poison earlier (`MISIVA_MAX_DELIVERIES`,
/// below this); the broker's limit catches what kills a worker before it can
/// (a process abort while reading the message). 20 is also RabbitMQ 4's
/// default, made explicit so that 3.x behaves the same.
pub const BROKER_DELIVERY_LIMIT: u32 = 20;
/// The share of places in flight the ordinary lane may never take.
pub const DEFAULT_URGENT_RESERVE: u8 = 10;
/// The most work-queue shards: a quorum queue is a Raft group on every node
/// that holds it, so shards cost the broker memory and processes; 64 is far
/// beyond what one cluster's nodes can lead usefully.
pub const MAX_SHARDS: usize = 64;
pub const DEFAULT_CONNECTIONS: usize = 1;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PINGs on an idle APNs connection: often enough that a middlebox
/// keeps it open, and that a connection it dropped is noticed.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
/// Default retry tiers, in seconds: 1s, 5s, 30s, 2m, 10m.
pub const DEFAULT_RETRY_DELAYS: [u64; 5] = [1, 5, 30, 120, 600];
/// Longest a delivery waits for APNs before its tokens go to a retry tier.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(600);

/// How long an app's connections stay open without a job (CONTRACT §8).
pub const DEFAULT_APP_IDLE: Duration = Duration::from_secs(600);
/// Restarts within a period before a broker-facing supervisor gives up.
pub const DEFAULT_RESTART_INTENSITY: (u32, Duration) = (10, Duration::from_secs(60));

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
        let s = Sources::new(env);

        let amqp_url = s
            .text("MISIVA_AMQP_URL", file.amqp_url)
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
        let queue = s
            .text("MISIVA_QUEUE", file.queue)
            .unwrap_or_else(|| "misiva.jobs".into());
        let dead_letter_queue = s
            .text("MISIVA_DEAD_LETTER_QUEUE", file.dead_letter_queue)
            .unwrap_or_else(|| format!("{queue}.dead"));
        let feedback_exchange = s
            .text("MISIVA_FEEDBACK_EXCHANGE", file.feedback_exchange)
            .unwrap_or_else(|| "misiva.feedback".into());
        let feedback_queue = s
            .text("MISIVA_FEEDBACK_QUEUE", file.feedback_queue)
            .unwrap_or_else(|| feedback_exchange.clone());
        // Names go into AMQP short strings (255 bytes); retry tiers append
        // ".retry.<delay>" to the work queue's name.
        settings::check_name("MISIVA_QUEUE", &queue, 230)?;
        settings::check_name("MISIVA_DEAD_LETTER_QUEUE", &dead_letter_queue, 255)?;
        settings::check_name("MISIVA_FEEDBACK_EXCHANGE", &feedback_exchange, 255)?;
        settings::check_name("MISIVA_FEEDBACK_QUEUE", &feedback_queue, 255)?;

        let wide = |v: Option<usize>| v.map(|n| n as u64);
        let consumers = s.whole(&settings::CONSUMERS, wide(file.consumers))?;
        let shards = s.whole(&settings::SHARDS, wide(file.shards))?;
        let prefetch = s.whole(&settings::PREFETCH, file.prefetch.map(u64::from))?;
        let urgent_consumers = s.whole(&settings::URGENT_CONSUMERS, wide(file.urgent_consumers))?;
        let urgent_prefetch = s.whole(
            &settings::URGENT_PREFETCH,
            file.urgent_prefetch.map(u64::from),
        )?;
        let max_attempts = s.whole(&settings::MAX_ATTEMPTS, file.max_attempts.map(u64::from))?;
        let max_deliveries = s.whole(
            &settings::MAX_DELIVERIES,
            file.max_deliveries.map(u64::from),
        )?;
        let shutdown_grace: u64 = s.whole(&settings::SHUTDOWN_GRACE, file.shutdown_grace_secs)?;

        let urgent_reserve = s.parsed(
            "MISIVA_URGENT_RESERVE",
            file.urgent_reserve,
            DEFAULT_URGENT_RESERVE,
            settings::parse_percent,
            "expected a share of 0% to 50%, such as 10%",
        )?;
        let log_format = s.parsed(
            "MISIVA_LOG_FORMAT",
            file.log_format,
            LogFormat::Auto,
            LogFormat::parse,
            "expected json or text",
        )?;
        let log = s.parsed(
            "MISIVA_LOG",
            file.log,
            "info".to_owned(),
            valid_log_filter,
            "expected a tracing filter such as info or misiva=debug,lapin=warn",
        )?;
        let max_hold = s.parsed(
            "MISIVA_MAX_HOLD",
            file.max_hold,
            DEFAULT_MAX_HOLD,
            settings::parse_hold,
            "expected a duration from 1s to 25m (RabbitMQ's consumer_timeout is 30m)",
        )?;
        let restart_intensity = s.parsed(
            "MISIVA_RESTART_INTENSITY",
            file.restart_intensity,
            DEFAULT_RESTART_INTENSITY,
            settings::parse_intensity,
            "expected restarts/period, like 10/60s",
        )?;
        let retry_delays = match s.var("MISIVA_RETRY_DELAYS") {
            Some(list) => settings::parse_delays("MISIVA_RETRY_DELAYS", list.split(','))?,
            None => match &file.retry_delays {
                Some(list) => {
                    settings::parse_delays("retry_delays", list.iter().map(String::as_str))?
                }
                None => DEFAULT_RETRY_DELAYS
                    .iter()
                    .map(|s| Duration::from_secs(*s))
                    .collect(),
            },
        };

        // The environment describes the `default` app, on top of its file section.
        let mut apps_raw = file.apps;
        let default = apps_raw.entry("default".to_owned()).or_default();
        for (name, slot) in [
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
        ] {
            if let Some(v) = s.var(name) {
                *slot = Some(v);
            }
        }
        for (name, slot) in [
            ("MISIVA_APNS_CA_FILE", &mut default.ca_file),
            ("MISIVA_APNS_KEY_FILE", &mut default.key_file),
            ("MISIVA_APNS_CERT_FILE", &mut default.cert_file),
        ] {
            if let Some(v) = s.var(name) {
                *slot = Some(PathBuf::from(v));
            }
        }
        if let Some(n) = s.whole_if_set(&settings::APNS_CONNECTIONS, None)? {
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
        let apps_dir = s
            .var("MISIVA_APPS_DIR")
            .map(PathBuf::from)
            .or(file.apps_dir);
        let app_idle = s.parsed(
            "MISIVA_APP_IDLE",
            file.app_idle,
            DEFAULT_APP_IDLE,
            |text| crate::duration::parse_duration(text).filter(|d| *d >= Duration::from_secs(1)),
            "expected a duration of 1s or more, such as 10m",
        )?;
        // With a directory of app files, the apps may all come from it, and
        // it may even be empty at start: apps are added while the worker runs.
        if apps.is_empty() && require_apps && apps_dir.is_none() {
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
            consumers,
            shards,
            prefetch,
            urgent_consumers,
            urgent_prefetch,
            urgent_reserve,
            apps,
            apps_dir,
            app_idle,
            admin_addr: s
                .text("MISIVA_ADMIN_ADDR", file.admin_addr)
                .unwrap_or_else(|| "0.0.0.0:9090".into()),
            log,
            log_format,
            shutdown_grace: Duration::from_secs(shutdown_grace),
            retry_delays,
            max_attempts,
            max_deliveries,
            max_hold,
            restart_intensity,
        })
    }
}

impl LogFormat {
    fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "auto" => Some(LogFormat::Auto),
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        }
    }
}

/// A `MISIVA_LOG` filter that `tracing` reads: a typo is a configuration
/// error at start, not a silent fall back to `info`.
fn valid_log_filter(text: &str) -> Option<String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .ok()
        .map(|_| text.to_owned())
}

/// The URLs in `MISIVA_AMQP_URL`: one, or a cluster's nodes separated by
/// commas (the worker connects to the first that answers, in order).
pub fn amqp_urls(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|u| !u.is_empty())
}
