//! The admin endpoint on `MISIVA_ADMIN_ADDR` (plain HTTP/1.1, for the kubelet):
//! `/healthz` answers 200 while the process serves at all; `/readyz` answers 200
//! only while the worker is connected and every consumer is consuming, and 503
//! while it starts, restarts part of its tree, or shuts down.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// What readiness is computed from; the supervision tree updates it.
#[derive(Debug)]
pub struct Readiness {
    /// Consumers the configuration asks for.
    wanted: usize,
    /// Consumers currently consuming.
    consuming: AtomicUsize,
    /// Whether the broker connection is up.
    connected: AtomicBool,
    /// Set once a stop began; never cleared.
    stopping: AtomicBool,
}

impl Readiness {
    pub fn new(wanted: usize) -> Arc<Readiness> {
        Arc::new(Readiness {
            wanted,
            consuming: AtomicUsize::new(0),
            connected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn is_ready(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
            && self.connected.load(Ordering::Relaxed)
            && self.consuming.load(Ordering::Relaxed) >= self.wanted
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Counts a consumer of `queue` as consuming until the returned guard
    /// drops; toward readiness only when `wanted` (a retired shard's
    /// consumer may end for good, and readiness does not wait for it).
    pub fn consuming(
        self: &Arc<Self>,
        queue: Arc<str>,
        lane: crate::lane::Lane,
        wanted: bool,
    ) -> ConsumingGuard {
        if wanted {
            self.consuming.fetch_add(1, Ordering::Relaxed);
        }
        crate::events::emit(crate::events::Consuming {
            running: true,
            queue: &queue,
            lane,
        });
        ConsumingGuard {
            readiness: self.clone(),
            queue,
            lane,
            wanted,
        }
    }
}

/// Held by a consumer while it consumes; dropping it (whatever ended the
/// consumer) takes it out of the count.
#[derive(Debug)]
pub struct ConsumingGuard {
    readiness: Arc<Readiness>,
    queue: Arc<str>,
    lane: crate::lane::Lane,
    wanted: bool,
}

impl Drop for ConsumingGuard {
    fn drop(&mut self) {
        if self.wanted {
            self.readiness.consuming.fetch_sub(1, Ordering::Relaxed);
        }
        crate::events::emit(crate::events::Consuming {
            running: false,
            queue: &self.queue,
            lane: self.lane,
        });
    }
}

/// The OpenMetrics text format, which Prometheus asks for and reads.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections served at once; more wait in the listen backlog. Probes and
/// scrapes need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open at all: the admin endpoint answers in
/// microseconds, so anything longer is a stuck or hostile client.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Binds the admin address (an error here is a configuration error) and serves
/// until the process ends. The endpoint shares the process with the worker,
/// so it is bounded: slow or idle clients are cut off, connections are
/// capped, and an accept error (out of file descriptors) pauses the loop
/// instead of spinning it.
/// `apps`, when given, is listed by `GET /apps` (CONTRACT §8).
pub async fn serve(
    addr: &str,
    readiness: Arc<Readiness>,
    apps: Option<crate::apns::Apns>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    crate::events::emit(crate::events::AdminListening { addr: local });
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return;
            };
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    crate::events::emit(crate::events::AdminAcceptFailed { error: &e });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let readiness = readiness.clone();
            let apps = apps.clone();
            tokio::spawn(async move {
                let _place = place;
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let readiness = readiness.clone();
                    let apps = apps.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(answer(
                            request.uri().path(),
                            &readiness,
                            apps.as_ref(),
                        ))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            });
        }
    });
    Ok(local)
}

fn answer(
    path: &str,
    readiness: &Readiness,
    apps: Option<&crate::apns::Apns>,
) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/apps" => {
            // Names, sources, auth kinds, key ids and expiry dates: never a secret.
            let view = apps.map(crate::apns::Apns::view).unwrap_or_default();
            let body = serde_json::json!({ "apps": view }).to_string();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return response;
        }
        "/metrics" => {
            let mut response =
                Response::new(Full::new(Bytes::from(crate::events::metrics().encode())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            return response;
        }
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "ready\n"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Idle and slow clients are cut off, and while the endpoint is full of
    /// them a probe still gets through once one is cut off.
    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off() {
        let readiness = Readiness::new(1);
        let addr = serve("127.0.0.1:0", readiness, None).await.unwrap();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Half a request line, then nothing (slowloris).
            tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            idle.push(tcp);
        }
        let started = std::time::Instant::now();
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(15), probe.read_to_string(&mut answer))
            .await
            .expect("the probe was answered")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
            "{waited:?}"
        );
        // Every slow client was disconnected.
        for mut tcp in idle {
            let mut buf = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "a slow client is still connected");
        }
    }

    #[test]
    fn ready_only_when_connected_consuming_and_not_stopping() {
        let r = Readiness::new(2);
        assert!(!r.is_ready());
        r.set_connected(true);
        let a = r.consuming(Arc::from("q"), crate::lane::Lane::Normal, true);
        assert!(!r.is_ready(), "one of two consumers");
        let retired = r.consuming(Arc::from("q.3"), crate::lane::Lane::Normal, false);
        assert!(
            !r.is_ready(),
            "a retired shard's consumer is not one of them"
        );
        drop(retired);
        let b = r.consuming(Arc::from("q"), crate::lane::Lane::Normal, true);
        assert!(r.is_ready());
        drop(a);
        assert!(!r.is_ready(), "a consumer restarting");
        let _a = r.consuming(Arc::from("q"), crate::lane::Lane::Normal, true);
        assert!(r.is_ready());
        r.set_connected(false);
        assert!(!r.is_ready());
        r.set_connected(true);
        r.set_stopping();
        assert!(!r.is_ready());
        drop(b);
        assert_eq!(answer("/healthz", &r, None).status(), StatusCode::OK);
        assert_eq!(
            answer("/readyz", &r, None).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer("/nope", &r, None).status(), StatusCode::NOT_FOUND);
    }
}
