//! The `misiva` binary: parse the command line, load configuration, start
//! logging, and hand over to the library.

use clap::Parser;
use misiva::cli::{Cli, Command};
use misiva::config::{Config, LogFormat};
use std::process::ExitCode;

/// Stack of the threads that parse AMQP frames. lapin parses header tables
/// recursively on its own I/O thread, with no depth limit: a 10 KB message
/// nested 2,000 levels deep overflows the default 2 MiB and aborts the whole
/// process, before any of our code sees the message. A frame holds at most
/// about 26,000 levels (5 bytes each in 131,072), which this much stack
/// parses. It is address space, not memory: only the pages a parse touches
/// are ever backed.
const IO_THREAD_STACK: &str = "268435456";

/// Stack of the runtime's threads, where a deeply nested delivery is dropped.
const RUNTIME_THREAD_STACK: usize = 32 * 1024 * 1024;

/// Counts allocations for the end-to-end benchmark, which builds this binary
/// with the `alloc-stats` feature; the total is printed at exit.
#[cfg(feature = "alloc-stats")]
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn main() -> ExitCode {
    reexec_with_io_stack();
    let threads = match misiva::config::runtime_threads(std::env::var_os("MISIVA_RUNTIME_THREADS"))
    {
        Ok(threads) => threads,
        Err(e) => {
            eprintln!("misiva: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // The runtime runs on a thread of our own, so that with one thread the
    // tasks still get `RUNTIME_THREAD_STACK` (the main thread's stack is the
    // system's default).
    let started = std::thread::Builder::new()
        .name("misiva-runtime".into())
        .stack_size(RUNTIME_THREAD_STACK)
        .spawn(move || {
            match misiva::config::runtime_builder(threads)
                .enable_all()
                .thread_stack_size(RUNTIME_THREAD_STACK)
                .build()
            {
                Ok(runtime) => runtime.block_on(run()),
                Err(e) => {
                    eprintln!("misiva: cannot start the async runtime: {e}");
                    ExitCode::from(1)
                }
            }
        });
    let code = match started.map(std::thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => ExitCode::from(101),
        Err(e) => {
            eprintln!("misiva: cannot start the runtime's thread: {e}");
            ExitCode::from(1)
        }
    };
    #[cfg(feature = "alloc-stats")]
    eprintln!("misiva: allocations={}", ALLOCATOR.stats().allocations);
    code
}

/// lapin spawns its I/O thread without a stack size, so std gives it
/// `RUST_MIN_STACK`, read once at the first spawn. Setting the variable in
/// our own process would need `unsafe`; starting the same binary again with
/// it set is safe and keeps the pid (exec replaces the process image).
fn reexec_with_io_stack() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("RUST_MIN_STACK").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RUST_MIN_STACK", IO_THREAD_STACK)
        .exec();
    // Only reached when exec failed: run on, with the default stack.
    eprintln!("misiva: could not enlarge the AMQP I/O thread's stack ({error}); continuing");
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::ApnsSim(args) => {
            init_logs_from_env();
            misiva::sim::cli::run(*args).await
        }
        Command::Publish { file, urgent } => {
            init_logs_from_env();
            let lane = if urgent {
                misiva::lane::Lane::Urgent
            } else {
                misiva::lane::Lane::Normal
            };
            misiva::publish::run(cli.config, &file, lane).await
        }
        Command::Dlq { .. } | Command::Send(_) | Command::Topology => {
            init_logs_from_env();
            // These talk to the broker only: no APNs credentials needed.
            let config = match Config::load_for_broker(cli.config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("misiva: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            match cli.command {
                Command::Dlq { command } => misiva::ops::dlq(config, command).await,
                Command::Send(args) => misiva::ops::send(config, *args).await,
                _ => match misiva::app::topology(&config).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("misiva topology: {e}");
                        e.exit_code()
                    }
                },
            }
        }
        Command::Apps { command } => {
            init_logs_from_env();
            misiva::apps::run(command)
        }
        Command::Channels { command } => {
            init_logs_from_env();
            let config = match Config::load(cli.config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("misiva: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            misiva::channels::run(&config, command).await
        }
        Command::Run => {
            let config = match Config::load(cli.config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("misiva: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            misiva::telemetry::init(&config.log, config.log_format);
            // Boxed: the whole worker's future, awaited once.
            let result = Box::pin(misiva::app::run(config)).await;
            match result {
                Ok(()) => 0,
                Err(e) => {
                    misiva::events::emit(misiva::events::WorkerFailed { error: &e });
                    e.exit_code()
                }
            }
        }
    };
    ExitCode::from(code as u8)
}

/// Commands that need no worker configuration still honour MISIVA_LOG.
fn init_logs_from_env() {
    let filter = std::env::var("MISIVA_LOG").unwrap_or_else(|_| "info".into());
    let format = match std::env::var("MISIVA_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => LogFormat::Auto,
    };
    misiva::telemetry::init(&filter, format);
}
