//! `misiva publish`: enqueue jobs from a file of JSON lines, with confirms.
//! Handy for operators and the demo; applications publish with any AMQP client.

use crate::amqp::{Broker, JobPublisher};
use crate::config::{Config, Secret};
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub async fn run(config_file: Option<PathBuf>, file: &Path) -> i32 {
    match publish(config_file, file).await {
        Ok(count) => {
            tracing::info!(count, "jobs published");
            0
        }
        Err(e) => {
            eprintln!("misiva publish: {e}");
            1
        }
    }
}

async fn publish(config_file: Option<PathBuf>, file: &Path) -> anyhow::Result<usize> {
    // Publishing needs only the broker and the queue, not APNs credentials.
    let (url, queue) = match Config::load(config_file) {
        Ok(config) => (config.amqp_url, config.queue),
        Err(_) => (
            Secret::new(
                std::env::var("MISIVA_AMQP_URL")
                    .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            ),
            std::env::var("MISIVA_QUEUE").unwrap_or_else(|_| "misiva.jobs".into()),
        ),
    };
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
    let broker = Broker::connect(&url, "misiva publish").await?;
    let publisher = JobPublisher::open(&broker, &queue).await?;
    let count = publisher
        .publish_many(lines.iter().map(|l| l.as_bytes()))
        .await?;
    publisher.close().await;
    broker.close().await;
    Ok(count)
}
