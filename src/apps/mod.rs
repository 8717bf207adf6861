//! `misiva apps check DIR`: a directory of app files (CONTRACT §8) checked
//! offline, as the worker would load it. Every file is read, and every app's
//! key or certificate loaded, so that one run lists every problem; the
//! exit code is 0 when there is none and 2 otherwise. Nothing printed quotes
//! a value from a file: problems name the file, the key and the reason.

pub mod watch;

use crate::cli::AppsCommand;
use crate::config::{Auth, read_apps_dir};
use std::path::Path;

pub fn run(command: AppsCommand) -> i32 {
    match command {
        AppsCommand::Check { dir } => check(&dir),
    }
}

fn check(dir: &Path) -> i32 {
    let read = match read_apps_dir(dir) {
        Ok(read) => read,
        Err(e) => {
            eprintln!(
                "misiva apps check: cannot read the directory {}: {}",
                dir.display(),
                e.kind()
            );
            return 2;
        }
    };
    let mut problems: Vec<(String, String)> = read
        .problems
        .iter()
        .map(|p| (p.file.display().to_string(), p.problem.clone()))
        .collect();
    let mut ok = 0;
    for (name, (file, app)) in &read.apps {
        match crate::apns::check_credentials(name, app) {
            Ok(_) => {
                ok += 1;
                let auth = match &app.auth {
                    Auth::Token { key_id, .. } => format!("token auth, key {key_id}"),
                    Auth::Certificate { .. } => "certificate auth".to_owned(),
                };
                println!("ok       {name}  {auth}  {}", app.endpoint.authority());
            }
            Err(e) => problems.push((file.display().to_string(), e.to_string())),
        }
    }
    problems.sort();
    for (file, problem) in &problems {
        println!("problem  {file}: {problem}");
    }
    eprintln!(
        "misiva apps check: {ok} app(s) ok, {} problem(s) in {}",
        problems.len(),
        dir.display()
    );
    if problems.is_empty() { 0 } else { 2 }
}
