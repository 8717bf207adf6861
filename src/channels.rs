//! `misiva channels`: an app's broadcast channels on APNs' management
//! endpoint, from the command line (CONTRACT §7). Exit 0 on success, 1 when
//! APNs refused or could not be reached (its reason printed), 2 on bad input.

use crate::apns::manage::{ChannelManager, ManageError, Storage};
use crate::cli::{ChannelsCommand, ChannelsTarget};
use crate::config::Config;
use std::io::{IsTerminal, Write};

/// Runs one subcommand; returns the exit code.
pub async fn run(config: &Config, command: ChannelsCommand) -> i32 {
    let target = match &command {
        ChannelsCommand::Create { target, .. }
        | ChannelsCommand::List { target }
        | ChannelsCommand::Show { target, .. }
        | ChannelsCommand::Delete { target, .. } => target.clone(),
    };
    let Some(app) = config.apps.get(&target.app) else {
        eprintln!(
            "misiva channels: no credentials are configured for app {:?}",
            target.app
        );
        return 2;
    };
    if app.topic.is_none() {
        eprintln!(
            "misiva channels: app {:?} has no topic; channels belong to its bundle id (set MISIVA_APNS_TOPIC or topic)",
            target.app
        );
        return 2;
    }
    let manager = match ChannelManager::new(&target.app, app) {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("misiva channels: configuration error: {e}");
            return 2;
        }
    };
    match execute(&manager, &target, command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("misiva channels: {e}");
            1
        }
    }
}

async fn execute(
    manager: &ChannelManager,
    target: &ChannelsTarget,
    command: ChannelsCommand,
) -> Result<i32, ManageError> {
    let app = target.app.as_str();
    let bundle = manager.bundle();
    match command {
        ChannelsCommand::Create { storage, .. } => {
            let Some(storage) = Storage::parse(&storage) else {
                eprintln!("misiva channels: --storage is none or latest");
                return Ok(2);
            };
            let id = manager.create(storage).await?;
            if target.json {
                print_json(&serde_json::json!({
                    "channel": id, "app": app, "bundle": bundle, "storage": storage.as_str(),
                }));
            } else {
                println!("{id}");
            }
        }
        ChannelsCommand::List { .. } => {
            let channels = manager.list().await?;
            if target.json {
                print_json(&serde_json::json!({
                    "app": app, "bundle": bundle, "channels": channels,
                }));
            } else {
                for id in channels {
                    println!("{id}");
                }
            }
        }
        ChannelsCommand::Show { id, .. } => {
            let channel = manager.show(&id).await?;
            let storage = channel.storage.map(Storage::as_str);
            if target.json {
                print_json(&serde_json::json!({
                    "channel": channel.id, "app": app, "bundle": bundle,
                    "storage": storage, "push_type": channel.push_type,
                }));
            } else {
                println!("channel    {}", channel.id);
                println!("app        {app} ({bundle})");
                println!("storage    {}", storage.unwrap_or("unknown"));
                println!(
                    "push type  {}",
                    channel.push_type.as_deref().unwrap_or("unknown")
                );
            }
        }
        ChannelsCommand::Delete { id, yes, .. } => {
            if !yes {
                let asked = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
                let agreed = asked
                    && {
                        eprint!(
                            "Delete channel {id} of {bundle}? Its subscribers get no more broadcasts. [y/N] "
                        );
                        let _ = std::io::stderr().flush();
                        let mut answer = String::new();
                        std::io::stdin().read_line(&mut answer).is_ok()
                            && matches!(answer.trim(), "y" | "Y" | "yes")
                    };
                if !agreed {
                    if asked {
                        eprintln!("nothing deleted");
                        return Ok(1);
                    }
                    eprintln!(
                        "misiva channels: delete is for good: pass --yes (no terminal to ask)"
                    );
                    return Ok(2);
                }
            }
            manager.delete(&id).await?;
            if target.json {
                print_json(&serde_json::json!({ "channel": id, "app": app, "deleted": true }));
            } else {
                println!("deleted channel {id}");
            }
        }
    }
    Ok(0)
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
