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
    /// Declare the queues and exchange of the contract, then exit (needs the
    /// broker, not APNs credentials).
    Topology,
    /// Publish jobs to the work queue, one JSON object per line, with confirms.
    Publish {
        /// File of jobs, one per line; `-` reads standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// To the urgent lane (`<queue>.urgent`), which campaigns never delay.
        #[arg(long)]
        urgent: bool,
    },
    /// Run the APNs simulator (HTTP/2 over TLS, Apple's validation and answers).
    ApnsSim(Box<SimArgs>),
    /// Inspect, replay and purge dead letters (needs the broker, not APNs credentials).
    #[command(after_long_help = DLQ_READING)]
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Publish one push job, checked by the worker's own decoder first; prints
    /// the job id once the broker confirmed it.
    Send(Box<SendArgs>),
    /// Create, list, show and delete an app's broadcast channels for Live
    /// Activities, on APNs' channel management endpoint
    /// (MISIVA_APNS_CHANNELS_ENDPOINT). Exit 0, 1 when APNs refused (its
    /// reason printed), 2 on bad input.
    Channels {
        #[command(subcommand)]
        command: ChannelsCommand,
    },
    /// Check app files offline (CONTRACT §8): every `<app>.toml` of a
    /// directory is read as an `[apps.<app>]` section and its key or
    /// certificate loaded. Exit 0, or 2 with every problem listed.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
}

/// What `misiva apps` does.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Read and check every app file of DIR, as the worker would load it:
    /// one line per app (`ok`) and per problem (`problem`), never a secret.
    Check {
        /// The directory of `<app>.toml` files (`MISIVA_APPS_DIR`).
        dir: PathBuf,
    },
}

