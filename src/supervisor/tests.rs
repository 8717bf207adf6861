//! Every strategy and restart type, with tokio's paused clock.

use super::*;
use std::sync::Mutex;
use tokio::sync::Notify;

/// A shared record of what happened, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn count(&self, s: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| *e == s).count()
    }
}

/// How a test child ends when told to.
#[derive(Clone, Copy)]
enum End {
    Error,
    Normal,
    Panic,
}

/// Controls for one test child: trigger its end.
#[derive(Clone, Default)]
struct Trigger(Arc<(Notify, Mutex<Option<End>>)>);

impl Trigger {
    fn fire(&self, end: End) {
        *self.0.1.lock().unwrap() = Some(end);
        self.0.0.notify_waiters();
    }
}

fn child(name: &str, restart: Restart, log: &Log, trigger: &Trigger) -> ChildSpec {
    let (name_owned, log, trigger) = (name.to_owned(), log.clone(), trigger.clone());
    ChildSpec::new(
        name,
        restart,
        Shutdown::Graceful(Duration::from_secs(1)),
        move |mut ctx| {
            let (name, log, trigger) = (name_owned.clone(), log.clone(), trigger.clone());
            async move {
                log.push(format!("start {name}"));
                ctx.ready();
                loop {
                    let fired = trigger.0.0.notified();
                    tokio::pin!(fired);
                    fired.as_mut().enable();
                    // A trigger fired while this child was down is not lost.
                    let end = trigger.0.1.lock().unwrap().take();
                    if end.is_none() {
                        tokio::select! {
                            _ = ctx.stopped() => {
                                log.push(format!("stop {name}"));
                                return Ok(());
                            }
                            _ = fired => {}
                        }
                        continue;
                    }
                    match end {
                        Some(End::Error) => return Err(ChildError::failed("boom")),
                        Some(End::Normal) => return Ok(()),
                        Some(End::Panic) => panic!("child {name} panicked on purpose"),
                        None => {}
                    }
                }
            }
        },
    )
}

fn spec(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
    SupervisorSpec {
        name: "test".into(),
        strategy,
        intensity: Intensity {
            max_restarts: 3,
            period: Duration::from_secs(5),
        },
        backoff: Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        children,
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ChildError>>,
}

fn run(spec: SupervisorSpec) -> (Running, SupervisorHandle) {
    let (supervisor, handle) = Supervisor::new(spec);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(supervisor.run(rx));
    (Running { stop, task }, handle)
}

/// Lets the supervisor react (paused time advances through backoffs).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn three(strategy: Strategy, log: &Log, triggers: &[Trigger; 3]) -> SupervisorSpec {
    spec(
        strategy,
        vec![
            child("a", Restart::Permanent, log, &triggers[0]),
            child("b", Restart::Permanent, log, &triggers[1]),
            child("c", Restart::Permanent, log, &triggers[2]),
        ],
    )
}

#[tokio::test(start_paused = true)]
async fn children_start_in_order_and_stop_in_reverse() {
    let log = Log::default();
    let triggers: [Trigger; 3] = Default::default();
    let (running, _) = run(three(Strategy::OneForOne, &log, &triggers));
    settle().await;
    assert_eq!(log.take(), ["start a", "start b", "start c"]);
    running.stop.send(true).unwrap();
    assert_eq!(running.task.await.unwrap(), Ok(()));
    assert_eq!(log.take(), ["stop c", "stop b", "stop a"]);
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let log = Log::default();
    let triggers: [Trigger; 3] = Default::default();
    let _running = run(three(Strategy::OneForOne, &log, &triggers));
    settle().await;
    log.take();
    triggers[1].fire(End::Error);
    settle().await;
    assert_eq!(log.take(), ["start b"]);
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_every_child() {
    let log = Log::default();
    let triggers: [Trigger; 3] = Default::default();
    let _running = run(three(Strategy::OneForAll, &log, &triggers));
    settle().await;
    log.take();
    triggers[1].fire(End::Error);
    settle().await;
    assert_eq!(
        log.take(),
        ["stop c", "stop a", "start a", "start b", "start c"]
    );
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let log = Log::default();
    let triggers: [Trigger; 3] = Default::default();
    let _running = run(three(Strategy::RestForOne, &log, &triggers));
    settle().await;
    log.take();
    triggers[1].fire(End::Error);
    settle().await;
    assert_eq!(log.take(), ["stop c", "start b", "start c"]);
}

#[tokio::test(start_paused = true)]
async fn restart_types() {
    let log = Log::default();
    let t: [Trigger; 5] = Default::default();
    let (_running, handle) = run(spec(
        Strategy::OneForOne,
        vec![
            child("perm", Restart::Permanent, &log, &t[0]),
            child("trans-ok", Restart::Transient, &log, &t[1]),
            child("trans-err", Restart::Transient, &log, &t[2]),
            child("temp", Restart::Temporary, &log, &t[3]),
            child("panics", Restart::Permanent, &log, &t[4]),
        ],
    ));
    settle().await;
    log.take();
    t[0].fire(End::Normal); // permanent: restarted even after a normal end
    settle().await;
    t[1].fire(End::Normal); // transient, normal end: not restarted
    settle().await;
    t[2].fire(End::Error); // transient, error: restarted
    settle().await;
    assert_eq!(log.take(), ["start perm", "start trans-err"]);
    t[3].fire(End::Error); // temporary: never restarted
    settle().await;
    assert!(log.take().is_empty());
    t[4].fire(End::Panic); // a panic is a crash like any other
    settle().await;
    assert_eq!(log.take(), ["start panics"]);
    let names: Vec<String> = handle
        .children()
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["perm", "trans-err", "panics"]);
}

