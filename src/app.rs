//! `misiva run` and `misiva topology`: wires configuration, APNs clients, the
//! broker connection and the consumer actors, and owns the orderly stop.

use crate::admin::Readiness;
use crate::amqp::{self, Broker, Consumer, Topology, TopologyError};
use crate::apns::{Apns, SetupError};
use crate::apps::watch::{DirWatch, RESCAN_EVERY};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::events;
use crate::lane::Lane;
use crate::supervisor::{
    Backoff, ChildContext, ChildError, ChildSpec, Intensity, Restart, Shutdown, Strategy,
    Supervisor, SupervisorSpec,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Why the worker stopped with an error. Configuration errors exit with code 2
/// and are never worth a restart; runtime errors exit with 1.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration: {0}")]
    Setup(#[from] SetupError),
    #[error("configuration: {0}")]
    Topology(TopologyError),
    #[error(transparent)]
    Broker(#[from] amqp::AmqpError),
    #[error("configuration: cannot listen on MISIVA_ADMIN_ADDR {addr}: {source}")]
    Admin {
        addr: String,
        source: std::io::Error,
    },
    #[error("configuration: cannot read MISIVA_APPS_DIR {dir}: {source}")]
    AppsDir { dir: String, source: std::io::Error },
    #[error(
        "configuration: app {app:?} is defined both in {file} and in the configuration file or the environment"
    )]
    AppTwice { app: String, file: String },
    #[error("supervision gave up: {0}")]
    GaveUp(ChildError),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Setup(_)
            | RunError::Admin { .. }
            | RunError::AppsDir { .. }
            | RunError::AppTwice { .. }
            | RunError::Topology(
                TopologyError::Conflict { .. } | TopologyError::PluginMissing { .. },
            ) => 2,
            _ => 1,
        }
    }
}

impl From<TopologyError> for RunError {
    fn from(e: TopologyError) -> Self {
        match e {
            TopologyError::Amqp(a) => RunError::Broker(a),
            other => RunError::Topology(other),
        }
    }
}

