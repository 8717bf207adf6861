//! The operator commands: `misiva dlq …` and `misiva send`. They need the
//! broker, never APNs credentials. Output for people goes to stdout as
//! tables; `--json` prints nothing but JSON lines; problems go to stderr.

use crate::amqp::{AmqpError, Broker, DeadLetterQueue, Held, JobPublisher, Released, Topology};
use crate::cli::{DlqCommand, PurgeArgs, ReplayArgs, Selection, SendArgs};
use crate::config::Config;
use crate::dlq::{self, Filter, Letter, Stats};
use anyhow::{Context, bail};
use std::io::{IsTerminal, Write};
use std::time::Duration;
use time::OffsetDateTime;

/// Exit code of a refused command line (bad filter, invalid job, no `--yes`).
const USAGE: i32 = 2;

/// An error that is the operator's input, not the broker's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Usage>().is_some() {
        USAGE
    } else {
        1
    }
}

pub async fn dlq(config: Config, command: DlqCommand) -> i32 {
    // Boxed: a command's future is made once, and it holds every
    // subcommand's state (several KiB).
    match Box::pin(run_dlq(&config, command)).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("misiva dlq: {e:#}");
            exit_code(&e)
        }
    }
}

pub async fn send(config: Config, args: SendArgs) -> i32 {
    match run_send(&config, args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("misiva send: {e:#}");
            exit_code(&e)
        }
    }
}

fn filter(selection: &Selection, id: Option<String>) -> anyhow::Result<Filter> {
    let now = OffsetDateTime::now_utc();
    let instant = |raw: &Option<String>| -> anyhow::Result<Option<OffsetDateTime>> {
        raw.as_deref()
            .map(|r| dlq::parse_instant(r, now))
            .transpose()
            .map_err(|e| Usage(e).into())
    };
    Ok(Filter {
        reason: selection.reason.clone(),
        app: selection.app.clone(),
        since: instant(&selection.since)?,
        before: instant(&selection.older_than)?,
        id,
    })
}

/// A read of the queue: the dead letters held, with what they say, and
/// which ones the selection picks (oldest first, at most `--limit`).
struct Read {
    queue: DeadLetterQueue,
    held: Vec<Held>,
    letters: Vec<Letter>,
    picked: Vec<usize>,
}