/// What `misiva channels` does.
#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Creates a channel and prints its id (alone on stdout without --json).
    Create {
        #[command(flatten)]
        target: ChannelsTarget,
        /// What APNs keeps for devices that were away: none, or the latest
        /// broadcast (then broadcasts may have an expiration).
        #[arg(long, default_value = "none", value_parser = ["none", "latest"])]
        storage: String,
    },
    /// The ids of the app's channels, one per line.
    List {
        #[command(flatten)]
        target: ChannelsTarget,
    },
    /// One channel's settings.
    Show {
        /// The channel id, as `create` printed it.
        id: String,
        #[command(flatten)]
        target: ChannelsTarget,
    },
    /// Deletes a channel: broadcasts to it are then refused
    /// (ChannelNotRegistered). Asks first on a terminal.
    Delete {
        id: String,
        #[command(flatten)]
        target: ChannelsTarget,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Whose channels, and how to print them.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelsTarget {
    /// The app (credentials profile) whose bundle id owns the channels.
    #[arg(long, default_value = "default")]
    pub app: String,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What reading the dead-letter queue does to it; every `dlq` subcommand's
/// help ends with it.
pub const DLQ_READING: &str = "\
What reading does to the queue: consumers take the dead letters that are
ready (the oldest first, at most --scan of them, 16 to a channel) without
acknowledging them, then close their channels, which puts back every one they
did not remove, ahead of anything newer and in the same order. Nothing is
lost, duplicated or reordered. Each read counts as one delivery in the
message's x-delivery-count, and RabbitMQ 4.0 to 4.2 drop a quorum queue's
message past 20 of them: a dead letter read ten times is therefore published
again at the back of the queue (confirmed, then the old copy removed), which
starts its count over; a note on stderr says how many moved (see
docs/operations.md). While a read is in progress, the messages it holds are
invisible to other readers. Replay publishes each copy with a confirm before
removing its dead letter: interrupted, it duplicates at most the one in
flight. The counts printed are what the broker did: once the read ends, the
queue's depth must show every removal; what it does not show is reported as
unconfirmed, and the command exits 1.";

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts of dead letters by reason, app and age.
    #[command(after_long_help = DLQ_READING)]
    Stats(Selection),
    /// One line per dead letter, oldest first: position, failed at, reason,
    /// app, attempts, tokens, job id, payload summary.
    #[command(after_long_help = DLQ_READING)]
    List(Selection),
    /// Every field of the dead letters of one job (by job id or message id),
    /// the detail in full.
    #[command(after_long_help = DLQ_READING)]
    Show {
        /// The job id (the body's `id`) or the AMQP message id.
        id: String,
        #[command(flatten)]
        selection: Selection,
    },
    /// Moves the selected dead letters back to the work queue: the same body,
    /// the attempt count reset, `x-misiva-replayed` counted up. Each copy is
    /// confirmed by the broker before its dead letter is removed.
    #[command(after_long_help = DLQ_READING)]
    Replay(ReplayArgs),
    /// Deletes the selected dead letters for good (asks first on a terminal).
    #[command(after_long_help = DLQ_READING)]
    Purge(PurgeArgs),
}

/// Which dead letters a subcommand concerns, and how it prints them.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Only this reason (`x-misiva-reason`: invalid_job, unknown_app,
    /// retries_exhausted, poison, worker_panic, bad_topic, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only jobs of this app (`x-misiva-app`).
    #[arg(long)]
    pub app: Option<String>,
    /// Only those dead-lettered at or after this time: RFC 3339
    /// (2026-11-25T10:00:00Z) or a duration back from now (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only those dead-lettered longer ago than this: a duration (30m, 2h,
    /// 7d) or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub older_than: Option<String>,
    /// At most this many dead letters (after the filters), oldest first.
    #[arg(long)]
    pub limit: Option<usize>,
    /// How many dead letters a read examines at most, oldest first (a
    /// read holds them in memory).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u16).range(1..))]
    pub scan: u16,
    /// JSON lines for scripts instead of tables (nothing else on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Show what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many replays per second.
    #[arg(long)]
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Show what would be deleted, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (scripts must pass it; without a terminal there is no one to ask).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// A device token (hex); repeat for a fan-out job.
    #[arg(
        long = "token",
        short = 't',
        value_name = "HEX",
        required_unless_present = "file"
    )]
    pub tokens: Vec<String>,
    /// The alert text (the alert's body when --title or --subtitle is given).
    #[arg(long, short = 'a')]
    pub alert: Option<String>,
    /// The alert's title.
    #[arg(long)]
    pub title: Option<String>,
    /// The alert's subtitle.
    #[arg(long)]
    pub subtitle: Option<String>,
    /// The number on the app's icon.
    #[arg(long)]
    pub badge: Option<u32>,
    /// A sound file of the app, or `default`.
    #[arg(long)]
    pub sound: Option<String>,
    /// Custom keys beside `aps`, as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Which credentials profile sends it (default: `default`).
    #[arg(long)]
    pub app: Option<String>,
    /// alert, background, voip, ... (default: alert).
    #[arg(long)]
    pub push_type: Option<String>,
    /// The apns-topic (default: the app's).
    #[arg(long)]
    pub topic: Option<String>,
    /// 10, 5 or 1.
    #[arg(long)]
    pub priority: Option<u8>,
    /// The apns-collapse-id: a newer notification with the same id replaces it.
    #[arg(long)]
    pub collapse_id: Option<String>,
    /// The job id (default: a new UUID, sent as the AMQP message id).
    #[arg(long)]
    pub id: Option<String>,
    /// To the urgent lane (`<queue>.urgent`), which campaigns never delay.
    #[arg(long)]
    pub urgent: bool,
    /// A whole job as JSON instead of the options above; `-` reads standard input.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["tokens", "alert", "title", "subtitle", "badge", "sound", "data", "app", "push_type", "topic", "priority", "collapse_id"])]
    pub file: Option<PathBuf>,
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
    /// More keys, of any teams: each `<TEAM_ID>.<KEY_ID>.p8` (or `.pem`,
    /// the public half) in this directory is accepted beside --key-file.
    /// Read again every second, so that keys can be added and withdrawn
    /// while the simulator runs (rotations).
    #[arg(long)]
    pub keys_dir: Option<PathBuf>,
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
    /// Also serve channel management (Apple: api-manage-broadcast, port
    /// 2196) on this address.
    #[arg(long)]
    pub channels_listen: Option<SocketAddr>,
    /// Refuse device pushes whose topic lacks the suffix their push type
    /// needs (400 BadTopic), as Apple does.
    #[arg(long)]
    pub strict_topics: bool,
}
