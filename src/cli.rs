//! Command-line interface.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "misiva",
    version,
    about = "Delivers Apple push notifications from RabbitMQ"
)]
pub struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "MISIVA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume push jobs and deliver them to APNs (the worker).
    Run,
    /// Declare the queues and exchange of the contract, then exit.
    Topology,
    /// Publish jobs to the work queue, one JSON object per line, with confirms.
    Publish {
        /// File of jobs, one per line; `-` reads standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Run the APNs simulator (HTTP/2 over TLS, Apple's validation and answers).
    ApnsSim(Box<SimArgs>),
}

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2197")]
    pub listen: SocketAddr,
    /// Where to write the PEM of the simulator's CA (for MISIVA_APNS_CA_FILE).
    #[arg(long)]
    pub ca_out: PathBuf,
    /// The `.p8` whose public half verifies provider tokens; created if missing.
    #[arg(long)]
    pub key_file: PathBuf,
    #[arg(long, default_value = "SIMKEY0001")]
    pub key_id: String,
    #[arg(long, default_value = "SIMTEAM001")]
    pub team_id: String,
    /// SETTINGS_MAX_CONCURRENT_STREAMS per connection.
    #[arg(long, default_value_t = 1000)]
    pub max_streams: u32,
    /// Fraction of valid requests answered with --error-status.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// 500, 503 or 429.
    #[arg(long, default_value_t = 503)]
    pub error_status: u16,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Each connection sends GOAWAY after its Nth request.
    #[arg(long)]
    pub goaway_after: Option<u64>,
    /// Each connection is dropped (no GOAWAY) after accepting its Nth request.
    #[arg(long)]
    pub reset_after: Option<u64>,
    /// Each connection leaves requests after its Nth unanswered.
    #[arg(long)]
    pub stall_after: Option<u64>,
    /// Close connections idle (not even a PING) for this many seconds.
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Answer `ExpiredProviderToken` to provider tokens older than this many
    /// seconds (Apple: 3600), to see the worker renew them.
    #[arg(long, default_value_t = 3600)]
    pub token_max_age_secs: u64,
    /// Certificate auth: require client certificates, and write one for the
    /// worker (client.pem, client.p12 with password "misiva") into this directory.
    #[arg(long)]
    pub cert_auth_dir: Option<PathBuf>,
    /// Log every accepted notification.
    #[arg(long)]
    pub show_deliveries: bool,
    /// Extra host name for the server certificate.
    #[arg(long)]
    pub hostname: Vec<String>,
}
