//! What the benchmarks share: reading a process's CPU time and memory from /proc.

#![allow(dead_code)]

/// CPU seconds (user + system) a process has used, from /proc (Linux clock
/// ticks are 1/100 s on every distribution this project supports).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Context switches of a process so far, voluntary and involuntary, summed
/// over its threads (`/proc/<pid>/task/*/status`).
pub fn context_switches(pid: &str) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let value = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("voluntary_ctxt_switches:") {
                total.0 += value(line);
            } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                total.1 += value(line);
            }
        }
    }
    total
}

/// Write system calls of a process so far (`syscw` in `/proc/<pid>/io`):
/// `write` and `writev` count whatever their size, so this shows how well a
/// process batches its output. (Socket reads through `recv` are not counted
/// there, so reads are not shown.)
pub fn write_syscalls(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Peak resident memory of a process in MiB (VmHWM).
pub fn peak_rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Resident memory of a process now, in MiB (VmRSS).
pub fn rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A memory figure of `/proc/<pid>/status`, in MiB (0 when unreadable).
fn status_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p`-th percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A command-line value after `flag`, or `default`.
pub fn arg(flag: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A command-line text after `flag`, if given.
pub fn text_arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Builds the worker as users build it (`cargo build --release --locked`),
/// in a target directory of its own, optionally with extra features
/// (`-alloc-stats`); returns the binary's path. A binary built by `cargo
/// bench` would carry the dev-dependencies' features, tokio's test clock
/// among them.
pub fn build_worker(features: &str) -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-worker{features}"));
    let mut command =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["build", "--release", "--locked", "--bin", "misiva"])
        .env("CARGO_TARGET_DIR", &dir)
        .current_dir(&root);
    if !features.is_empty() {
        command.args(["--features", features.trim_start_matches('-')]);
    }
    let ok = command.status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "building the worker failed");
    dir.join("release/misiva")
}

/// Runs `scripts/broker.sh <command>` for the private node on `port`.
pub fn broker(port: u16, command: &str) {
    let ok = std::process::Command::new(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh"),
    )
    .arg(command)
    .env("MISIVA_BROKER_PORT", port.to_string())
    .status()
    .map(|s| s.success())
    .unwrap_or(false);
    assert!(ok, "scripts/broker.sh {command} failed");
}