/// Connects, retrying for a while: a broker that starts a little after the
/// worker (a pod and its broker deployed together) is normal.
async fn connect(config: &Config, name: &str) -> Result<Broker, amqp::AmqpError> {
    let mut attempt = 0u32;
    loop {
        match Broker::connect(&config.amqp_url, name).await {
            Ok(broker) => return Ok(broker),
            Err(e) if attempt < 15 => {
                attempt += 1;
                events::emit(events::BrokerUnreachable { attempt, error: &e });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `misiva topology`: declares the queues and exchange, then exits.
pub async fn topology(config: &Config) -> Result<(), RunError> {
    let broker = connect(config, "misiva topology").await?;
    let declared = amqp::declare(&broker, &Topology::from_config(config)).await?;
    for queue in &declared.retired {
        events::emit(events::RetiredShardFound {
            queue,
            shards: config.shards,
        });
    }
    broker.close().await;
    Ok(())
}

/// `misiva run`: builds the supervision tree and runs it until SIGTERM/SIGINT
/// (exit 0 after an orderly stop) or until the root supervisor gives up (exit 1).
///
/// ```text
/// misiva            one_for_one   root: restarts the broker subtree; gives up → exit 1
/// ├─ apps           permanent     MISIVA_APPS_DIR's passes
/// ├─ app-clients    one_for_one   no static children
/// │  └─ app-<name>  transient     one per app in use: its client; ends when idle
/// └─ amqp           rest_for_one  the connection first, then what needs it
///    ├─ connection  permanent     connects, declares, watches the connection
///    └─ consumers   one_for_one   one consumer actor per channel
///       ├─ consumer-0 permanent
///       └─ consumer-N permanent
/// ```
pub async fn run(config: Config) -> Result<(), RunError> {
    let apns = Apns::from_config(&config).await?;
    let apps_dir = match &config.apps_dir {
        Some(dir) => Some(first_scan(dir, &apns)?),
        None => None,
    };
    let readiness = Readiness::new(config.consumers * config.shards + config.urgent_consumers);
    crate::admin::serve(&config.admin_addr, readiness.clone(), Some(apns.clone()))
        .await
        .map_err(|source| RunError::Admin {
            addr: config.admin_addr.clone(),
            source,
        })?;
    for (app, config) in apns.fixed() {
        // An unreachable APNs at start is not fatal (it may come back); a wrong
        // CA or endpoint shows here early, in the log. The client made for
        // the check is dropped: the app's first job starts its own.
        // Boxed: a client's start is large, and runs once here.
        let client = Box::pin(crate::apns::ApnsClient::with_reserve(&app, &config, 0)).await?;
        if let Err(e) = client.probe().await {
            events::emit(events::ApnsProbeFailed {
                app: &app,
                error: &e,
            });
        }
    }
    // The first connection and declaration happen before the tree: a queue that
    // exists with other arguments is a configuration error (exit 2), not
    // something a restart can fix.
    let first = connect(&config, &connection_name(&config)).await?;
    let topology = Arc::new(Topology::from_config(&config));
    let declared = amqp::declare(&first, &topology).await?;
    let feeds = feeds(&config, &topology, &declared);
    for feed in feeds.iter().filter(|f| f.retired) {
        events::emit(events::RetiredShard {
            queue: &feed.queue,
            shards: config.shards,
            consumed: true,
        });
    }

    let policy = crate::outcome::RetryPolicy {
        tiers: config.retry_delays.len(),
        max_attempts: config.max_attempts,
    };
    let max_hold = config.max_hold;
    let parts = Parts {
        config: Arc::new(config),
        topology,
        dispatcher: Arc::new(Dispatcher::new(apns.clone(), policy, max_hold)),
        apns,
        apps_dir,
        unsettled: Arc::new(amqp::Unsettled::default()),
        first_connection: Arc::new(std::sync::Mutex::new(Some(first))),
        next_node: Arc::new(AtomicUsize::new(0)),
        current: watch::channel(None).0,
        readiness,
        feeds: Arc::from(feeds),
    };
    let root = SupervisorSpec {
        name: "misiva".into(),
        strategy: Strategy::OneForOne,
        intensity: Intensity {
            max_restarts: 3,
            period: Duration::from_secs(60),
        },
        backoff: Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(5),
        },
        children: vec![
            {
                let parts = parts.clone();
                ChildSpec::new(
                    "apps",
                    Restart::Permanent,
                    Shutdown::Graceful(Duration::from_secs(5)),
                    move |ctx| apps_child(parts.clone(), ctx),
                )
            },
            app_clients(parts.apns.clone()),
            amqp_tree(&parts).into_child(Restart::Permanent, Shutdown::Graceful(parts.stop_time())),
        ],
    };
    // Tells the root supervisor to stop; it stops its children in reverse order.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (supervisor, _handle) = Supervisor::new(root);
    let tree = tokio::spawn(supervisor.run(stop_rx));
    tokio::pin!(tree);
    events::emit(events::WorkerRunning {
        consumers: parts.config.consumers,
        shards: parts.config.shards,
        queue: &parts.config.queue,
    });

    let result = tokio::select! {
        signal = shutdown_signal() => {
            events::emit(events::Stopping { signal });
            parts.readiness.set_stopping();
            let _ = stop_tx.send(true);
            (&mut tree).await
        }
        result = &mut tree => result,
    };
    events::emit(events::WorkerStopped);
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::GaveUp(e)),
        Err(join) => Err(RunError::GaveUp(ChildError::Panicked(join.to_string()))),
    }
}

/// Reads `MISIVA_APPS_DIR` once before the tree starts: a directory that
/// cannot be read, or an app defined both there and in the configuration,
/// is a configuration error (exit 2). A bad app file is not: it is
/// reported, and the other apps run.
fn first_scan(
    dir: &std::path::Path,
    apns: &Apns,
) -> Result<Arc<std::sync::Mutex<DirWatch>>, RunError> {
    let unreadable = |source| RunError::AppsDir {
        dir: dir.display().to_string(),
        source,
    };
    for file in crate::config::app_files(dir).map_err(unreadable)? {
        let app = crate::config::app_of_file(&file);
        if apns.is_fixed(&app) {
            return Err(RunError::AppTwice {
                app,
                file: file.display().to_string(),
            });
        }
    }
    let mut state = DirWatch::new(dir.to_owned(), apns.clone());
    state.rescan().map_err(unreadable)?;
    Ok(Arc::new(std::sync::Mutex::new(state)))
}

/// The apps child: passes over `MISIVA_APPS_DIR` (on inotify's word, on
/// SIGHUP, and every [`RESCAN_EVERY`]). Without a directory it only keeps
/// SIGHUP from ending the process.
async fn apps_child(parts: Parts, mut ctx: ChildContext) -> Result<(), ChildError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (nudge_tx, mut nudge) = tokio::sync::mpsc::channel(1);
    let _inotify = parts.apps_dir.as_ref().and_then(|state| {
        let dir = lock(state).dir().to_owned();
        crate::apps::watch::watch(&dir, nudge_tx)
    });
    let mut hangup = signal(SignalKind::hangup()).map_err(ChildError::failed)?;
    ctx.ready();
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ctx.stopped() => return Ok(()),
            _ = rescan.tick() => pass(parts.apps_dir.as_ref()).await?,
            Some(()) = nudge.recv() => {
                // Writers often touch a file several times in a row (write,
                // then rename); one pass after they settle sees the result.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while nudge.try_recv().is_ok() {}
                pass(parts.apps_dir.as_ref()).await?;
            }
            Some(()) = hangup.recv() => pass(parts.apps_dir.as_ref()).await?,
        }
    }
}

