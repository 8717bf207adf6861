//! The simulator's validation, answer by answer, over real HTTP/2 + TLS. Requests
//! are built by hand so that each can break exactly one of Apple's rules.

use crate::support;

use bytes::Bytes;
use misiva::apns::{Connection, Target, client_config};
use misiva::jwt::SigningKey;
use misiva::outcome::ApnsAnswer;
use misiva::sim::{Faults, SimConfig};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{KEY_ID, SimFixture, TEAM_ID, TOPIC, token};

struct Client {
    connection: Connection,
    base: String,
    key: SigningKey,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Client {
    fn new(sim: &SimFixture) -> Client {
        let target = Target {
            host: "127.0.0.1".into(),
            port: sim.sim.addr().port(),
            tls: client_config(Some(&sim.ca_file), None).unwrap(),
            keepalive: Duration::from_secs(60),
            metrics: misiva::events::AppMetrics::new("test"),
        };
        Client {
            connection: Connection::start(target),
            base: sim.sim.endpoint(),
            key: SigningKey::from_file(&sim.key_file).unwrap(),
        }
    }

    fn bearer(&self, iat: u64) -> String {
        format!("bearer {}", self.key.sign(KEY_ID, TEAM_ID, iat))
    }

    fn request(&self, path_token: &str, bearer: &str) -> http::request::Builder {
        http::Request::post(format!("{}/3/device/{path_token}", self.base))
            .header("authorization", bearer)
            .header("apns-topic", TOPIC)
    }

    async fn send(&self, request: http::Request<Bytes>) -> (u16, Option<String>) {
        let (head, body) = split(request);
        match self
            .connection
            .send(head, body, Duration::from_secs(5))
            .await
        {
            ApnsAnswer::Status { code, reason, .. } => (code, reason),
            other => panic!("{other:?}"),
        }
    }
}

/// A request and the status and reason APNs answers it with.
type Case = (http::Request<Bytes>, u16, Option<&'static str>);

fn body(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

/// The head and the body of a request, as the connection takes them.
fn split(request: http::Request<Bytes>) -> (http::Request<()>, Bytes) {
    let (head, body) = request.into_parts();
    (http::Request::from_parts(head, ()), body)
}

#[tokio::test]
async fn every_validation_gives_apples_status_and_reason() {
    let sim = SimFixture::start(Default::default()).await;
    let client = Client::new(&sim);
    let t = token(1);
    let good = client.bearer(now());
    let payload = r#"{"aps":{"alert":"x"}}"#;
    let cases: Vec<Case> = vec![
        (
            client.request(&t, &good).body(body(payload)).unwrap(),
            200,
            None,
        ),
        (
            http::Request::get(format!("{}/3/device/{t}", client.base))
                .header("authorization", &good)
                .body(body(""))
                .unwrap(),
            405,
            Some("MethodNotAllowed"),
        ),
        (
            http::Request::post(format!("{}/4/other", client.base))
                .header("authorization", &good)
                .body(body(payload))
                .unwrap(),
            404,
            Some("BadPath"),
        ),
        (
            client.request("", &good).body(body(payload)).unwrap(),
            400,
            Some("MissingDeviceToken"),
        ),
        (
            client.request("nothex", &good).body(body(payload)).unwrap(),
            400,
            Some("BadDeviceToken"),
        ),
        (
            http::Request::post(format!("{}/3/device/{t}", client.base))
                .header("authorization", &good)
                .body(body(payload))
                .unwrap(),
            400,
            Some("MissingTopic"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-push-type", "pager")
                .body(body(payload))
                .unwrap(),
            400,
            Some("InvalidPushType"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-priority", "7")
                .body(body(payload))
                .unwrap(),
            400,
            Some("BadPriority"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-expiration", "soon")
                .body(body(payload))
                .unwrap(),
            400,
            Some("BadExpirationDate"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-collapse-id", "c".repeat(65))
                .body(body(payload))
                .unwrap(),
            400,
            Some("BadCollapseId"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-id", "not-a-uuid")
                .body(body(payload))
                .unwrap(),
            400,
            Some("BadMessageId"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-priority", "10")
                .header("apns-priority", "5")
                .body(body(payload))
                .unwrap(),
            400,
            Some("DuplicateHeaders"),
        ),
        (
            client.request(&t, &good).body(body("")).unwrap(),
            400,
            Some("PayloadEmpty"),
        ),
        (
            client
                .request(&t, &good)
                .body(body(&format!(
                    r#"{{"aps":{{}},"d":"{}"}}"#,
                    "x".repeat(4096)
                )))
                .unwrap(),
            413,
            Some("PayloadTooLarge"),
        ),
        (
            client
                .request(&t, &good)
                .header("apns-push-type", "voip")
                .body(body(&format!(
                    r#"{{"aps":{{}},"d":"{}"}}"#,
                    "x".repeat(5000)
                )))
                .unwrap(),
            200,
            None,
        ),
        (
            client
                .request(&support::special_token("ffff0411", 1), &good)
                .body(body(payload))
                .unwrap(),
            410,
            Some("ExpiredToken"),
        ),
        (
            client
                .request(&support::special_token("ffff0401", 1), &good)
                .body(body(payload))
                .unwrap(),
            400,
            Some("DeviceTokenNotForTopic"),
        ),
        (
            client
                .request(&support::special_token("ffff0500", 1), &good)
                .body(body(payload))
                .unwrap(),
            500,
            Some("InternalServerError"),
        ),
        (
            http::Request::post(format!("{}/3/device/{t}", client.base))
                .header("apns-topic", TOPIC)
                .body(body(payload))
                .unwrap(),
            403,
            Some("MissingProviderToken"),
        ),
        (
            client
                .request(&t, "bearer not.a.jwt")
                .body(body(payload))
                .unwrap(),
            403,
            Some("InvalidProviderToken"),
        ),
        (
            client
                .request(&t, &client.bearer(now() - 3700))
                .body(body(payload))
                .unwrap(),
            403,
            Some("ExpiredProviderToken"),
        ),
    ];
    for (i, (request, status, reason)) in cases.into_iter().enumerate() {
        let uri = request.uri().clone();
        assert_eq!(
            client.send(request).await,
            (status, reason.map(str::to_owned)),
            "case {i}: {uri}"
        );
    }
    assert_eq!(sim.sim.accepted_count(), 2);
}

#[tokio::test]
async fn a_new_token_within_twenty_minutes_on_one_connection_is_refused() {
    let sim = SimFixture::start(Default::default()).await;
    let client = Client::new(&sim);
    let payload = r#"{"aps":{}}"#;
    let first = client.bearer(now() - 10);
    let second = client.bearer(now());
    assert_ne!(first, second);
    let send = |bearer: &str| {
        client
            .request(&token(1), bearer)
            .body(body(payload))
            .unwrap()
    };
    assert_eq!(client.send(send(&first)).await.0, 200);
    assert_eq!(client.send(send(&first)).await.0, 200);
    assert_eq!(
        client.send(send(&second)).await,
        (429, Some("TooManyProviderTokenUpdates".into()))
    );
}

#[tokio::test]
async fn faults_can_be_injected_and_lifted_at_run_time() {
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            error_status: 503,
            latency: Duration::ZERO,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let client = Client::new(&sim);
    let bearer = client.bearer(now());
    let send = || {
        client
            .request(&token(1), &bearer)
            .body(body(r#"{"aps":{}}"#))
            .unwrap()
    };
    assert_eq!(
        client.send(send()).await,
        (503, Some("ServiceUnavailable".into()))
    );

    sim.sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 500,
        latency: Duration::ZERO,
        ..Faults::default()
    });
    assert_eq!(
        client.send(send()).await,
        (500, Some("InternalServerError".into()))
    );

    // Latency beyond the request deadline: the client reports a timeout.
    sim.sim.set_faults(Faults {
        error_rate: 0.0,
        error_status: 503,
        latency: Duration::from_millis(800),
        ..Faults::default()
    });
    let (head, body) = split(send());
    match client
        .connection
        .send(head, body, Duration::from_millis(200))
        .await
    {
        ApnsAnswer::Transport(detail) => assert!(detail.contains("within"), "{detail}"),
        other => panic!("{other:?}"),
    }
    sim.sim.set_faults(Faults::default());
    assert_eq!(client.send(send()).await, (200, None));
    assert_eq!(
        sim.sim.rejected().get(&(503, "ServiceUnavailable".into())),
        Some(&1)
    );
}
