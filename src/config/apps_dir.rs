//! A directory of app files (CONTRACT §8): each `<name>.toml` defines the
//! app `<name>` with the keys of an `[apps.<name>]` section, its relative
//! paths relative to the directory. This reads and checks such a directory
//! once, keeping every problem rather than stopping at the first, so that
//! `misiva apps check` can list them all. Credentials are read and checked
//! by the caller (`apps.rs`), which knows the APNs side.

use super::file::{FileApp, app_config, describe_toml_error};
use super::{AppConfig, ConfigError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most bytes of an app name: it becomes a metric label and a log field.
pub const MAX_APP_NAME: usize = 64;

/// One problem with one file of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFileProblem {
    pub file: PathBuf,
    pub problem: String,
}

/// What a directory of app files defines, and what is wrong with it.
#[derive(Debug, Default)]
pub struct AppsDir {
    /// The apps whose files read and check, by name, with their files.
    pub apps: BTreeMap<String, (PathBuf, AppConfig)>,
    pub problems: Vec<AppFileProblem>,
}

/// An app name from a file name: letters, digits, `.`, `_` and `-`, at most
/// [`MAX_APP_NAME`] bytes.
pub fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_APP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads every `*.toml` file of `dir` (hidden entries, such as the
/// `..data` directory of a Kubernetes volume, are skipped; other files are
/// not app files). Fails only when the directory itself cannot be read.
pub fn read_apps_dir(dir: &Path) -> Result<AppsDir, std::io::Error> {
    let mut out = AppsDir::default();
    for file in app_files(dir)? {
        match read_app_file(dir, &file) {
            Ok(app) => {
                out.apps.insert(app.name, (file, app.config));
            }
            Err(problem) => out.problems.push(AppFileProblem { file, problem }),
        }
    }
    Ok(out)
}

/// The app files of `dir`, sorted: every `*.toml` entry that is not hidden
/// (a Kubernetes volume's `..data` and its timestamped directories are).
pub fn app_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".toml")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The app a file would define, from its name alone: the file stem when it
/// is a valid app name, else the stem cut to a label's length (for the
/// error's metric and log line).
pub fn app_of_file(file: &Path) -> String {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    crate::bounded::cut(stem, MAX_APP_NAME).to_owned()
}

/// One app file read and checked (its credentials not yet loaded).
#[derive(Debug, Clone)]
pub struct AppFile {
    pub name: String,
    pub config: AppConfig,
    /// The files it names (key or certificate, password file, CA), whose
    /// changes change the app as much as the file's own.
    pub deps: Vec<PathBuf>,
}

/// One app file: its name and its checked configuration, or what is wrong.
/// The message never quotes a value from the file (a password may be one).
pub fn read_app_file(dir: &Path, file: &Path) -> Result<AppFile, String> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !valid_app_name(stem) {
        return Err(format!(
            "the file name must be <app>.toml, the app's name 1 to {MAX_APP_NAME} letters, digits, '.', '_' or '-'"
        ));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {}", e.kind()))?;
    let mut raw: FileApp = toml::from_str(&text)
        .map_err(|e| format!("not valid: {}", describe_toml_error(&text, &e)))?;
    // Relative paths are relative to the directory, wherever the worker runs.
    for path in [
        &mut raw.ca_file,
        &mut raw.key_file,
        &mut raw.cert_file,
        &mut raw.cert_password_file,
    ]
    .into_iter()
    .flatten()
    {
        if path.is_relative() {
            *path = dir.join(&*path);
        }
    }
    let deps = [
        &raw.ca_file,
        &raw.key_file,
        &raw.cert_file,
        &raw.cert_password_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    let config = app_config(stem, raw).map_err(|e| match e {
        ConfigError::App { problem, .. } => problem,
        other => other.to_string(),
    })?;
    Ok(AppFile {
        name: stem.to_owned(),
        config,
        deps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_bounded_label_values() {
        for ok in [
            "default",
            "kiosk",
            "com.example.app",
            "a_b-c",
            &"a".repeat(64),
        ] {
            assert!(valid_app_name(ok), "{ok}");
        }
        for bad in ["", "has space", "é", "a/b", &"a".repeat(65), "x{y}"] {
            assert!(!valid_app_name(bad), "{bad}");
        }
    }
}
