//! Events of the apps directory (CONTRACT §8): apps loaded, replaced,
//! removed or refused, and app clients started and closed when idle.

use super::InternalEvent;
use super::registry::{AppChange, AppLabel, metrics};
use std::path::Path;
use std::time::Duration;

/// An app's configuration was loaded: at start (file or environment), or
/// from its file in the apps directory (`change`: `added` or `changed`).
/// Sets the certificate's expiry gauge.
#[derive(Debug)]
pub struct AppLoaded<'a> {
    pub app: &'a str,
    /// `config` or `dir`.
    pub source: &'static str,
    pub file: Option<&'a Path>,
    pub change: &'static str,
    /// `token` or `certificate`.
    pub auth: &'static str,
    pub key_id: Option<&'a str>,
    /// The client certificate's `notAfter`, seconds since the epoch.
    pub certificate_expiry: Option<i64>,
}

impl InternalEvent for AppLoaded<'_> {
    fn emit(self) {
        let m = metrics();
        m.set_apps([self.app]);
        let label = AppLabel {
            app: m.app(self.app),
        };
        if self.file.is_some() {
            m.app_changes
                .get_or_create(&AppChange {
                    app: label.app.clone(),
                    change: self.change,
                })
                .inc();
        }
        match self.certificate_expiry {
            Some(at) => {
                m.certificate_expiry.get_or_create(&label).set(at);
            }
            None => {
                m.certificate_expiry.remove(&label);
            }
        }
        tracing::info!(
            app = %self.app,
            source = self.source,
            file = self.file.map(|f| f.display().to_string()),
            change = self.change,
            auth = self.auth,
            key_id = self.key_id,
            certificate_expiry = self.certificate_expiry,
            "app loaded"
        );
    }
}

/// An app's file left the apps directory: the app stops after its
/// requests in flight.
#[derive(Debug)]
pub struct AppRemoved<'a> {
    pub app: &'a str,
    pub file: &'a Path,
}

impl InternalEvent for AppRemoved<'_> {
    fn emit(self) {
        let m = metrics();
        let app = m.app(self.app);
        m.app_changes
            .get_or_create(&AppChange {
                app: app.clone(),
                change: "removed",
            })
            .inc();
        m.certificate_expiry.remove(&AppLabel { app });
        tracing::info!(app = %self.app, file = %self.file.display(), "app removed: its file is gone");
    }
}

/// A file of the apps directory was refused: the app keeps its last good
/// configuration, or does not exist. `reason` never quotes a value from
/// the file (a password may be one).
#[derive(Debug)]
pub struct AppConfigRejected<'a> {
    /// The app the file would define (the file name, cut to a label's length).
    pub app: &'a str,
    pub file: &'a Path,
    pub reason: &'a str,
    /// Whether an earlier configuration of the app stays in use.
    pub kept: bool,
}

impl InternalEvent for AppConfigRejected<'_> {
    fn emit(self) {
        let m = metrics();
        m.set_apps([self.app]);
        m.app_config_errors
            .get_or_create(&AppLabel {
                app: m.app(self.app),
            })
            .inc();
        tracing::warn!(
            app = %self.app,
            file = %self.file.display(),
            reason = %self.reason,
            kept_last_good = self.kept,
            "app file refused"
        );
    }
}

/// The apps directory could not be read: every app keeps its configuration.
#[derive(Debug)]
pub struct AppsDirUnreadable<'a> {
    pub dir: &'a Path,
    pub error: &'a std::io::Error,
}

impl InternalEvent for AppsDirUnreadable<'_> {
    fn emit(self) {
        tracing::warn!(dir = %self.dir.display(), error = %self.error, "cannot read the apps directory; every app keeps its configuration");
    }
}

/// The apps directory's watcher could not start (the periodic rescan
/// still applies changes).
#[derive(Debug)]
pub struct AppsWatchFailed<'a> {
    pub dir: &'a Path,
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for AppsWatchFailed<'_> {
    fn emit(self) {
        tracing::warn!(dir = %self.dir.display(), error = %self.error, "cannot watch the apps directory; changes are seen by the periodic rescan only");
    }
}

/// An app's client started, for its first job since start or since idle.
#[derive(Debug)]
pub struct AppStarted<'a> {
    pub app: &'a str,
}

impl InternalEvent for AppStarted<'_> {
    fn emit(self) {
        tracing::info!(app = %self.app, "app client started");
    }
}

/// An app went `idle` without a job: its client is dropped, and its
/// connections close once the jobs still holding it finish.
#[derive(Debug)]
pub struct AppIdleClosed<'a> {
    pub app: &'a str,
    pub idle: Duration,
}

impl InternalEvent for AppIdleClosed<'_> {
    fn emit(self) {
        tracing::info!(app = %self.app, idle = ?self.idle, "app idle: closing its connections");
    }
}
