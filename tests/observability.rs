//! The dashboard and the alert rules shipped in `helm/misiva/files/` refer
//! only to metrics the worker exports, and the rules are valid and fire when
//! they should (`promtool`, from Debian's `prometheus` package, which
//! `scripts/test.sh` installs).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/helm/misiva/files"))
}

/// Every series name the worker's registry can expose, from its `# TYPE`
/// lines: counters end in `_total`, histograms have `_bucket`, `_count` and
/// `_sum`, info metrics end in `_info`.
fn exported() -> BTreeSet<String> {
    use misiva::events::{self, emit};
    use misiva::outcome::ApnsAnswer;
    use std::sync::Arc;
    use std::time::Duration;
    // A family shows in the exposition once it has a series: one event of
    // each kind gives every family one.
    let app = events::AppMetrics::new("docs");
    let name: Arc<str> = app.app().clone();
    let queue: Arc<str> = Arc::from("misiva.jobs");
    let lane = misiva::lane::Lane::Normal;
    emit(events::JobReceived {
        queue: &queue,
        lane,
    });
    emit(events::Consuming {
        running: true,
        queue: &queue,
        lane,
    });
    emit(events::RetiredShard {
        queue: &queue,
        shards: 1,
        consumed: true,
    });
    emit(events::JobAcked {
        app: "docs",
        lane,
        age: Some(Duration::from_secs(1)),
    });
    emit(events::JobRetried {
        app: "docs",
        job_id: None,
        attempt: 1,
        tier: 0,
        tokens: 1,
        detail: "",
    });
    emit(events::JobDeadLettered {
        app: "docs",
        job_id: None,
        reason: "poison",
        detail: "",
    });
    emit(events::FeedbackPublished {
        app: "docs",
        reason: "Unregistered",
    });
    emit(events::JobRequeued {
        consumer: 0,
        job_id: None,
        failures: 1,
        error: "",
    });
    emit(events::SettlementRetried {
        consumer: 0,
        job_id: None,
        failures: 1,
        pause: Duration::ZERO,
        error: "",
    });
    emit(events::NotificationAnswered {
        target: "token",
        app: &app,
        answer: &ApnsAnswer::Transport(String::new()),
        elapsed: Duration::ZERO,
    });
    emit(events::NotificationResent { app: &app, why: "" });
    emit(events::ConnectionState {
        app: &name,
        from: None,
        to: misiva::apns::State::Ready.label(),
    });
    emit(events::ConnectionOpened {
        app: &name,
        addr: "",
    });
    emit(events::ConnectionClosed {
        app: &name,
        addr: "",
        error: None,
    });
    emit(events::ProviderTokenRenewed {
        app: &name,
        key_id: "",
        rejected: false,
    });
    emit(events::BreakerChanged::Opened {
        app: &name,
        failures: 1,
    });
    emit(events::ChildRestarted {
        supervisor: "",
        child: "consumer-0",
        reason: "",
    });
    emit(events::AppLoaded {
        app: "docs",
        source: "dir",
        file: None,
        change: "added",
        auth: "certificate",
        key_id: None,
        certificate_expiry: Some(2_000_000_000),
    });
    emit(events::AppConfigRejected {
        app: "docs",
        file: std::path::Path::new("docs.toml"),
        reason: "",
        kept: true,
    });
    let text = events::metrics().encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => drop(names.insert(format!("{name}_total"))),
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            "info" => drop(names.insert(format!("{name}_info"))),
            _ => drop(names.insert(name.to_owned())),
        }
    }
    names
}

/// The `misiva_…` names a PromQL expression uses.
fn used(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("misiva_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

#[test]
fn the_dashboard_parses_and_uses_only_exported_metrics() {
    let exported = exported();
    assert!(exported.contains("misiva_jobs_acked_total"), "{exported:?}");
    let text = std::fs::read_to_string(dir().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    if let Some(vars) = dashboard["templating"]["list"].as_array() {
        exprs.extend(
            vars.iter()
                .filter_map(|v| v["query"].as_str().map(str::to_owned)),
        );
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut seen = BTreeSet::new();
    for expr in &exprs {
        for name in used(expr) {
            assert!(
                exported.contains(&name),
                "the dashboard uses {name}, which the worker does not export"
            );
            seen.insert(name);
        }
    }
    // What operators must see: throughput by outcome, latency, retries and
    // dead letters by reason, connections, restarts.
    for needed in [
        "misiva_notifications_total",
        "misiva_apns_request_duration_seconds_bucket",
        "misiva_job_latency_seconds_bucket",
        "misiva_jobs_retried_total",
        "misiva_jobs_dead_lettered_total",
        "misiva_apns_connections",
        "misiva_supervisor_restarts_total",
    ] {
        assert!(
            seen.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_use_exported_metrics_and_fire() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts-test.yml"]);
    let exported = exported();
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).unwrap();
    let names = used(&rules);
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            exported.contains(&name),
            "a rule uses {name}, which the worker does not export"
        );
    }
    for alert in [
        "MisivaDeadLettersRising",
        "MisivaBreakerOpen",
        "MisivaNoProgress",
        "MisivaRestarting",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
}
