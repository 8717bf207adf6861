//! The Helm chart, checked with the real tools (`scripts/k8s-tools.sh`
//! installs them into `target/`): `helm lint --strict` and `helm template`
//! (Helm v4) on every values file in `helm/misiva/ci/`, every rendered
//! manifest validated against the Kubernetes 1.35 schemas with
//! `kubernetes-validate --strict` (unknown fields rejected), the custom
//! resources checked against the fields their projects document, and the
//! chart's own rules: the restricted security context, no `replicas` when KEDA
//! or the HPA owns the count, a values schema that rejects wrong types and
//! unknown keys, and a `misiva.toml` the worker loads.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("helm/misiva")
}

fn tool(name: &str) -> PathBuf {
    let path = match name {
        "kubernetes-validate" | "python3" => root().join("target/py/bin").join(name),
        _ => root().join("target/tools").join(name),
    };
    assert!(
        path.exists(),
        "{} is missing: run scripts/k8s-tools.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a command; its stdout, or the failure with stderr.
fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files
}

fn template(extra: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec!["template", "t", chart.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&tool("helm"), &args)
}

/// The rendered documents as JSON (PyYAML, from kubernetes-validate's venv).
fn documents(rendered: &str) -> Vec<Value> {
    let mut child = Command::new(tool("python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rendered.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Fails when `value` has a key outside `allowed` (the fields the custom
/// resource's project documents).
fn only(value: &Value, allowed: &[&str], what: &str) {
    for key in keys(value) {
        assert!(
            allowed.contains(&key.as_str()),
            "{what}: {key:?} is not a documented field"
        );
    }
}

fn check_custom_resources(docs: &[Value]) {
    for d in kind(docs, "ScaledObject") {
        assert_eq!(d["apiVersion"], "keda.sh/v1alpha1");
        let spec = &d["spec"];
        if let Some(advanced) = spec.get("advanced") {
            only(
                advanced,
                &[
                    "horizontalPodAutoscalerConfig",
                    "restoreToOriginalReplicaCount",
                    "scalingModifiers",
                ],
                "ScaledObject.spec.advanced",
            );
        }
        only(
            spec,
            &[
                "scaleTargetRef",
                "pollingInterval",
                "cooldownPeriod",
                "initialCooldownPeriod",
                "idleReplicaCount",
                "minReplicaCount",
                "maxReplicaCount",
                "fallback",
                "advanced",
                "triggers",
            ],
            "ScaledObject.spec",
        );
        only(
            &spec["scaleTargetRef"],
            &["apiVersion", "kind", "name", "envSourceContainerName"],
            "scaleTargetRef",
        );
        for trigger in spec["triggers"].as_array().unwrap() {
            only(
                trigger,
                &[
                    "type",
                    "name",
                    "metadata",
                    "authenticationRef",
                    "metricType",
                    "useCachedMetrics",
                ],
                "trigger",
            );
            assert_eq!(trigger["type"], "rabbitmq");
            only(
                &trigger["metadata"],
                &[
                    "host",
                    "hostFromEnv",
                    "protocol",
                    "mode",
                    "value",
                    "activationValue",
                    "queueName",
                    "vhostName",
                    "usernameFromEnv",
                    "passwordFromEnv",
                    "unsafeSsl",
                    "timeout",
                    "excludeUnacknowledged",
                    "useRegex",
                    "pageSize",
                    "operation",
                ],
                "rabbitmq trigger metadata",
            );
            assert_eq!(trigger["metadata"]["mode"], "QueueLength");
            assert!(
                trigger["metadata"]["value"].is_string(),
                "metadata values are strings"
            );
            only(
                &trigger["authenticationRef"],
                &["name", "kind"],
                "authenticationRef",
            );
        }
    }
    for d in kind(docs, "TriggerAuthentication") {
        assert_eq!(d["apiVersion"], "keda.sh/v1alpha1");
        only(
            &d["spec"],
            &[
                "secretTargetRef",
                "env",
                "podIdentity",
                "hashiCorpVault",
                "configMapTargetRef",
                "boundServiceAccountToken",
            ],
            "TriggerAuthentication.spec",
        );
        for target in d["spec"]["secretTargetRef"].as_array().unwrap() {
            only(target, &["parameter", "name", "key"], "secretTargetRef");
            assert_eq!(target["parameter"], "host");
        }
    }
    for d in kind(docs, "ServiceMonitor") {
        assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
        only(
            &d["spec"],
            &[
                "selector",
                "endpoints",
                "namespaceSelector",
                "jobLabel",
                "targetLabels",
                "podTargetLabels",
                "sampleLimit",
            ],
            "ServiceMonitor.spec",
        );
        for endpoint in d["spec"]["endpoints"].as_array().unwrap() {
            only(
                endpoint,
                &[
                    "port",
                    "targetPort",
                    "path",
                    "scheme",
                    "interval",
                    "scrapeTimeout",
                    "honorLabels",
                    "relabelings",
                    "metricRelabelings",
                ],
                "ServiceMonitor endpoint",
            );
        }
    }
    for d in kind(docs, "PrometheusRule") {
        assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
        only(&d["spec"], &["groups"], "PrometheusRule.spec");
        for group in d["spec"]["groups"].as_array().unwrap() {
            only(
                group,
                &[
                    "name",
                    "interval",
                    "rules",
                    "limit",
                    "partial_response_strategy",
                ],
                "rule group",
            );
            for rule in group["rules"].as_array().unwrap() {
                only(
                    rule,
                    &[
                        "alert",
                        "record",
                        "expr",
                        "for",
                        "keep_firing_for",
                        "labels",
                        "annotations",
                    ],
                    "rule",
                );
                assert!(rule["expr"].is_string());
            }
        }
    }
}

/// The restricted Pod Security Standard, on every pod spec.
fn check_restricted(pod: &Value, what: &str) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{what}: runAsNonRoot");
    assert_eq!(
        psc["seccompProfile"]["type"], "RuntimeDefault",
        "{what}: seccomp"
    );
    for container in pod["containers"].as_array().unwrap() {
        let sc = &container["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{what}: privilege escalation"
        );
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: read-only root");
        assert_eq!(sc["runAsNonRoot"], true, "{what}: non-root container");
        assert!(
            sc["capabilities"]["drop"]
                .as_array()
                .unwrap()
                .contains(&Value::from("ALL")),
            "{what}: capabilities"
        );
        assert_ne!(sc["runAsUser"], 0, "{what}: uid 0");
    }
}

/// KEDA scales on the work queue's whole length: one trigger per shard the
/// worker consumes (as its own configuration says) and one for the urgent
/// lane, and a formula that adds them up (a list of triggers alone scales
/// on the largest).
fn check_keda_counts_every_shard(scaled: &Value, config: &misiva::config::Config, name: &str) {
    let spec = &scaled["spec"];
    let triggers = spec["triggers"].as_array().unwrap();
    let queues: Vec<&str> = triggers
        .iter()
        .map(|t| t["metadata"]["queueName"].as_str().unwrap())
        .collect();
    let mut consumed: Vec<String> = (0..config.shards)
        .map(|i| match i {
            0 => config.queue.clone(),
            _ => format!("{}.{i}", config.queue),
        })
        .collect();
    consumed.push(format!("{}.urgent", config.queue));
    assert_eq!(queues, consumed, "{name}: the triggers' queues");
    let modifiers = &spec["advanced"]["scalingModifiers"];
    only(
        modifiers,
        &["formula", "target", "activationTarget", "metricType"],
        "scalingModifiers",
    );
    assert_eq!(modifiers["metricType"], "AverageValue", "{name}");
    assert_eq!(
        modifiers["target"], triggers[0]["metadata"]["value"],
        "{name}"
    );
    let mut terms: Vec<&str> = modifiers["formula"]
        .as_str()
        .unwrap()
        .split('+')
        .map(str::trim)
        .collect();
    let mut names: Vec<&str> = triggers
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    terms.sort_unstable();
    names.sort_unstable();
    assert_eq!(terms, names, "{name}: the formula adds every trigger once");
}

#[test]
fn every_values_file_lints_renders_and_validates() {
    let chart_dir = chart();
    let chart_path = chart_dir.to_str().unwrap();
    for file in values_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let f = file.to_str().unwrap();
        run(&tool("helm"), &["lint", "--strict", chart_path, "-f", f])
            .unwrap_or_else(|e| panic!("helm lint {name}: {e}"));
        let rendered = template(&["-f", f]).unwrap_or_else(|e| panic!("helm template {name}: {e}"));
        let out = std::env::temp_dir().join(format!("misiva-helm-{}-{name}", std::process::id()));
        std::fs::write(&out, &rendered).unwrap();
        let validated = run(
            &tool("kubernetes-validate"),
            &["--strict", "-k", "1.35.0", "--quiet", out.to_str().unwrap()],
        );
        let _ = std::fs::remove_file(&out);
        validated.unwrap_or_else(|e| panic!("kubernetes-validate {name}: {e}"));

        let docs = documents(&rendered);
        check_custom_resources(&docs);
        let deployments = kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 1, "{name}");
        let deployment = deployments[0];
        let pod = &deployment["spec"]["template"]["spec"];
        check_restricted(pod, &name);
        let owned = !kind(&docs, "ScaledObject").is_empty()
            || !kind(&docs, "HorizontalPodAutoscaler").is_empty();
        assert_eq!(
            deployment["spec"].get("replicas").is_none(),
            owned,
            "{name}: replicas is set exactly when nothing else owns the count"
        );
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert!(annotations["checksum/config"].is_string(), "{name}");
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30,
            "{name}"
        );
        for labels in [
            &deployment["metadata"]["labels"],
            &deployment["spec"]["template"]["metadata"]["labels"],
        ] {
            for label in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
            ] {
                assert!(labels[label].is_string(), "{name}: {label}");
            }
        }

        // The worker reads the rendered configuration.
        let config = kind(&docs, "ConfigMap")
            .into_iter()
            .find_map(|c| c["data"]["misiva.toml"].as_str())
            .unwrap_or_else(|| panic!("{name}: no misiva.toml"));
        if config.contains("cert_password_file") {
            // The password file exists only in the pod: check the syntax.
            config
                .parse::<toml::Table>()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let path = std::env::temp_dir()
                .join(format!("misiva-helm-{}-{name}.toml", std::process::id()));
            std::fs::write(&path, config).unwrap();
            let loaded = misiva::config::Config::load_for_broker(Some(path.clone()));
            let _ = std::fs::remove_file(&path);
            let loaded = loaded
                .unwrap_or_else(|e| panic!("{name}: the worker refuses its misiva.toml: {e}"));
            assert!(
                loaded.apps.contains_key("default") || loaded.apps_dir.is_some(),
                "{name}: the worker has apps"
            );
            if config.contains("broadcast_endpoint") {
                // The values' endpoints of Live Activities reach the worker.
                let app = &loaded.apps["default"];
                assert_eq!(
                    app.broadcast_endpoint.as_ref().map(|e| e.authority()),
                    Some("apns-proxy.internal:8443".to_owned()),
                    "{name}"
                );
                assert_eq!(
                    app.channels_endpoint.host(),
                    "api-manage-broadcast.sandbox.push.apple.com",
                    "{name}"
                );
            }
            for scaled in kind(&docs, "ScaledObject") {
                check_keda_counts_every_shard(scaled, &loaded, &name);
            }
        }
    }
}

