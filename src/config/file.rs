//! The configuration file's shape (TOML), and each app's section checked
//! into an [`AppConfig`].

use super::{
    AppConfig, Auth, ConfigError, DEFAULT_CONNECTIONS, DEFAULT_KEEPALIVE, DEFAULT_REQUEST_TIMEOUT,
    Endpoint, Secret,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The file's shape. Field names are the environment variables without the
/// `MISIVA_` prefix, in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) amqp_url: Option<String>,
    pub(super) queue: Option<String>,
    pub(super) dead_letter_queue: Option<String>,
    pub(super) feedback_exchange: Option<String>,
    pub(super) feedback_queue: Option<String>,
    pub(super) consumers: Option<usize>,
    pub(super) shards: Option<usize>,
    pub(super) prefetch: Option<u16>,
    pub(super) urgent_consumers: Option<usize>,
    pub(super) urgent_prefetch: Option<u16>,
    pub(super) urgent_reserve: Option<String>,
    pub(super) admin_addr: Option<String>,
    pub(super) log: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) retry_delays: Option<Vec<String>>,
    pub(super) max_attempts: Option<u32>,
    pub(super) max_deliveries: Option<u32>,
    pub(super) max_hold: Option<String>,
    pub(super) restart_intensity: Option<String>,
    pub(super) apps_dir: Option<PathBuf>,
    pub(super) app_idle: Option<String>,
    #[serde(default)]
    pub(super) apps: BTreeMap<String, FileApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApp {
    pub(super) endpoint: Option<String>,
    pub(super) broadcast_endpoint: Option<String>,
    pub(super) channels_endpoint: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) key_id: Option<String>,
    pub(super) team_id: Option<String>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) cert_password: Option<String>,
    /// A file holding the certificate's password (a mounted Secret), so the
    /// configuration file itself holds no secret.
    pub(super) cert_password_file: Option<PathBuf>,
    pub(super) topic: Option<String>,
    pub(super) connections: Option<usize>,
    pub(super) request_timeout_ms: Option<u64>,
    pub(super) keepalive_secs: Option<u64>,
}

/// A TOML error without the offending text: toml's own message quotes the
/// whole line, and serde's quotes the value, which may be a password or an
/// AMQP URL. What is left: where, which key, and what was expected.
pub(super) fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
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

pub(super) fn app_config(name: &str, raw: FileApp) -> Result<AppConfig, ConfigError> {
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
        keepalive: match raw.keepalive_secs {
            None => DEFAULT_KEEPALIVE,
            Some(secs @ 1..=86_400) => Duration::from_secs(secs),
            Some(secs) => {
                return Err(app_err(format!(
                    "keepalive_secs is {secs}; expected 1 to 86400"
                )));
            }
        },
    })
}