async fn read(
    broker: &Broker,
    name: &str,
    selection: &Selection,
    filter: &Filter,
) -> anyhow::Result<Read> {
    let mut queue = DeadLetterQueue::open(broker, name).await?;
    let held = queue
        .read(selection.scan)
        .await
        .with_context(|| format!("reading {name}"))?;
    let letters: Vec<Letter> = held
        .iter()
        .enumerate()
        .map(|(i, h)| Letter::read(i + 1, &h.raw))
        .collect();
    let picked = letters
        .iter()
        .enumerate()
        .filter(|(_, l)| filter.matches(l))
        .map(|(i, _)| i)
        .take(selection.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(Read {
        queue,
        held,
        letters,
        picked,
    })
}

/// A dead letter read this many times is published again at the back of the
/// queue before the read ends, so that RabbitMQ 4's delivery limit (20 on
/// 4.0 to 4.2, where every read counts) never drops it.
pub const REFRESH_AFTER: u64 = 10;

/// Ends a read: refreshes the dead letters read too often (those this
/// command did not remove), then returns the rest to the queue and checks
/// that the removals took effect.
async fn finish(
    mut queue: DeadLetterQueue,
    held: &[Held],
    letters: &[Letter],
    removed: &[usize],
) -> Result<Released, AmqpError> {
    let mut refreshed = 0;
    for (i, letter) in letters.iter().enumerate() {
        if letter.deliveries + 1 < REFRESH_AFTER || removed.contains(&i) {
            continue;
        }
        match queue.refresh(&held[i]).await {
            Ok(()) => refreshed += 1,
            Err(e) => {
                eprintln!(
                    "misiva dlq: could not refresh a dead letter read {} times: {e}",
                    letter.deliveries + 1
                );
                break;
            }
        }
    }
    let released = queue.release().await;
    if refreshed > 0 {
        eprintln!(
            "note: {refreshed} dead letters read {REFRESH_AFTER} times or more were moved to the back of the queue, so that RabbitMQ 4's delivery limit never drops them"
        );
    }
    released
}

/// Ends a read that removed nothing on the command's behalf (stats, list,
/// show): only refreshed letters can be unconfirmed, and that is said.
async fn finish_reading(queue: DeadLetterQueue, held: &[Held], letters: &[Letter]) -> i32 {
    match finish(queue, held, letters, &[]).await {
        Ok(r) if r.unconfirmed == 0 => 0,
        Ok(r) => {
            eprintln!(
                "misiva dlq: {} of {} refreshed dead letters could not be confirmed removed; they may be in the queue twice",
                r.unconfirmed, r.removed
            );
            1
        }
        Err(e) => {
            eprintln!("misiva dlq: ending the read: {e}");
            1
        }
    }
}

fn json_line(value: &impl serde::Serialize) {
    // Serializing our own plain structs cannot fail.
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

async fn run_dlq(config: &Config, command: DlqCommand) -> anyhow::Result<i32> {
    let (selection, id) = match &command {
        DlqCommand::Stats(s) | DlqCommand::List(s) => (s.clone(), None),
        DlqCommand::Show { id, selection } => (selection.clone(), Some(id.clone())),
        DlqCommand::Replay(r) => (r.selection.clone(), None),
        DlqCommand::Purge(p) => (p.selection.clone(), None),
    };
    let filter = filter(&selection, id)?;
    let name = config.dead_letter_queue.as_str();
    let broker = Broker::connect(&config.amqp_url, "misiva dlq").await?;
    let r = read(&broker, name, &selection, &filter).await?;
    if r.held.len() == usize::from(selection.scan) && !selection.json {
        eprintln!(
            "note: only the oldest {} dead letters were examined (--scan)",
            selection.scan
        );
    }
    let code = match command {
        DlqCommand::Stats(_) => {
            let stats = Stats::of(
                r.picked.iter().map(|&i| &r.letters[i]),
                OffsetDateTime::now_utc(),
            );
            if selection.json {
                json_line(&stats);
            } else {
                print!("{}", stats.render(name));
            }
            finish_reading(r.queue, &r.held, &r.letters).await
        }
        DlqCommand::List(_) => {
            let picked: Vec<Letter> = r.picked.iter().map(|&i| r.letters[i].clone()).collect();
            if selection.json {
                picked.iter().for_each(json_line);
            } else {
                print!("{}", dlq::render_list(&picked));
                println!(
                    "{} of {} dead letters in {name}",
                    picked.len(),
                    r.letters.len()
                );
            }
            finish_reading(r.queue, &r.held, &r.letters).await
        }
        DlqCommand::Show { id, .. } => {
            for &i in &r.picked {
                if selection.json {
                    json_line(&r.letters[i]);
                } else {
                    println!("{}", dlq::render_one(&r.letters[i]));
                }
            }
            let code = finish_reading(r.queue, &r.held, &r.letters).await;
            if r.picked.is_empty() {
                eprintln!("misiva dlq: no dead letter of job {id:?} in {name}");
                1
            } else {
                code
            }
        }
        DlqCommand::Replay(args) => Box::pin(replay(config, r, &args)).await?,
        DlqCommand::Purge(args) => Box::pin(purge(name, r, &args)).await?,
    };
    broker.close().await;
    Ok(code)
}

fn progress(total: usize, json: bool, verb: &str) -> indicatif::ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb.to_owned());
    bar
}

/// One dead letter replayed or deleted (or, with `--dry-run`, that would be):
/// a JSON line, or a table line under the progress bar.
fn report(bar: &indicatif::ProgressBar, letter: &Letter, json: bool, dry_run: bool) {
    bar.inc(1);
    if json {
        json_line(letter);
    } else if dry_run {
        bar.suspend(|| print!("{}", dlq::render_list(std::slice::from_ref(letter))));
    }
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    action: &'a str,
    /// What the broker confirmed: letters removed from the dead-letter queue
    /// (and, for a replay, published to the work queue).
    done: usize,
    /// Removals acknowledged that the queue's depth does not confirm.
    unconfirmed: usize,
    matched: usize,
    examined: usize,
    queue: &'a str,
    dry_run: bool,
}