/// The supervisor of the apps' clients (OTP's `simple_one_for_one`): no
/// static children; each app's first job starts a child holding its client
/// (`apns::registry`), which ends after `MISIVA_APP_IDLE` without a job. It
/// hands its handle to the registry each time it starts. It stops after the
/// consumers, so that their last jobs still have their clients.
fn app_clients(apns: Apns) -> ChildSpec {
    let spec = SupervisorSpec {
        name: "app-clients".into(),
        strategy: Strategy::OneForOne,
        // A client's child ends on a panic only; many apps may share a bad
        // minute without taking the others down.
        intensity: Intensity {
            max_restarts: 50,
            period: Duration::from_secs(60),
        },
        backoff: Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
        children: Vec::new(),
    };
    ChildSpec::new(
        "app-clients",
        Restart::Permanent,
        Shutdown::Graceful(Duration::from_secs(5)),
        move |mut ctx| {
            let (supervisor, handle) = Supervisor::new(spec.clone());
            let apns = apns.clone();
            async move {
                apns.attach(handle);
                ctx.ready();
                supervisor.run(ctx.stop_signal()).await
            }
        },
    )
}

/// One pass over the apps directory, off the runtime's threads: with
/// thousands of files it is thousands of `stat` calls.
async fn pass(state: Option<&Arc<std::sync::Mutex<DirWatch>>>) -> Result<(), ChildError> {
    let Some(state) = state.cloned() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || {
        // An unreadable directory is reported by the pass and changes nothing.
        let _ = lock(&state).rescan();
    })
    .await
    .map_err(|e| ChildError::failed(format!("the apps directory pass failed: {e}")))
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name operators (and the fault tests) see in the broker's connection list.
fn connection_name(config: &Config) -> String {
    format!("misiva worker {} pid {}", config.queue, std::process::id())
}

