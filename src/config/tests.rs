use super::settings::parse_percent;
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
        ("MISIVA_DEAD_LETTER_QUEUE", "amq.dead"),
        ("MISIVA_FEEDBACK_EXCHANGE", &"f".repeat(256)),
        ("MISIVA_PREFETCH", "65536"),
        ("MISIVA_APNS_CONNECTIONS", "65"),
        // A filter `tracing` cannot read is refused, not replaced by `info`.
        ("MISIVA_LOG", "misiva=loud"),
        // An app's connections cannot close after no time at all.
        ("MISIVA_APP_IDLE", "0s"),
        ("MISIVA_APP_IDLE", "ten minutes"),
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
    assert_eq!(c.prefetch, 500);
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

#[test]
fn every_name_comes_from_the_environment_or_the_file() {
    let mut pairs = TOKEN_AUTH.to_vec();
    pairs.extend([
        ("MISIVA_DEAD_LETTER_QUEUE", "parked"),
        ("MISIVA_FEEDBACK_EXCHANGE", "fb.x"),
        ("MISIVA_LOG", "misiva=debug,lapin=warn"),
    ]);
    let c = Config::from_env_map(&env(&pairs)).unwrap();
    assert_eq!(c.dead_letter_queue, "parked");
    assert_eq!(c.feedback_exchange, "fb.x");
    // The feedback queue follows the exchange's name unless it is set.
    assert_eq!(c.feedback_queue, "fb.x");
    assert_eq!(c.log, "misiva=debug,lapin=warn");
}

#[test]
fn an_apps_keepalive_out_of_range_is_refused_not_clamped() {
    for (keepalive, ok) in [(0, false), (1, true), (86_400, true), (86_401, false)] {
        let file: FileConfig = toml::from_str(&format!(
            "[apps.a]\nkey_file = \"/k.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\nkeepalive_secs = {keepalive}\n"
        ))
        .unwrap();
        let loaded = Config::from_parts(file, &HashMap::new(), true);
        match loaded {
            Ok(c) => {
                assert!(ok, "keepalive_secs = {keepalive} passed");
                assert_eq!(c.apps["a"].keepalive, Duration::from_secs(keepalive));
            }
            Err(e) => {
                assert!(!ok, "keepalive_secs = {keepalive}: {e}");
                assert!(e.to_string().contains("1 to 86400"), "{e}");
            }
        }
    }
}

#[test]
fn an_apps_directory_needs_no_app_in_the_environment() {
    let config = Config::from_env_map(&env(&[
        ("MISIVA_APPS_DIR", "/etc/misiva/apps"),
        ("MISIVA_APP_IDLE", "90s"),
    ]))
    .unwrap();
    assert!(config.apps.is_empty());
    assert_eq!(
        config.apps_dir.as_deref(),
        Some(std::path::Path::new("/etc/misiva/apps"))
    );
    assert_eq!(config.app_idle, Duration::from_secs(90));
    let defaults = Config::from_env_map(&env(&TOKEN_AUTH)).unwrap();
    assert_eq!(defaults.app_idle, Duration::from_secs(600));
    assert!(defaults.apps_dir.is_none());
    // Without one, an app is still required.
    assert!(Config::from_env_map(&env(&[])).is_err());
}
