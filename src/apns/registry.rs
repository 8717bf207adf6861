//! The apps the worker sends for, by name (CONTRACT §8). Apps from the
//! configuration file and the environment are fixed for the process's life;
//! apps from `MISIVA_APPS_DIR` are added, replaced and removed while it runs
//! (by `apps::watch`). Either kind holds only its configuration until its
//! first job: the client (its pool of connection actors, its provider token
//! and its TLS configuration) is started then, and dropped again after
//! `MISIVA_APP_IDLE` without a job, so that thousands of configured apps cost
//! no connection and little memory.
//!
//! A client is shared by the jobs using it: replacing or removing an app
//! only unhooks it from the registry. Jobs already holding it finish on it,
//! and its connections close once the last of them lets go; the next job
//! starts a client from the new configuration. So a rotation never cuts a
//! request short, and never sends one twice.

use super::{ApnsClient, CredentialFacts, SetupError, check_credentials};
use crate::config::{AppConfig, Config};
use crate::events;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

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
    /// The client of this configuration, started by the first job that
    /// needs it. Idle, the cell is swapped for an empty one; jobs that
    /// cloned the old cell's client keep it until they finish.
    client: Mutex<Arc<OnceCell<ApnsClient>>>,
    /// When a job last asked for the client, in milliseconds since the
    /// registry began (an atomic store per job, no lock).
    last_used: AtomicU64,
}

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
    urgent_reserve: u8,
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
    /// kept for the urgent lane.
    pub fn new(urgent_reserve: u8) -> Apns {
        Apns {
            inner: Arc::new(Registry {
                apps: RwLock::new(HashMap::new()),
                errors: Mutex::new(HashMap::new()),
                urgent_reserve,
                began: Instant::now(),
            }),
        }
    }

    /// The apps of the configuration file and the environment, each client
    /// started at once (their credentials are checked here: an error is a
    /// configuration error, exit 2).
    pub async fn from_config(config: &Config) -> Result<Apns, SetupError> {
        let apns = Apns::new(config.urgent_reserve);
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
            let client =
                ApnsClient::with_reserve(name, &slot.config, config.urgent_reserve).await?;
            let cell = lock(&slot.client).clone();
            let _ = cell.set(client);
            write(&apns.inner.apps).insert(name.clone(), slot);
        }
        Ok(apns)
    }

    /// The client of `app`, started now if it has none: `None` when no such
    /// app is configured, `Some(Err)` when its credentials no longer load
    /// (changed on disk since they were checked).
    pub async fn client(&self, app: &str) -> Option<Result<ApnsClient, SetupError>> {
        let slot = read(&self.inner.apps).get(app).cloned()?;
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        let cell = lock(&slot.client).clone();
        if let Some(client) = cell.get() {
            return Some(Ok(client.clone()));
        }
        // Boxed: a client starts once per app and idle period, and its
        // start would otherwise add to every delivery's future.
        let started = Box::pin(cell.get_or_try_init(|| async {
            let client =
                ApnsClient::with_reserve(app, &slot.config, self.inner.urgent_reserve).await;
            if client.is_ok() {
                events::emit(events::AppStarted { app });
            }
            client
        }))
        .await;
        Some(started.cloned())
    }

    /// The apps whose clients are started, for the probe at start.
    pub fn started(&self) -> Vec<(String, ApnsClient)> {
        read(&self.inner.apps)
            .iter()
            .filter_map(|(name, slot)| {
                lock(&slot.client)
                    .get()
                    .map(|client| (name.clone(), client.clone()))
            })
            .collect()
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
        let change = if previous.is_some() {
            Upsert::Replaced
        } else {
            Upsert::Added
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
            apps.remove(app);
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

    /// Drops the clients of apps without a job for `idle`: their connections
    /// close once the jobs still holding them finish. The names of the
    /// apps closed.
    pub fn close_idle(&self, idle: Duration) -> Vec<String> {
        let now = self.now_ms();
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut closed = Vec::new();
        for (name, slot) in read(&self.inner.apps).iter() {
            if now.saturating_sub(slot.last_used.load(Ordering::Relaxed)) < idle {
                continue;
            }
            let mut cell = lock(&slot.client);
            if cell.initialized() {
                *cell = Arc::new(OnceCell::new());
                closed.push(name.clone());
            }
        }
        closed
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

    /// The configuration of `app`, for the watcher's comparisons.
    pub fn config_of(&self, app: &str) -> Option<(AppSource, AppConfig)> {
        read(&self.inner.apps)
            .get(app)
            .map(|slot| (slot.source, slot.config.clone()))
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
            client: Mutex::new(Arc::new(OnceCell::new())),
            last_used: AtomicU64::new(0),
        }
    }
}

fn rfc3339(seconds: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}
