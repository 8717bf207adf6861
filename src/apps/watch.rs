//! Watching `MISIVA_APPS_DIR` (CONTRACT §8): each `<app>.toml` is an app,
//! added, replaced or removed in the registry (`apns::Apns`) as its file
//! comes, changes or goes.
//!
//! A pass stats every app file and every file it names (key, certificate,
//! password file, CA); only what changed is read again. A changed stat whose
//! contents are the same (a Kubernetes volume swaps its `..data` symlink for
//! every file at once) changes nothing, so an update of one app's Secret key
//! does not restart every other app's connections. A file that does not
//! read, or whose credentials do not load, leaves its app as it was (or
//! absent), and is reported once per change, not once per pass.
//!
//! Passes run when inotify (`notify`) says the directory changed, on SIGHUP,
//! and every [`RESCAN_EVERY`] whatever happens: inotify does not see a key
//! file outside the directory change, and may miss events under pressure.

use crate::apns::{Apns, AppSource, check_credentials};
use crate::config::{app_files, app_of_file, read_app_file};
use crate::events;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The safety net's period: a change is applied within this long even when
/// no inotify event came (the contract allows 5 s).
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// What identifies a file's version without reading it: device, inode,
/// size and modification time (of the file a symlink points to).
type Stamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// What the last pass knew of one app file.
#[derive(Debug)]
struct Known {
    app: String,
    stamp: Option<Stamp>,
    /// The files it names, with their stamps then.
    deps: Vec<(PathBuf, Option<Stamp>)>,
    /// A hash of the contents of the file and the files it names, when they
    /// last loaded: the same contents change nothing.
    digest: Option<u64>,
    /// Whether the registry holds an app from this file.
    loaded: bool,
}

/// The apps directory's state between passes.
#[derive(Debug)]
pub struct DirWatch {
    dir: PathBuf,
    apns: Apns,
    files: HashMap<PathBuf, Known>,
    /// Whether the last pass could not read the directory (reported once).
    unreadable: bool,
}

impl DirWatch {
    pub fn new(dir: PathBuf, apns: Apns) -> DirWatch {
        DirWatch {
            dir,
            apns,
            files: HashMap::new(),
            unreadable: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One pass over the directory. `Err` only when the directory itself
    /// cannot be read; then every app keeps its configuration.
    pub fn rescan(&mut self) -> Result<(), std::io::Error> {
        let files = match app_files(&self.dir) {
            Ok(files) => {
                self.unreadable = false;
                files
            }
            Err(error) => {
                if !self.unreadable {
                    events::emit(events::AppsDirUnreadable {
                        dir: &self.dir,
                        error: &error,
                    });
                    self.unreadable = true;
                }
                return Err(error);
            }
        };
        let present: HashSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|file| !present.contains(file))
            .cloned()
            .collect();
        for file in gone {
            if let Some(known) = self.files.remove(&file) {
                // Forgets its problem too; an app never loaded is not there.
                if self.apns.remove(&known.app) {
                    events::emit(events::AppRemoved {
                        app: &known.app,
                        file: &file,
                    });
                }
            }
        }
        for file in &files {
            let now = stamp(file);
            if let Some(known) = self.files.get(file)
                && known.stamp == now
                && known.deps.iter().all(|(dep, then)| stamp(dep) == *then)
            {
                continue;
            }
            self.load(file, now);
        }
        Ok(())
    }

    /// Reads one changed file and applies it, or reports why not.
    fn load(&mut self, file: &Path, now: Option<Stamp>) {
        let previous = self.files.remove(file);
        let was_loaded = previous.as_ref().is_some_and(|k| k.loaded);
        let mut known = Known {
            app: app_of_file(file),
            stamp: now,
            deps: Vec::new(),
            digest: previous.as_ref().and_then(|k| k.digest),
            loaded: was_loaded,
        };
        let read = read_app_file(&self.dir, file);
        if let Ok(app) = &read {
            known.deps = app.deps.iter().map(|d| (d.clone(), stamp(d))).collect();
        }
        let last_digest = known.digest;
        let outcome = read.and_then(|app| {
            let digest = digest(file, &app.deps);
            if was_loaded && last_digest == Some(digest) {
                return Ok(None);
            }
            if self.apns.is_fixed(&app.name) {
                return Err(format!(
                    "app {:?} is also defined in the configuration file or the environment, which fix it",
                    app.name
                ));
            }
            let facts = check_credentials(&app.name, &app.config).map_err(|e| e.to_string())?;
            Ok(Some((app, facts, digest)))
        });
        match outcome {
            // The contents it last loaded with: a problem since is gone.
            Ok(None) => self.apns.clear_error(&known.app),
            Ok(Some((app, facts, digest))) => {
                let (auth, key_id, expiry) =
                    (facts.auth, facts.key_id.clone(), facts.certificate_expiry);
                if let Some(change) = self.apns.upsert(&app.name, app.config, facts) {
                    known.digest = Some(digest);
                    known.loaded = true;
                    events::emit(events::AppLoaded {
                        app: &app.name,
                        source: AppSource::Dir.label(),
                        file: Some(file),
                        change: change.label(),
                        auth,
                        key_id: key_id.as_deref(),
                        certificate_expiry: expiry,
                    });
                }
            }
            Err(reason) => {
                events::emit(events::AppConfigRejected {
                    app: &known.app,
                    file,
                    reason: &reason,
                    kept: was_loaded,
                });
                self.apns.note_error(&known.app, &reason);
            }
        }
        self.files.insert(file.to_owned(), known);
    }
}

/// A hash of the contents of `file` and `deps` (a file that cannot be read
/// hashes as such): equal contents, equal digests.
fn digest(file: &Path, deps: &[PathBuf]) -> u64 {
    let mut hash = std::hash::DefaultHasher::new();
    for path in std::iter::once(file).chain(deps.iter().map(PathBuf::as_path)) {
        hash.write(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                hash.write_u8(1);
                hash.write(&bytes);
            }
            Err(_) => hash.write_u8(0),
        }
    }
    hash.finish()
}

/// Starts inotify on `dir`: each event nudges a pass (a nudge already
/// waiting is enough). `None` when it cannot start; the periodic pass
/// still runs.
pub fn watch(
    dir: &Path,
    nudge: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let started = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = nudge.try_send(());
    })
    .and_then(|mut watcher| {
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    match started {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            events::emit(events::AppsWatchFailed { dir, error: &error });
            None
        }
    }
}
