//! The APNs client against the simulator, over real HTTP/2 + TLS on loopback.

use crate::support;

use misiva::apns::{ApnsClient, JobRequest};
use misiva::job;
use misiva::outcome::ApnsAnswer;
use support::SimFixture;

fn job(body: serde_json::Value) -> job::Job {
    job::decode(body.to_string().as_bytes(), None).unwrap()
}

#[tokio::test]
async fn client_delivers_and_simulator_answers_like_apple() {
    let sim = SimFixture::start(Default::default()).await;
    let client = ApnsClient::new("default", &sim.app_config()).await.unwrap();
    client.probe().await.unwrap();

    let ok = job(serde_json::json!({
        "token": support::token(1), "alert": "hello", "priority": 5, "collapse_id": "c",
        "apns_id": "123e4567-e89b-12d3-a456-4266554400a0", "expiration": 42
    }));
    let answer = client
        .send(&JobRequest::new(&ok, client.default_topic()), &ok.tokens[0])
        .await;
    assert_eq!(
        answer,
        ApnsAnswer::Status {
            code: 200,
            reason: None,
            timestamp_ms: None
        }
    );
    let seen = sim.sim.accepted();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].token, support::token(1));
    assert_eq!(seen[0].topic, support::TOPIC);
    assert_eq!(seen[0].apns_id, "123e4567-e89b-12d3-a456-4266554400a0");
    assert_eq!(seen[0].priority.as_deref(), Some("5"));
    assert_eq!(seen[0].expiration.as_deref(), Some("42"));
    assert_eq!(seen[0].collapse_id.as_deref(), Some("c"));
    assert_eq!(seen[0].push_type.as_deref(), Some("alert"));
    assert_eq!(&seen[0].payload[..], br#"{"aps":{"alert":"hello"}}"#);

    let gone =
        job(serde_json::json!({"token": format!("ffff0410{}", "0".repeat(56)), "alert": "x"}));
    match client
        .send(
            &JobRequest::new(&gone, client.default_topic()),
            &gone.tokens[0],
        )
        .await
    {
        ApnsAnswer::Status {
            code: 410,
            reason: Some(r),
            timestamp_ms: Some(ts),
        } => {
            assert_eq!(r, "Unregistered");
            assert!(ts > 1_600_000_000_000);
        }
        other => panic!("{other:?}"),
    }
    let bad = job(serde_json::json!({"token": format!("ffff0400{}", "0".repeat(56))}));
    let answer = client
        .send(
            &JobRequest::new(&bad, client.default_topic()),
            &bad.tokens[0],
        )
        .await;
    assert!(
        matches!(answer, ApnsAnswer::Status { code: 400, reason: Some(ref r), .. } if r == "BadDeviceToken"),
        "{answer:?}"
    );
    assert_eq!(sim.sim.accepted_count(), 1);
    assert_eq!(
        sim.sim.connections(),
        2,
        "the probe's connection and the actor's one"
    );
}

#[tokio::test]
async fn wrong_key_is_refused_and_missing_topic_reported() {
    let sim = SimFixture::start(Default::default()).await;
    let mut config = sim.app_config();
    let other_key = sim.dir.path().join("other.p8");
    std::fs::write(&other_key, misiva::jwt::generate_p8()).unwrap();
    if let misiva::config::Auth::Token { key_file, .. } = &mut config.auth {
        *key_file = other_key;
    }
    let client = ApnsClient::new("default", &config).await.unwrap();
    let j = job(serde_json::json!({"token": support::token(2)}));
    let answer = client
        .send(&JobRequest::new(&j, client.default_topic()), &j.tokens[0])
        .await;
    assert!(
        matches!(answer, ApnsAnswer::Status { code: 403, reason: Some(ref r), .. } if r == "InvalidProviderToken"),
        "{answer:?}"
    );

    let mut config = sim.app_config();
    config.topic = None;
    let client = ApnsClient::new("default", &config).await.unwrap();
    let answer = client.send(&JobRequest::new(&j, None), &j.tokens[0]).await;
    assert!(
        matches!(answer, ApnsAnswer::Status { code: 400, reason: Some(ref r), .. } if r == "MissingTopic"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn untrusted_simulator_is_a_clear_error() {
    let sim = SimFixture::start(Default::default()).await;
    let mut config = sim.app_config();
    config.ca_file = None;
    let client = ApnsClient::new("default", &config).await.unwrap();
    let err = client.probe().await.unwrap_err().to_string();
    assert!(err.contains("TLS handshake"), "{err}");
}
