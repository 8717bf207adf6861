//! `misiva publish`: enqueue jobs from a file of JSON lines, with confirms.
//! Handy for operators and the demo; applications publish with any AMQP client.

use crate::amqp::{Broker, JobPublisher, Topology};
use crate::config::{Config, ConfigError};
use crate::lane::Lane;
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub async fn run(config_file: Option<PathBuf>, file: &Path, lane: Lane) -> i32 {
    match publish(config_file, file, lane).await {
        Ok(count) => {
            crate::events::emit(crate::events::JobsPublished { count });
            0
        }
        Err(e) => {
            eprintln!("misiva publish: {e}");
            if e.downcast_ref::<ConfigProblem>().is_some() {
                2
            } else {
                1
            }
        }
    }
}

async fn publish(config_file: Option<PathBuf>, file: &Path, lane: Lane) -> anyhow::Result<usize> {
    // Publishing needs only the broker and the queue, not APNs credentials;
    // a configuration error is still one (exit 2, never a silent default).
    let config = Config::load_for_broker(config_file).map_err(ConfigProblem)?;
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(file)?))
    };
    let lines: Vec<String> = reader
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let broker = Broker::connect(&config.amqp_url, "misiva publish").await?;
    let publisher = JobPublisher::open(&broker, &Topology::from_config(&config), lane).await?;
    let count = publisher
        .publish_many(lines.iter().map(|l| l.as_bytes()))
        .await?;
    publisher.close().await;
    broker.close().await;
    Ok(count)
}

/// A configuration error, which exits 2 like the worker's.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
struct ConfigProblem(ConfigError);