/// What the tree's children share.
#[derive(Clone)]
struct Parts {
    config: Arc<Config>,
    topology: Arc<Topology>,
    dispatcher: Arc<Dispatcher>,
    /// The apps, shared with the dispatcher.
    apns: Apns,
    /// `MISIVA_APPS_DIR`'s state between passes, kept across the apps
    /// child's restarts.
    apps_dir: Option<Arc<std::sync::Mutex<DirWatch>>>,
    unsettled: Arc<amqp::Unsettled>,
    /// The connection made (and used to declare) before the tree started; the
    /// connection child's first run takes it instead of connecting again.
    first_connection: Arc<std::sync::Mutex<Option<Broker>>>,
    /// The node of `MISIVA_AMQP_URL` a reconnection tries first: the one after
    /// the node whose connection was lost.
    next_node: Arc<AtomicUsize>,
    /// The live connection, published by the connection child for the
    /// consumers; `None` while there is none.
    current: watch::Sender<Option<Broker>>,
    /// What `/readyz` reports.
    readiness: Arc<Readiness>,
    /// The consumer children's queues, one entry per child.
    feeds: Arc<[Feed]>,
}

/// The queue one consumer child consumes.
#[derive(Debug, Clone)]
struct Feed {
    queue: Arc<str>,
    lane: Lane,
    /// A shard beyond `MISIVA_SHARDS`: consumed while it exists, and not
    /// needed for readiness.
    retired: bool,
    prefetch: u16,
}

/// Every replica consumes every shard (CONTRACT §6): `MISIVA_CONSUMERS`
/// consumers for each configured shard, `MISIVA_URGENT_CONSUMERS` for the
/// urgent lane, one for each retired shard. The
/// prefetch is shared out among the shards, so that a replica holds about
/// as many deliveries with N shards as with one.
fn feeds(config: &Config, topology: &Topology, declared: &amqp::Declared) -> Vec<Feed> {
    let shards = topology.shards.len().max(1);
    let per_shard = u16::try_from(usize::from(config.prefetch).div_ceil(shards)).unwrap_or(1);
    let mut feeds = Vec::new();
    for _ in 0..config.consumers {
        for queue in &topology.shards {
            feeds.push(Feed {
                queue: Arc::from(queue.as_str()),
                lane: Lane::Normal,
                retired: false,
                prefetch: per_shard,
            });
        }
    }
    // The urgent lane's own consumers and prefetch (CONTRACT §9).
    let urgent: Arc<str> = Arc::from(topology.urgent_queue.as_str());
    for _ in 0..config.urgent_consumers {
        feeds.push(Feed {
            queue: urgent.clone(),
            lane: Lane::Urgent,
            retired: false,
            prefetch: config.urgent_prefetch,
        });
    }
    for queue in &declared.retired {
        feeds.push(Feed {
            queue: Arc::from(queue.as_str()),
            lane: Lane::Normal,
            retired: true,
            prefetch: per_shard,
        });
    }
    feeds
}

impl Parts {
    /// How long the consumers may take to stop: the grace, plus time to close.
    fn stop_time(&self) -> Duration {
        self.config.shutdown_grace + Duration::from_secs(5)
    }
}

fn restart_policy(config: &Config) -> (Intensity, Backoff) {
    let (max_restarts, period) = config.restart_intensity;
    (
        // A broker restart takes ~10 s; with the default ten restarts a minute
        // and the backoff below, the subtree rides out ~30 s of outage before
        // it gives up and escalates.
        Intensity {
            max_restarts,
            period,
        },
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
        },
    )
}

fn amqp_tree(parts: &Parts) -> SupervisorSpec {
    let (intensity, backoff) = restart_policy(&parts.config);
    let connection = {
        let parts = parts.clone();
        ChildSpec::new(
            "connection",
            Restart::Permanent,
            Shutdown::Graceful(Duration::from_secs(5)),
            move |ctx| connection_child(parts.clone(), ctx),
        )
    };
    let consumers: Vec<ChildSpec> = (0..parts.feeds.len())
        .map(|index| {
            let parts = parts.clone();
            // A retired shard's consumer ends for good when its queue is gone.
            let restart = if parts.feeds[index].retired {
                Restart::Transient
            } else {
                Restart::Permanent
            };
            ChildSpec::new(
                format!("consumer-{index}"),
                restart,
                Shutdown::Graceful(parts.stop_time()),
                move |ctx| consumer_child(parts.clone(), index, ctx),
            )
        })
        .collect();
    let consumers = SupervisorSpec {
        name: "consumers".into(),
        strategy: Strategy::OneForOne,
        intensity,
        backoff,
        children: consumers,
    };
    SupervisorSpec {
        name: "amqp".into(),
        strategy: Strategy::RestForOne,
        intensity,
        backoff,
        children: vec![
            connection,
            consumers.into_child(Restart::Permanent, Shutdown::Graceful(parts.stop_time())),
        ],
    }
}

