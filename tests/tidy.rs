//! Tidy checks: invariants of ARCHITECTURE.md that a machine can check, read
//! off the source text (in the style of rust-analyzer's tidy tests).

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every file of `src/`, as (path relative to `src/`, text without comments).
fn files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code: Vec<&str> = text
                .lines()
                .map(|l| match l.find("//") {
                    Some(i) if !l[..i].contains('"') => &l[..i],
                    _ => l,
                })
                .collect();
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, code.join("\n"))
        })
        .collect()
}

/// `text` with the contents of its string literals removed: a crate named in
/// a string (a log filter, say) is not a use of it.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    // A quote as a character literal opens no string.
    let text = text.replace("'\"'", "'_'").replace("'\\\"'", "'_'");
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    out.push(c);
                }
                _ => escaped = false,
            }
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// Whether `text` names the crate `krate` in a path (`krate::...`).
fn names(text: &str, krate: &str) -> bool {
    let text = code_only(text);
    let text = text.as_str();
    let needle = format!("{krate}::");
    text.match_indices(&needle).any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

#[test]
fn only_the_amqp_shell_names_lapin() {
    for (path, text) in files() {
        if !path.starts_with("amqp/") {
            assert!(!names(&text, "lapin"), "{path} names lapin");
        }
    }
}

#[test]
fn only_the_apns_shell_the_simulator_and_admin_speak_http2_and_tls() {
    for (path, text) in files() {
        let allowed = path.starts_with("apns/") || path.starts_with("sim/") || path == "admin.rs";
        if allowed {
            continue;
        }
        for krate in ["hyper", "h2", "rustls", "tokio_rustls"] {
            assert!(!names(&text, krate), "{path} names {krate}");
        }
    }
}

/// The pure core: the files that hold the contract's rules without I/O.
fn pure(path: &str) -> bool {
    path.starts_with("job/")
        || path.starts_with("amqp/wire/")
        || [
            "outcome.rs",
            "bounded.rs",
            "amqp/wire.rs",
            "amqp/acks.rs",
            "amqp/names.rs",
            "dlq.rs",
            "trace.rs",
            "lane.rs",
            "duration.rs",
        ]
        .contains(&path)
}

/// The pure core imports only the pure core: a rule that needs a socket, a
/// file or the clock of an effectful module cannot hide behind an import.
#[test]
fn the_pure_core_imports_only_the_pure_core() {
    let pure_modules = [
        "job", "outcome", "bounded", "dlq", "trace", "lane", "duration",
    ];
    let pure_amqp = ["wire", "acks", "names"];
    for (path, text) in files().into_iter().filter(|(p, _)| pure(p)) {
        let code = code_only(&text);
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if module == "amqp" {
                let inner: String = rest["amqp::".len().min(rest.len())..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    pure_amqp.contains(&inner.as_str()),
                    "{path} (pure core) imports crate::amqp::{inner}, which is not pure"
                );
            } else {
                assert!(
                    pure_modules.contains(&module.as_str()),
                    "{path} (pure core) imports crate::{module}, which is not pure"
                );
            }
        }
        // `super` of a file directly in `amqp/` is `amqp`, whose other
        // modules are the effectful shell.
        if path.starts_with("amqp/") && path.matches('/').count() == 1 {
            for (at, _) in code.match_indices("super::") {
                let module: String = code[at + "super::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                // Inside the file's own test module, `super` is the file.
                let in_tests = code[..at].contains("mod tests");
                assert!(
                    pure_amqp.contains(&module.as_str()) || in_tests,
                    "{path} (pure core) imports super::{module}, which is not pure"
                );
            }
        }
    }
}

/// The pure core decides; it never waits, reads files or opens sockets.
#[test]
fn the_pure_core_does_no_io() {
    for (path, text) in files().into_iter().filter(|(p, _)| pure(p)) {
        for io in [
            "std::fs", "std::net", "tokio", ".await", "File::", "std::env",
        ] {
            assert!(!text.contains(io), "{path} (pure core) uses {io}");
        }
    }
}

/// A short string built from a runtime value panics past 255 bytes
/// (`From<&str> for ShortString`). Outside `amqp/wire.rs`, which bounds them,
/// AMQP-facing code converts only string literals with `.into()`.
#[test]
fn no_panicking_conversion_into_amqp_strings() {
    for (path, text) in files() {
        if !names(&text, "lapin") || path == "amqp/wire.rs" {
            continue;
        }
        assert!(
            !text.contains("ShortString::from"),
            "{path}: ShortString::from"
        );
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find(".into()") {
                let before = rest[..i].trim_end();
                let literal = before.ends_with('"');
                let bytes = line.contains("as_bytes()") || line.contains("LongString");
                assert!(
                    literal || bytes,
                    "{path}:{}: `.into()` on a runtime value; use amqp::wire::short",
                    n + 1
                );
                if literal {
                    let start = before[..before.len() - 1].rfind('"').unwrap_or(0);
                    assert!(
                        before.len() - start <= 257,
                        "{path}:{}: literal over 255 bytes",
                        n + 1
                    );
                }
                rest = &rest[i + 7..];
            }
        }
    }
}