/// Apps from a Secret (CONTRACT §8): mounted whole as the worker's apps
/// directory, named in its configuration, and left out of the pod's
/// checksums, so that a rotation updates the files without a rollout.
#[test]
fn the_apps_directory_is_a_mounted_secret_that_rolls_no_pod() {
    let values = chart().join("ci/apps-dir-values.yaml");
    let rendered = template(&["-f", values.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    let docs = documents(&rendered);
    let deployment = kind(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "misiva-apps")
        .unwrap_or_else(|| panic!("no volume of the apps Secret: {}", pod["volumes"]));
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the apps Secret is mounted");
    assert_eq!(mount["mountPath"], "/etc/misiva/apps");
    assert_eq!(mount["readOnly"], true);
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount is never updated"
    );
    let config = kind(&docs, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["misiva.toml"].as_str())
        .unwrap();
    let path =
        std::env::temp_dir().join(format!("misiva-helm-{}-apps-dir.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let loaded = misiva::config::Config::load_for_broker(Some(path.clone()));
    let _ = std::fs::remove_file(&path);
    let loaded = loaded.unwrap_or_else(|e| panic!("the worker refuses its misiva.toml: {e}"));
    assert_eq!(
        loaded.apps_dir.as_deref(),
        Some(Path::new("/etc/misiva/apps"))
    );
    assert!(loaded.apps.is_empty(), "every app comes from the directory");
    assert_eq!(loaded.app_idle, std::time::Duration::from_secs(300));
    let annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        .as_object()
        .unwrap();
    for (key, _) in annotations {
        assert!(
            !key.contains("apps"),
            "{key} would roll the pods on a rotation"
        );
    }
    // Without apps in the values or a directory, the schema refuses.
    let neither =
        template(&["--set", "apps.default=null"]).expect_err("no apps at all was accepted");
    assert!(neither.contains("anyOf"), "{neither}");
}

#[test]
fn the_values_schema_rejects_wrong_types_and_unknown_keys() {
    let defaults = chart().join("ci/defaults-values.yaml");
    let d = defaults.to_str().unwrap();
    if let Err(helm) = template(&["-f", d]) {
        panic!("the defaults do not render: {helm}");
    }
    for (set, why) in [
        ("consumers=two", "a string for an integer"),
        ("replicaCount=-1", "a negative count"),
        ("consumerz=2", "an unknown top-level key"),
        ("keda.enabled=yes", "a string for a boolean"),
        ("keda.queueSize=10", "an unknown nested key"),
        ("apps.default.auth=oauth", "an unknown auth"),
        ("logFormat=xml", "an unknown log format"),
        ("secrets.amqpUrl=http://x", "not an AMQP URL"),
    ] {
        let err = template(&["-f", d, "--set", set]).expect_err(why);
        assert!(err.contains("schema"), "{why}: {err}");
    }
    // A missing required secret names what is missing.
    let err = template(&[
        "--set",
        "apps.default.keyId=K",
        "--set",
        "apps.default.teamId=T",
    ])
    .unwrap_err();
    assert!(err.contains("secrets.amqpUrl is required"), "{err}");
}

#[test]
fn the_chart_ships_the_same_alerts_promtool_checks() {
    let monitoring = chart().join("ci/monitoring-values.yaml");
    let docs = documents(&template(&["-f", monitoring.to_str().unwrap()]).unwrap());
    let rules = kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let shipped: usize = rules[0]["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    let file = std::fs::read_to_string(chart().join("files/alerts.yml")).unwrap();
    assert_eq!(shipped, file.matches("- alert:").count());
    let dashboards = kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["data"]["misiva.json"].is_string())
        .count();
    assert_eq!(dashboards, 1);
}