/// Owns the broker connection: connects (declaring the topology again, as a
/// restarted broker may have lost nothing but a new one would have nothing),
/// publishes it, and fails when it is lost so that `rest_for_one` restarts the
/// consumers after it. On stop it closes the connection, after the consumers
/// (stopped first, in reverse order) closed their channels.
async fn connection_child(parts: Parts, mut ctx: ChildContext) -> Result<(), ChildError> {
    let mut again = false;
    let taken = parts
        .first_connection
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let broker = match taken {
        Some(broker) => broker,
        None => {
            again = true;
            let broker = Broker::connect_from(
                &parts.config.amqp_url,
                &connection_name(&parts.config),
                parts.next_node.load(Ordering::Relaxed),
            )
            .await
            .map_err(ChildError::failed)?;
            amqp::declare(&broker, &parts.topology)
                .await
                .map_err(ChildError::failed)?;
            // Retired shards were found at start; the shard count does not
            // change without a restart.
            broker
        }
    };
    parts.current.send_replace(Some(broker.clone()));
    parts.readiness.set_connected(true);
    events::emit(if again {
        events::BrokerLink::Reconnected
    } else {
        events::BrokerLink::Connected
    });
    ctx.ready();
    // lapin records `connection.blocked` in the connection's status but tells
    // no one; a look every second is enough for a gauge and an alert.
    let mut blocked = false;
    let mut look = tokio::time::interval(std::time::Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            _ = ctx.stopped() => {
                broker.close().await;
                break Ok(());
            }
            _ = broker.lost() => {
                parts.next_node.store(broker.node() + 1, Ordering::Relaxed);
                break Err(ChildError::failed("the RabbitMQ connection was lost"));
            }
            _ = look.tick() => {
                if broker.is_blocked() != blocked {
                    blocked = !blocked;
                    events::emit(events::BrokerBlocked { blocked });
                }
            }
        }
    };
    parts.readiness.set_connected(false);
    events::emit(events::BrokerLink::Lost);
    parts.current.send_replace(None);
    result
}

async fn consumer_child(
    parts: Parts,
    index: usize,
    mut ctx: ChildContext,
) -> Result<(), ChildError> {
    // The connection child starts first and publishes the connection.
    let broker = parts
        .current
        .borrow()
        .clone()
        .filter(Broker::is_connected)
        .ok_or_else(|| ChildError::failed("no RabbitMQ connection"))?;
    let feed = parts.feeds[index].clone();
    let consumer = Consumer {
        index,
        queue: feed.queue.clone(),
        lane: feed.lane,
        prefetch: feed.prefetch,
        topology: parts.topology.clone(),
        dispatcher: parts.dispatcher.clone(),
        max_deliveries: parts.config.max_deliveries,
        unsettled: parts.unsettled.clone(),
    };
    let stop = ctx.stop_signal();
    // Counted as consuming from `ready` until this child ends, however it ends.
    let mut consuming = None;
    let readiness = parts.readiness.clone();
    let on_ready = || {
        consuming = Some(readiness.consuming(feed.queue.clone(), feed.lane, !feed.retired));
        ctx.ready();
    };
    match consumer
        .run(&broker, stop, parts.config.shutdown_grace, on_ready)
        .await
    {
        Ok(()) => Ok(()),
        // The retired shard was deleted: its consumer's work is done.
        Err(failed) if feed.retired && failed.queue_not_found() => {
            events::emit(events::RetiredShard {
                queue: &feed.queue,
                shards: parts.config.shards,
                consumed: false,
            });
            Ok(())
        }
        Err(failed) => Err(ChildError::failed(failed)),
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