/// `rust-version` in Cargo.toml is the oldest toolchain that builds the
/// crate: at least what every locked dependency declares (clippy's
/// `incompatible_msrv` lint, on in CI, checks our own use of the standard
/// library against it), and no newer than the toolchain that runs the tests.
#[test]
fn the_declared_rust_version_is_what_builds() {
    fn parse(v: &str) -> (u32, u32) {
        let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| parse(v.trim_matches('"')))
        .expect("Cargo.toml declares rust-version");
    // Only the packages built for this machine: the others' manifests may
    // not even be downloaded.
    let host_info = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host_info = String::from_utf8_lossy(&host_info.stdout).into_owned();
    let host = host_info
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let metadata = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            host,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        metadata.status.success(),
        "{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let (needed, by) = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != "misiva")
        .filter_map(|p| {
            Some((
                parse(p["rust_version"].as_str()?),
                p["name"].as_str()?.to_owned(),
            ))
        })
        .max()
        .unwrap();
    assert!(
        declared >= needed,
        "rust-version {declared:?} is older than {by}'s {needed:?}"
    );
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .unwrap();
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    let running = parse(rustc.split_whitespace().nth(1).unwrap());
    assert!(
        declared <= running,
        "rust-version {declared:?} is newer than {rustc}"
    );
}

/// Files are read at the edges only: configuration, keys and certificates,
/// the operator commands and the simulator.
#[test]
fn only_the_edges_read_files() {
    let allowed = |p: &str| {
        p.starts_with("sim/")
            || [
                "config/mod.rs",
                "config/apps_dir.rs",
                "apps/watch.rs",
                "config/file.rs",
                "config/tests.rs",
                "jwt.rs",
                "apns/tls.rs",
                "ops.rs",
                "publish.rs",
            ]
            .contains(&p)
    };
    for (path, text) in files() {
        if allowed(&path) {
            continue;
        }
        for io in ["std::fs", "tokio::fs", "File::"] {
            assert!(!text.contains(io), "{path} reads files ({io})");
        }
    }
}

/// Every channel is bounded (ARCHITECTURE.md): an unbounded queue turns a
/// slow consumer into memory growth instead of back-pressure.
#[test]
fn no_unbounded_channels() {
    for (path, text) in files() {
        let code = code_only(&text);
        for unbounded in [
            "unbounded_channel",
            "UnboundedSender",
            "mpsc::unbounded",
            "std::sync::mpsc",
        ] {
            assert!(
                !code.contains(unbounded),
                "{path} uses {unbounded}: every channel must be bounded (tokio::sync::mpsc::channel(n))"
            );
        }
    }
}

/// The code map of ARCHITECTURE.md names every source file and every test
/// file, so that a reader finds each one there.
#[test]
fn the_code_map_lists_every_source_and_test_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut paths = Vec::new();
    sources(&root.join("src"), &mut paths);
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            paths.push(path);
        }
    }
    paths.push(root.join("tests/support/mod.rs"));
    let mut missing: Vec<String> = paths
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .filter(|rel| !map.contains(&format!("`{rel}`")))
        .collect();
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name: {missing:?}"
    );
}

/// With `autotests = false` cargo builds only `tests/suite.rs`, so a file of
/// `tests/` that it does not declare as a module would never compile or run,
/// and nothing would say so.
#[test]
fn every_test_file_is_a_module_of_the_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite = std::fs::read_to_string(root.join("tests/suite.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let is_module = path.is_dir() && path.join("mod.rs").exists();
        if (is_module || path.extension().is_some_and(|e| e == "rs"))
            && name != "suite"
            && !suite.lines().any(|l| l.trim() == format!("mod {name};"))
        {
            missing.push(name.to_owned());
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "tests/suite.rs does not declare `mod ...;` for: {missing:?}; cargo would never build them"
    );
}

/// `panic = "abort"` in a profile would turn the per-job `catch_unwind`
/// (a panicking job is dead-lettered as `worker_panic`, the consumer goes
/// on) into the death of the whole process.
#[test]
fn panics_are_never_set_to_abort() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["Cargo.toml", ".cargo/config.toml"] {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        let table: toml::Table = text.parse().unwrap();
        let mut stack = vec![(file.to_owned(), toml::Value::Table(table))];
        while let Some((at, value)) = stack.pop() {
            match value {
                toml::Value::Table(table) => {
                    for (key, value) in table {
                        if key == "panic" {
                            assert_ne!(
                                value.as_str(),
                                Some("abort"),
                                "{at}.{key}: panic = \"abort\" would kill the worker on a job's panic"
                            );
                        }
                        stack.push((format!("{at}.{key}"), value));
                    }
                }
                toml::Value::String(s) if s.contains("panic=abort") => {
                    panic!("{at}: {s:?} sets panic=abort");
                }
                toml::Value::Array(items) => {
                    stack.extend(items.into_iter().map(|v| (at.clone(), v)));
                }
                _ => {}
            }
        }
    }
}

/// Log lines and metrics come only from `events` (ARCHITECTURE.md): code
/// elsewhere says what happened with `events::emit`, so the log and the
/// metric never disagree. The generic supervisor keeps its own log lines
/// for its lifecycle (it knows nothing of Misiva; its restarts are counted
/// through an event), and the APNs simulator is a separate program whose
/// log is its product.
#[test]
fn log_lines_and_metrics_come_only_from_events() {
    let exempt =
        |p: &str| p.starts_with("events/") || p.starts_with("supervisor/") || p.starts_with("sim/");
    for (path, text) in files() {
        if exempt(&path) {
            continue;
        }
        let code = code_only(&text);
        for level in ["trace", "debug", "info", "warn", "error", "event"] {
            // `info_span!` and the like make spans, which carry context
            // into the events' lines; only the line macros are refused.
            let line = format!("{level}!(");
            let found = code.match_indices(&line).any(|(i, _)| {
                !code[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            assert!(
                !found,
                "{path} writes a log line ({level}!) itself: emit an event from src/events/ instead"
            );
        }
        assert!(
            !names(&text, "prometheus_client"),
            "{path} touches a metric itself (prometheus_client): emit an event from src/events/ instead"
        );
    }
}