async fn replay(config: &Config, r: Read, args: &ReplayArgs) -> anyhow::Result<i32> {
    let Read {
        mut queue,
        held,
        letters,
        picked,
    } = r;
    let json = args.selection.json;
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        finish_reading(queue, &held, &letters).await;
        return Err(Usage(format!("--rate must be a positive number, not {rate}")).into());
    }
    let pause = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let bar = progress(picked.len(), json || args.dry_run, "replaying");
    let mut done = 0;
    let mut failure = None;
    let topology = Topology::from_config(config);
    for &i in &picked {
        if !args.dry_run {
            let started = std::time::Instant::now();
            if let Err(e) = queue.replay(&held[i], &topology).await {
                failure = Some(e);
                break;
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause.saturating_sub(started.elapsed())).await;
            }
        }
        done += 1;
        report(&bar, &letters[i], json, args.dry_run);
    }
    let code = wrap_up(
        bar,
        queue,
        &held,
        &letters,
        &picked,
        json,
        Summary {
            action: "replay",
            done,
            unconfirmed: 0,
            matched: picked.len(),
            examined: letters.len(),
            queue: &config.queue,
            dry_run: args.dry_run,
        },
    )
    .await;
    match failure {
        Some(e) => Err(anyhow::Error::new(e).context(format!(
            "replay stopped after {done} of {}; the rest stay dead-lettered",
            picked.len()
        ))),
        None => Ok(code),
    }
}

/// Ends a replay or a purge: clears the progress bar, ends the read (what was
/// done is removed; the rest returns), and prints the summary of what the
/// broker confirmed. The exit code: 1 when a removal was not confirmed.
async fn wrap_up(
    bar: indicatif::ProgressBar,
    queue: DeadLetterQueue,
    held: &[Held],
    letters: &[Letter],
    picked: &[usize],
    json: bool,
    mut s: Summary<'_>,
) -> i32 {
    bar.finish_and_clear();
    let removed = if s.dry_run {
        &[][..]
    } else {
        &picked[..s.done]
    };
    match finish(queue, held, letters, removed).await {
        Ok(released) => {
            s.unconfirmed = usize::try_from(released.unconfirmed)
                .unwrap_or(usize::MAX)
                .min(s.done);
        }
        Err(e) => {
            eprintln!("misiva dlq: ending the read: {e}");
            s.unconfirmed = s.done;
        }
    }
    // Refreshed letters share the count; a shortfall is charged to the
    // command's own removals, so that nothing is claimed that may not be so.
    s.done -= s.unconfirmed;
    summary(json, &s);
    i32::from(s.unconfirmed > 0)
}

fn summary(json: bool, s: &Summary<'_>) {
    if s.unconfirmed > 0 {
        let what = if s.action == "replay" {
            "were published again, but the removal of their dead letters could not be confirmed: they may still be in the dead-letter queue, and a later replay would send them again"
        } else {
            "could not be confirmed deleted: the dead-letter queue holds that many more than it should, and they may still be in it"
        };
        eprintln!(
            "misiva dlq: {} of {} {what}",
            s.unconfirmed,
            s.done + s.unconfirmed
        );
    }
    if json {
        json_line(s);
        return;
    }
    let verb = match (s.action, s.dry_run) {
        ("replay", false) => "replayed to",
        ("replay", true) => "would be replayed to",
        (_, false) => "deleted from",
        (_, true) => "would be deleted from",
    };
    println!(
        "{} of {} matching dead letters {verb} {} ({} examined)",
        s.done, s.matched, s.queue, s.examined
    );
}

