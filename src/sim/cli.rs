//! `misiva apns-sim` on the command line.

use super::{Faults, SimConfig, SimKey, Simulator};
use crate::cli::SimArgs;
use std::time::Duration;

/// Runs until SIGINT/SIGTERM; returns the process exit code.
pub async fn run(args: SimArgs) -> i32 {
    match serve(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("misiva apns-sim: {e}");
            2
        }
    }
}

async fn serve(args: SimArgs) -> anyhow::Result<()> {
    if !args.key_file.exists() {
        std::fs::write(&args.key_file, crate::jwt::generate_p8())?;
        tracing::info!(path = %args.key_file.display(), "generated a new signing key (.p8) for the simulator");
    }
    let key = SimKey::from_file(&args.key_id, &args.team_id, &args.key_file)?;
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!("--error-rate must be between 0 and 1");
    }
    let sim = Simulator::start(SimConfig {
        listen: args.listen,
        keys: vec![key.clone()],
        max_streams: args.max_streams,
        faults: Faults {
            error_rate: args.error_rate,
            error_status: args.error_status,
            latency: Duration::from_millis(args.latency_ms),
            goaway_after: args.goaway_after,
            reset_after: args.reset_after,
            stall_after: args.stall_after,
        },
        // The command-line simulator may run for days: count, do not keep.
        record: false,
        hostnames: args.hostname,
        log_deliveries: args.show_deliveries,
        idle_timeout: args.idle_timeout_secs.map(Duration::from_secs),
        certificate_auth: args.cert_auth_dir.is_some(),
        token_max_age: Duration::from_secs(args.token_max_age_secs),
        strict_topics: args.strict_topics,
        channels_listen: args.channels_listen,
    })
    .await?;
    std::fs::write(&args.ca_out, sim.ca_pem())?;
    if let Some(dir) = &args.cert_auth_dir {
        // A client certificate for the worker (MISIVA_APNS_CERT_FILE), as PEM
        // and as PKCS#12 with the password "misiva".
        let topic = "misiva-client";
        let issued = sim
            .issue_client_certificate(topic, "misiva")
            .ok_or_else(|| anyhow::anyhow!("certificate auth is not on"))?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("client.pem"), issued.pem)?;
        std::fs::write(dir.join("client.p12"), issued.p12)?;
        tracing::info!(dir = %dir.display(), "certificate auth: client.pem and client.p12 (password \"misiva\") written");
    }
    if let Some(channels) = sim.channels_endpoint() {
        tracing::info!(%channels, "channel management listening (MISIVA_APNS_CHANNELS_ENDPOINT)");
    }
    tracing::info!(endpoint = %sim.endpoint(), ca = %args.ca_out.display(), key_id = %args.key_id, team_id = %args.team_id, "APNs simulator ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut report = tokio::time::interval(Duration::from_secs(5));
    let mut last = 0;
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    let mut known: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = rescan.tick(), if args.keys_dir.is_some() => {
                let dir = args.keys_dir.as_deref().unwrap_or(std::path::Path::new("."));
                match super::read_keys_dir(dir) {
                    Ok((more, problems)) => {
                        let mut keys = vec![key.clone()];
                        keys.extend(more);
                        let ids: Vec<String> = keys.iter().map(|k| format!("{}.{}", k.team_id, k.key_id)).collect();
                        if ids != known {
                            tracing::info!(keys = ?ids, ?problems, "keys directory read: accepting these keys");
                            sim.set_keys(keys);
                            known = ids;
                        }
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot read the keys directory; the keys stay as they were"),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = report.tick() => {
                let now = sim.accepted_count();
                if now != last {
                    tracing::info!(accepted = now, rejected = ?sim.rejected(), "simulator totals");
                    last = now;
                }
            }
        }
    }
    tracing::info!(
        accepted = sim.accepted_count(),
        rejected = ?sim.rejected(),
        connections = sim.connections(),
        max_streams_per_connection = ?sim.max_concurrent_streams(),
        "simulator stopped"
    );
    Ok(())
}
