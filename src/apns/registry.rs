//! The apps the worker sends for, by name (CONTRACT §8). Apps from the
//! configuration file and the environment are fixed for the process's life;
//! apps from `MISIVA_APPS_DIR` are added, replaced and removed while it runs
//! (by `apps::watch`). Either kind holds only its configuration until its
//! first job: the client (its pool of connection actors, its provider token
//! and its TLS configuration) is started then, as a dynamic child of the
//! `app-clients` supervisor (OTP's `simple_one_for_one`), which ends after
//! `MISIVA_APP_IDLE` without a job and drops the client. So thousands of
//! configured apps cost no connection and little memory, and a client that
//! panics is started again by its supervisor.
//!
//! A client is shared by the jobs using it: replacing or removing an app
//! only ends its child, which unhooks the client. Jobs already holding it
//! finish on it, and its connections close once the last of them lets go;
//! the next job starts a child from the new configuration. So a rotation
//! never cuts a request short, and never sends one twice.

use super::{ApnsClient, CredentialFacts, SetupError, check_credentials};
use crate::config::{AppConfig, Config};
use crate::events;
use crate::supervisor::{ChildContext, ChildError, ChildSpec, Restart, Shutdown, SupervisorHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where an app's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSource {
    /// The configuration file or the environment: fixed for the process's life.
    Config,
    /// A file of `MISIVA_APPS_DIR`.
    Dir,
}

impl AppSource {
    pub fn label(self) -> &'static str {
        match self {
            AppSource::Config => "config",
            AppSource::Dir => "dir",
        }
    }
}

/// One app: its configuration, and its client while it has one.
#[derive(Debug)]
struct Slot {
    source: AppSource,
    config: AppConfig,
    facts: CredentialFacts,
    /// Where the client of this configuration is, published by its child.
    phase: watch::Sender<Phase>,
    /// Turns true when this configuration is replaced or removed: its
    /// child then ends.
    retired: watch::Sender<bool>,
    /// When a job last asked for the client, in milliseconds since the
    /// registry began (an atomic store per job, no lock).
    last_used: AtomicU64,
}

/// Where an app's client is.
#[derive(Debug, Clone)]
enum Phase {
    /// None: the next job starts one.
    Idle,
    /// A job asked its supervisor to start the app's child.
    Starting,
    Running(ApnsClient),
    /// The last start failed (its credentials no longer load): the job
    /// that waited for it, and the next one, try again.
    Failed(String),
}

/// Why an app's client could not be had now: its jobs go to a retry tier.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// What `GET /apps` shows of one app: never a secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppView {
    pub name: String,
    pub source: &'static str,
    pub auth: &'static str,
    pub key_id: Option<String>,
    /// The client certificate's `notAfter` (RFC 3339), certificate auth only.
    pub certificate_expiry: Option<String>,
    /// Connections open (ready) now; 0 while the app is idle.
    pub connections_open: i64,
    /// The last problem with the app's file, until the file is good again.
    pub last_error: Option<String>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Added,
    Replaced,
}

impl Upsert {
    /// The `change` of its log line and metric.
    pub fn label(self) -> &'static str {
        match self {
            Upsert::Added => "added",
            Upsert::Replaced => "changed",
        }
    }
}

/// The registry of apps, shared by the dispatcher, the watcher and `/apps`.
#[derive(Debug, Clone)]
pub struct Apns {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    apps: RwLock<HashMap<String, Arc<Slot>>>,
    /// The last problem with each app file still wrong, by app name.
    errors: Mutex<HashMap<String, String>>,
    /// The supervisor of the apps' clients, once the tree runs. Without
    /// one (a library user, the pool tests) a client is started in place
    /// and kept until its app changes.
    supervisor: Mutex<Option<SupervisorHandle>>,
    urgent_reserve: u8,
    /// An app's child ends after this long without a job.
    idle: Duration,
    began: Instant,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

impl Apns {
    /// No apps yet; `urgent_reserve` per cent of each client's places are
    /// kept for the urgent lane; a client ends after `idle` without a job.
    pub fn new(urgent_reserve: u8, idle: Duration) -> Apns {
        Apns {
            inner: Arc::new(Registry {
                apps: RwLock::new(HashMap::new()),
                errors: Mutex::new(HashMap::new()),
                supervisor: Mutex::new(None),
                urgent_reserve,
                idle,
                began: Instant::now(),
            }),
        }
    }

