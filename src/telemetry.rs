//! Logs: `tracing` to stderr, filtered by `MISIVA_LOG`, as JSON (the default
//! when stderr is not a terminal) or text. In JSON each line carries the
//! fields of its spans: a job's id, app, token count and trace id.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(ExpectedNotFound)
            .try_init(),
        _ => builder.finish().with(ExpectedNotFound).try_init(),
    };
}

/// lapin logs every channel the broker closes at ERROR. The worker looks
/// for queues that may not exist (shards beyond `MISIVA_SHARDS`) with a
/// passive declaration, which the broker answers with 404 NOT_FOUND and a
/// closed channel: expected, and not an error. The caller of any
/// declaration gets the same answer as a `Result` and reports it in its
/// own words, so only lapin's NOT_FOUND lines are dropped.
struct ExpectedNotFound;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExpectedNotFound {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if event.metadata().target() != "lapin::channel" {
            return true;
        }
        let mut look = LookFor(false);
        event.record(&mut look);
        !look.0
    }
}

/// Whether a field of an event mentions NOT_FOUND.
struct LookFor(bool);

impl tracing::field::Visit for LookFor {
    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if !self.0 {
            self.0 = format!("{value:?}").contains("NOT_FOUND");
        }
    }
}
