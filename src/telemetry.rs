//! Logs: `tracing` to stderr, filtered by `MISIVA_LOG`, as JSON (the default
//! when stderr is not a terminal) or text. In JSON each line carries the
//! fields of its spans: a job's id, app, token count and trace id.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Appended to every filter: at `trace`, lapin's I/O loop prints each frame it
/// writes, and the `connection.start-ok` frame holds the SASL password. The
/// more specific directive wins over a level such as `trace` or `lapin=trace`.
const NEVER: &str = "lapin::io_loop=debug";

pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(format!("{filter},{NEVER}")).unwrap_or_else(|e| {
        eprintln!("MISIVA_LOG {filter:?} is not a valid filter ({e}); using info");
        EnvFilter::new(format!("info,{NEVER}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs redirected to files stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let format = match format {
        LogFormat::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    // A second init (tests that run several commands in one process) is harmless.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
}