    /// The apps of the configuration file and the environment. Their
    /// credentials are checked here (an error is a configuration error,
    /// exit 2); their clients start with their first jobs.
    pub async fn from_config(config: &Config) -> Result<Apns, SetupError> {
        let apns = Apns::new(config.urgent_reserve, config.app_idle);
        for (name, app) in &config.apps {
            let facts = check_credentials(name, app)?;
            events::emit(events::AppLoaded {
                app: name,
                source: AppSource::Config.label(),
                file: None,
                change: "added",
                auth: facts.auth,
                key_id: facts.key_id.as_deref(),
                certificate_expiry: facts.certificate_expiry,
            });
            let slot = Arc::new(Slot::new(AppSource::Config, app.clone(), facts));
            write(&apns.inner.apps).insert(name.clone(), slot);
        }
        Ok(apns)
    }

    /// Hands the registry the supervisor its apps' clients start under
    /// (again after that supervisor restarted).
    pub fn attach(&self, supervisor: SupervisorHandle) {
        *lock(&self.inner.supervisor) = Some(supervisor);
    }

    /// The fixed apps' configurations, for the endpoint check at start.
    pub fn fixed(&self) -> Vec<(String, AppConfig)> {
        read(&self.inner.apps)
            .iter()
            .filter(|(_, slot)| slot.source == AppSource::Config)
            .map(|(name, slot)| (name.clone(), slot.config.clone()))
            .collect()
    }

    /// The client of `app`, started now if it has none: `None` when no such
    /// app is configured, `Some(Err)` when it cannot start now (its
    /// credentials changed on disk since they were checked).
    pub async fn client(&self, app: &str) -> Option<Result<ApnsClient, Unavailable>> {
        let slot = read(&self.inner.apps).get(app).cloned()?;
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        if let Phase::Running(client) = &*slot.phase.borrow() {
            return Some(Ok(client.clone()));
        }
        // Boxed: a client starts once per app and idle period, and its
        // start would otherwise add to every delivery's future.
        Some(Box::pin(self.start(app, slot)).await)
    }

    /// Starts `slot`'s client (or waits for the start another job asked
    /// for), and returns it. A client that ends while it starts (its app
    /// replaced, its supervisor stopping) is started again from the app's
    /// current configuration, a few times at most.
    async fn start(&self, app: &str, mut slot: Arc<Slot>) -> Result<ApnsClient, Unavailable> {
        for _ in 0..3 {
            if *slot.retired.borrow() {
                slot = read(&self.inner.apps)
                    .get(app)
                    .cloned()
                    .ok_or_else(|| Unavailable("the app was removed".into()))?;
            }
            let mut phase = slot.phase.subscribe();
            let claimed = slot.phase.send_if_modified(|phase| {
                let start = matches!(phase, Phase::Idle | Phase::Failed(_));
                if start {
                    *phase = Phase::Starting;
                }
                start
            });
            if claimed {
                self.start_child(app, &slot).await;
            }
            loop {
                match &*phase.borrow_and_update() {
                    Phase::Running(client) => return Ok(client.clone()),
                    Phase::Failed(why) => return Err(Unavailable(why.clone())),
                    Phase::Starting => {}
                    // It ended before this job got it: start it again.
                    Phase::Idle => break,
                }
                if phase.changed().await.is_err() {
                    break;
                }
            }
        }
        Err(Unavailable("the app's client ended as it started".into()))
    }

    /// Starts the child of `slot`'s client under the apps' supervisor, or
    /// the client in place when there is no supervisor.
    async fn start_child(&self, app: &str, slot: &Arc<Slot>) {
        let supervisor = lock(&self.inner.supervisor).clone();
        match supervisor {
            Some(supervisor) => {
                let child = app_child(self.clone(), app.to_owned(), slot.clone());
                if let Err(e) = supervisor.start_child(child).await {
                    slot.phase.send_replace(Phase::Failed(format!(
                        "the app's client did not start: {e}"
                    )));
                }
            }
            None => {
                let started = self.new_client(app, slot).await;
                slot.phase.send_replace(match started {
                    Ok(client) => Phase::Running(client),
                    Err(e) => Phase::Failed(e.to_string()),
                });
            }
        }
    }

    /// A new client of `slot`'s configuration.
    async fn new_client(&self, app: &str, slot: &Slot) -> Result<ApnsClient, SetupError> {
        ApnsClient::with_reserve(app, &slot.config, self.inner.urgent_reserve).await
    }