async fn purge(name: &str, r: Read, args: &PurgeArgs) -> anyhow::Result<i32> {
    let Read {
        mut queue,
        held,
        letters,
        picked,
    } = r;
    let json = args.selection.json;
    if !args.dry_run && !args.yes && !picked.is_empty() {
        let asked = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        let agreed = asked && {
            eprint!(
                "Delete {} dead letters from {name} for good? [y/N] ",
                picked.len()
            );
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer).is_ok()
                && matches!(answer.trim(), "y" | "Y" | "yes")
        };
        if !agreed {
            finish_reading(queue, &held, &letters).await;
            if asked {
                eprintln!("nothing deleted");
                return Ok(1);
            }
            return Err(
                Usage("purge deletes for good: pass --yes (no terminal to ask)".into()).into(),
            );
        }
    }
    let bar = progress(picked.len(), json || args.dry_run, "deleting");
    let mut done = 0;
    let mut failure = None;
    for &i in &picked {
        if !args.dry_run
            && let Err(e) = queue.remove(&held[i]).await
        {
            failure = Some(e);
            break;
        }
        done += 1;
        report(&bar, &letters[i], json, args.dry_run);
    }
    let code = wrap_up(
        bar,
        queue,
        &held,
        &letters,
        &picked,
        json,
        Summary {
            action: "purge",
            done,
            unconfirmed: 0,
            matched: picked.len(),
            examined: letters.len(),
            queue: name,
            dry_run: args.dry_run,
        },
    )
    .await;
    match failure {
        Some(e) => Err(anyhow::Error::new(e).context(format!("purge stopped after {done}"))),
        None => Ok(code),
    }
}

/// The job `send` publishes: the file's text as it is, or one built from the
/// options.
fn job_text(args: &SendArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        return Ok(text);
    }
    let mut job = serde_json::Map::new();
    match args.tokens.as_slice() {
        [one] => drop(job.insert("token".into(), one.clone().into())),
        many => drop(job.insert("tokens".into(), many.to_vec().into())),
    }
    if args.title.is_some() || args.subtitle.is_some() {
        let mut alert = serde_json::Map::new();
        for (key, value) in [
            ("title", &args.title),
            ("subtitle", &args.subtitle),
            ("body", &args.alert),
        ] {
            if let Some(v) = value {
                alert.insert(key.into(), v.clone().into());
            }
        }
        job.insert("alert".into(), alert.into());
    } else if let Some(alert) = &args.alert {
        job.insert("alert".into(), alert.clone().into());
    }
    if let Some(data) = &args.data {
        let value: serde_json::Value =
            serde_json::from_str(data).map_err(|e| Usage(format!("--data is not JSON: {e}")))?;
        job.insert("data".into(), value);
    }
    for (key, value) in [
        ("id", &args.id),
        ("app", &args.app),
        ("push_type", &args.push_type),
        ("topic", &args.topic),
        ("sound", &args.sound),
        ("collapse_id", &args.collapse_id),
    ] {
        if let Some(v) = value {
            job.insert(key.into(), v.clone().into());
        }
    }
    if let Some(badge) = args.badge {
        job.insert("badge".into(), badge.into());
    }
    if let Some(priority) = args.priority {
        job.insert("priority".into(), priority.into());
    }
    Ok(serde_json::Value::Object(job).to_string())
}

async fn run_send(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    let text = job_text(&args)?;
    let text = text.trim();
    // The message id names the job when its body does not: a new UUID, so
    // that the id printed is the one the worker, its logs and its dead
    // letters use.
    let message_id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let job = crate::job::decode(text.as_bytes(), Some(&message_id))
        .map_err(|e| Usage(format!("the job is invalid: {e}")))?;
    if bail_on_unknown_app(config, job.app.as_str()) {
        bail!(Usage(format!(
            "no app {} is configured here; the worker would dead-letter the job as unknown_app",
            crate::bounded::quote(job.app.as_str())
        )));
    }
    let broker = Broker::connect(&config.amqp_url, "misiva send").await?;
    let lane = if args.urgent {
        crate::lane::Lane::Urgent
    } else {
        crate::lane::Lane::Normal
    };
    let topology = Topology::from_config(config);
    let publisher = JobPublisher::open(&broker, &topology, lane).await?;
    publisher
        .publish_one(text.as_bytes(), &message_id)
        .await
        .with_context(|| match lane {
            crate::lane::Lane::Urgent => format!("publishing to {}", topology.urgent_queue),
            crate::lane::Lane::Normal => format!("publishing to {}", config.queue),
        })?;
    publisher.close().await;
    broker.close().await;
    println!("{}", job.id.as_str());
    Ok(())
}

/// Only when this machine's configuration names apps can `send` tell that
/// an app is unknown; with none configured (a publisher's machine) it cannot.
fn bail_on_unknown_app(config: &Config, app: &str) -> bool {
    !config.apps.is_empty() && !config.apps.contains_key(app)
}
