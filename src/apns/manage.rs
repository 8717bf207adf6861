//! Channel management (CONTRACT §7): create, list, show and delete an app's
//! broadcast channels on Apple's management endpoint. One short HTTP/2
//! connection per command; the app's credentials and CA as for its pushes.

use super::{ProviderToken, SetupError, credentials};
use crate::config::AppConfig;
use crate::job::Topic;
use bytes::Bytes;
use http::{HeaderValue, Method};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest one management request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Apple's answers are small JSON documents; a list of channels is the largest.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What a channel keeps for devices that were away (`message-storage-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// 0: nothing; a broadcast to it must have expiration 0.
    None,
    /// 1: the latest message.
    Latest,
}

impl Storage {
    pub fn parse(raw: &str) -> Option<Storage> {
        match raw {
            "none" | "0" => Some(Storage::None),
            "latest" | "1" => Some(Storage::Latest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Storage::None => "none",
            Storage::Latest => "latest",
        }
    }

    fn policy(self) -> u8 {
        match self {
            Storage::None => 0,
            Storage::Latest => 1,
        }
    }
}

/// One channel as Apple describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub storage: Option<Storage>,
    pub push_type: Option<String>,
}

/// Why a management request failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// APNs answered with an error status.
    #[error("APNs refused: {status} {reason}")]
    Refused { status: u16, reason: String },
    /// No answer: connection, TLS or HTTP/2 failure, or a timeout.
    #[error("{0}")]
    Transport(String),
}

/// The management client of one app.
#[derive(Debug)]
pub struct ChannelManager {
    host: String,
    port: u16,
    authority: http::uri::Authority,
    tls: Arc<rustls::ClientConfig>,
    token: Option<ProviderToken>,
    bundle: String,
}

impl ChannelManager {
    /// The app's manager; its topic's bundle id names its channels' app.
    pub fn new(app: &str, config: &AppConfig) -> Result<ChannelManager, SetupError> {
        let (token, tls, _) = credentials(app, config)?;
        let endpoint = &config.channels_endpoint;
        let authority = http::uri::Authority::try_from(endpoint.authority()).map_err(|_| {
            SetupError::Endpoint {
                app: app.to_owned(),
                authority: endpoint.authority(),
            }
        })?;
        let topic = config.topic.clone().unwrap_or_default();
        let bundle = Topic::parse(topic.clone())
            .map_err(|_| SetupError::Topic {
                app: app.to_owned(),
                topic,
            })?
            .bundle_id()
            .to_owned();
        Ok(ChannelManager {
            host: endpoint.host().to_owned(),
            port: endpoint.port(),
            authority,
            tls,
            token,
            bundle,
        })
    }

    /// The bundle id whose channels this manages.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// Creates a channel; returns its id.
    pub async fn create(&self, storage: Storage) -> Result<String, ManageError> {
        let body = serde_json::json!({
            "message-storage-policy": storage.policy(),
            "push-type": "LiveActivity",
        });
        let (headers, _) = self
            .request(
                Method::POST,
                "channels",
                None,
                Bytes::from(body.to_string()),
            )
            .await?;
        headers
            .get("apns-channel-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ManageError::Transport("APNs gave no apns-channel-id".into()))
    }

    /// Every channel of the app.
    pub async fn list(&self) -> Result<Vec<String>, ManageError> {
        let (_, body) = self
            .request(Method::GET, "all-channels", None, Bytes::new())
            .await?;
        #[derive(serde::Deserialize)]
        struct All {
            channels: Vec<String>,
        }
        serde_json::from_slice::<All>(&body)
            .map(|all| all.channels)
            .map_err(|e| ManageError::Transport(format!("APNs's list is not understood: {e}")))
    }

    /// One channel's settings.
    pub async fn show(&self, id: &str) -> Result<Channel, ManageError> {
        let (_, body) = self
            .request(Method::GET, "channels", Some(id), Bytes::new())
            .await?;
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(Channel {
            id: id.to_owned(),
            storage: value
                .get("message-storage-policy")
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| Storage::parse(&p.to_string())),
            push_type: value
                .get("push-type")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        })
    }

    pub async fn delete(&self, id: &str) -> Result<(), ManageError> {
        self.request(Method::DELETE, "channels", Some(id), Bytes::new())
            .await
            .map(drop)
    }

    /// One request on a connection of its own; `Ok` for a 2xx answer.
    async fn request(
        &self,
        method: Method,
        what: &str,
        channel: Option<&str>,
        body: Bytes,
    ) -> Result<(http::HeaderMap, Bytes), ManageError> {
        // Boxed: the connection's handshakes make this future several KiB,
        // and a command runs it once.
        let exchange = Box::pin(self.exchange(method, what, channel, body));
        let (status, headers, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                ManageError::Transport(format!("no answer from APNs within {REQUEST_TIMEOUT:?}"))
            })??;
        if (200..300).contains(&status) {
            return Ok((headers, body));
        }
        let reason = match super::connection::answer_from(status, &body) {
            crate::outcome::ApnsAnswer::Status {
                reason: Some(reason),
                ..
            } => reason,
            _ => format!("Http{status}"),
        };
        Err(ManageError::Refused { status, reason })
    }

    async fn exchange(
        &self,
        method: Method,
        what: &str,
        channel: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, Bytes), ManageError> {
        let addr = format!("{}:{}", self.host, self.port);
        let transport = |what: &str, e: &dyn std::fmt::Display| {
            ManageError::Transport(format!("{what} {addr}: {e}"))
        };
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| transport("cannot connect to", &e))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| transport("not a TLS server name:", &e))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| transport("TLS handshake failed with", &e))?;
        let (mut sender, connection) = h2::client::handshake(tls)
            .await
            .map_err(|e| transport("HTTP/2 handshake failed with", &e))?;
        // The connection's frames are driven until the command is done; the
        // task ends with the connection.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri = format!("https://{}/1/apps/{}/{what}", self.authority, self.bundle);
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .map_err(|e| transport("cannot build a request for", &e))?;
        let headers = request.headers_mut();
        if let Some(token) = &self.token {
            headers.insert(http::header::AUTHORIZATION, token.header());
        }
        if let Some(channel) = channel {
            let value = HeaderValue::from_str(channel)
                .map_err(|e| transport("the channel id cannot be sent to", &e))?;
            headers.insert("apns-channel-id", value);
        }
        if !body.is_empty() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let end = body.is_empty();
        let (response, mut stream) = sender
            .send_request(request, end)
            .map_err(|e| transport("request failed on", &e))?;
        if !end {
            stream
                .send_data(body, true)
                .map_err(|e| transport("request failed on", &e))?;
        }
        let response = response
            .await
            .map_err(|e| transport("no answer from", &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut answer = response.into_body();
        let mut read = Vec::new();
        while let Some(chunk) = answer.data().await {
            let chunk = chunk.map_err(|e| transport("answer cut off from", &e))?;
            let _ = answer.flow_control().release_capacity(chunk.len());
            if read.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(transport("answer too long from", &MAX_ANSWER_BYTES));
            }
            read.extend_from_slice(&chunk);
        }
        Ok((status, headers, Bytes::from(read)))
    }
}