    /// How long `slot` has gone without a job.
    fn idle_for(&self, slot: &Slot) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(slot.last_used.load(Ordering::Relaxed)),
        )
    }

    /// Whether `app` is fixed by the configuration file or the environment.
    pub fn is_fixed(&self, app: &str) -> bool {
        read(&self.inner.apps)
            .get(app)
            .is_some_and(|slot| slot.source == AppSource::Config)
    }

    /// Adds a directory app, or replaces its configuration: the next job
    /// starts a client from the new one. Refused (`None`) for an app the
    /// configuration fixes.
    pub fn upsert(&self, app: &str, config: AppConfig, facts: CredentialFacts) -> Option<Upsert> {
        let mut apps = write(&self.inner.apps);
        let previous = apps.get(app);
        if previous.is_some_and(|slot| slot.source == AppSource::Config) {
            return None;
        }
        let change = match previous {
            Some(previous) => {
                previous.retired.send_replace(true);
                Upsert::Replaced
            }
            None => Upsert::Added,
        };
        apps.insert(
            app.to_owned(),
            Arc::new(Slot::new(AppSource::Dir, config, facts)),
        );
        lock(&self.inner.errors).remove(app);
        Some(change)
    }

    /// Removes a directory app: jobs that hold its client finish; later jobs
    /// for it are `unknown_app`. Apps the configuration fixes stay.
    pub fn remove(&self, app: &str) -> bool {
        let mut apps = write(&self.inner.apps);
        lock(&self.inner.errors).remove(app);
        if apps
            .get(app)
            .is_some_and(|slot| slot.source == AppSource::Dir)
        {
            // Its child ends, and its connections close once the jobs
            // holding the client finish.
            if let Some(slot) = apps.remove(app) {
                slot.retired.send_replace(true);
            }
            true
        } else {
            false
        }
    }

    /// Notes the last problem with `app`'s file, for `GET /apps`.
    pub fn note_error(&self, app: &str, problem: &str) {
        lock(&self.inner.errors).insert(app.to_owned(), crate::bounded::detail(problem));
    }

    /// Forgets the problem of an app whose file is good again or gone.
    pub fn clear_error(&self, app: &str) {
        lock(&self.inner.errors).remove(app);
    }

    /// Every app, by name, as `GET /apps` shows it.
    pub fn view(&self) -> Vec<AppView> {
        let errors = lock(&self.inner.errors).clone();
        let apps = read(&self.inner.apps);
        let mut view: Vec<AppView> = apps
            .iter()
            .map(|(name, slot)| AppView {
                name: name.clone(),
                source: slot.source.label(),
                auth: slot.facts.auth,
                key_id: slot.facts.key_id.clone(),
                certificate_expiry: slot.facts.certificate_expiry.and_then(rfc3339),
                connections_open: events::metrics().connections_ready(name),
                last_error: errors.get(name).cloned(),
            })
            .collect();
        // Apps whose file never loaded show too, with their problem.
        for (name, problem) in errors {
            if !apps.contains_key(&name) {
                view.push(AppView {
                    name,
                    source: AppSource::Dir.label(),
                    auth: "none",
                    key_id: None,
                    certificate_expiry: None,
                    connections_open: 0,
                    last_error: Some(problem),
                });
            }
        }
        view.sort_by(|a, b| a.name.cmp(&b.name));
        view
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.began.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Slot {
    fn new(source: AppSource, config: AppConfig, facts: CredentialFacts) -> Slot {
        Slot {
            source,
            config,
            facts,
            phase: watch::Sender::new(Phase::Idle),
            retired: watch::Sender::new(false),
            last_used: AtomicU64::new(0),
        }
    }
}

/// The child that holds `app`'s client: it starts the client, publishes it
/// to the app's jobs, and ends (unpublishing it) after `MISIVA_APP_IDLE`
/// without a job, when the app's configuration is replaced or removed, or
/// when its supervisor stops. Transient: a panic starts it again, a normal
/// end does not.
fn app_child(apns: Apns, app: String, slot: Arc<Slot>) -> ChildSpec {
    ChildSpec::new(
        format!("app-{app}"),
        Restart::Transient,
        Shutdown::Graceful(Duration::from_secs(1)),
        move |ctx| run_app(apns.clone(), app.clone(), slot.clone(), ctx),
    )
}

async fn run_app(
    apns: Apns,
    app: String,
    slot: Arc<Slot>,
    mut ctx: ChildContext,
) -> Result<(), ChildError> {
    let client = match apns.new_client(&app, &slot).await {
        Ok(client) => client,
        Err(e) => {
            // Not a crash: the credentials changed on disk, and the watcher
            // will say so; the jobs that wait go to a retry tier.
            slot.phase.send_replace(Phase::Failed(e.to_string()));
            ctx.ready();
            return Ok(());
        }
    };
    slot.phase.send_replace(Phase::Running(client));
    events::emit(events::AppStarted { app: &app });
    ctx.ready();
    let idle = apns.inner.idle;
    let check = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut retired = slot.retired.subscribe();
    loop {
        tokio::select! {
            () = ctx.stopped() => break,
            _ = retired.wait_for(|retired| *retired) => break,
            () = tokio::time::sleep(check) => {
                if apns.idle_for(&slot) >= idle {
                    events::emit(events::AppIdleClosed { app: &app, idle });
                    break;
                }
            }
        }
    }
    // Jobs holding the client finish on it; its connections close after them.
    slot.phase.send_replace(Phase::Idle);
    Ok(())
}

fn rfc3339(seconds: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}