#[tokio::test(start_paused = true)]
async fn intensity_exceeded_stops_everything_and_fails() {
    let log = Log::default();
    let triggers: [Trigger; 3] = Default::default();
    let (running, _) = run(three(Strategy::OneForOne, &log, &triggers));
    settle().await;
    for _ in 0..3 {
        triggers[0].fire(End::Error);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        !running.task.is_finished(),
        "three restarts in 5 s are allowed"
    );
    log.take();
    triggers[0].fire(End::Error);
    let result = running.task.await.unwrap();
    match result {
        Err(ChildError::Escalated {
            supervisor,
            restarts,
            child,
            ..
        }) => {
            assert_eq!(
                (supervisor.as_str(), restarts, child.as_str()),
                ("test", 4, "a")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.take(), ["stop c", "stop b"]);
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_over_the_period_are_fine_and_backoff_grows() {
    let log = Log::default();
    let triggers: [Trigger; 3] = Default::default();
    let (running, _) = run(three(Strategy::OneForOne, &log, &triggers));
    settle().await;
    for _ in 0..10 {
        triggers[0].fire(End::Error);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(!running.task.is_finished());
    assert_eq!(log.count("start a"), 11);
    let b = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    assert!(b.delay(1) <= Duration::from_millis(100));
    assert!(b.delay(4) >= Duration::from_millis(400));
    assert!(b.delay(30) <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_nested_supervisor_escalates_to_its_parent() {
    let log = Log::default();
    let trigger = Trigger::default();
    let inner = spec(
        Strategy::OneForOne,
        vec![child("leaf", Restart::Permanent, &log, &trigger)],
    );
    let inner = SupervisorSpec {
        name: "inner".into(),
        ..inner
    };
    let mut outer = spec(
        Strategy::OneForOne,
        vec![inner.into_child(
            Restart::Permanent,
            Shutdown::Graceful(Duration::from_secs(5)),
        )],
    );
    outer.name = "outer".into();
    let (running, _) = run(outer);
    settle().await;
    log.take();
    // Four quick failures exceed the inner supervisor; the outer restarts it.
    for _ in 0..4 {
        trigger.fire(End::Error);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    settle().await;
    assert!(!running.task.is_finished());
    assert_eq!(
        log.count("start leaf"),
        4,
        "3 inner restarts, then a fresh inner supervisor"
    );
}

#[tokio::test(start_paused = true)]
async fn dynamic_children_start_on_demand_and_are_supervised() {
    let log = Log::default();
    let trigger = Trigger::default();
    let (running, handle) = run(spec(Strategy::OneForOne, vec![]));
    handle
        .start_child(child("app-a", Restart::Permanent, &log, &trigger))
        .await
        .unwrap();
    assert_eq!(log.take(), ["start app-a"]);
    trigger.fire(End::Error);
    settle().await;
    assert_eq!(log.take(), ["start app-a"]);
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    assert_eq!(log.take(), ["stop app-a"]);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_ignores_stop_is_aborted_after_its_shutdown_time() {
    let stubborn = ChildSpec::new(
        "stubborn",
        Restart::Permanent,
        Shutdown::Graceful(Duration::from_secs(3)),
        |mut ctx| async move {
            ctx.ready();
            std::future::pending::<()>().await;
            Ok(())
        },
    );
    let (running, _) = run(spec(Strategy::OneForOne, vec![stubborn]));
    settle().await;
    let started = Instant::now();
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}
