//! Supervision with Erlang/OTP's semantics, on tokio and nothing else: this
//! module knows nothing of AMQP or APNs, and anything that can be started as a
//! future and asked to stop can be supervised.
//!
//! * A [`ChildSpec`] names a child, how to start it, its [`Restart`] type and its
//!   [`Shutdown`].
//! * A supervisor starts its children in order (each one signals `ready` before
//!   the next starts), restarts them by its [`Strategy`], and stops them in
//!   reverse order.
//! * Restart intensity: more than `max_restarts` restarts within `period` and
//!   the supervisor stops its children and fails, which escalates to its parent
//!   (a supervisor is itself a child, see [`SupervisorSpec::into_child`]).
//! * Between restarts it waits an exponential backoff with jitter, so that a
//!   failing dependency is not hammered.
//! * Dynamic children (`simple_one_for_one`): [`SupervisorHandle::start_child`].

use futures_util::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// When a child that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only if it ended abnormally (an error or a panic).
    Transient,
    /// Never.
    Temporary,
}

/// How a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Ask it to stop, wait this long, then abort it.
    Graceful(Duration),
    /// Abort it at once.
    #[allow(
        dead_code,
        reason = "OTP's surface; the worker stops every child gracefully"
    )]
    Immediate,
}

/// Which children are restarted when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the one that ended.
    OneForOne,
    /// All of them: the others are stopped (in reverse order) and all started again.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "OTP's full surface, exercised by supervisor/tests.rs; the worker's tree needs only part of it"
        )
    )]
    OneForAll,
    /// The one that ended and every child started after it.
    RestForOne,
}

/// At most `max_restarts` restarts within `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub period: Duration,
}

/// Wait before a restart: `first` doubled per recent restart, at most `max`,
/// with jitter between 50% and 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    fn delay(&self, recent_restarts: usize) -> Duration {
        let exponent = recent_restarts.saturating_sub(1).min(16) as u32;
        let ceiling = self.first.saturating_mul(1 << exponent).min(self.max);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Why a child ended abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildError {
    #[error("{0}")]
    Failed(String),
    #[error("panicked: {0}")]
    Panicked(String),
    #[error(
        "supervisor {supervisor} gave up: {restarts} restarts within {period:?}; last: {child} {reason}"
    )]
    Escalated {
        supervisor: String,
        restarts: usize,
        period: Duration,
        child: String,
        reason: String,
    },
}

impl ChildError {
    pub fn failed(reason: impl std::fmt::Display) -> Self {
        ChildError::Failed(reason.to_string())
    }
}

type ChildFuture = Pin<Box<dyn Future<Output = Result<(), ChildError>> + Send>>;
type StartFn = Arc<dyn Fn(ChildContext) -> ChildFuture + Send + Sync>;

/// What a running child gets from its supervisor.
#[derive(Debug)]
pub struct ChildContext {
    /// Turns true when the supervisor wants the child to stop.
    stop: watch::Receiver<bool>,
    /// Tells the supervisor the child has started; the next child starts then.
    ready: Option<oneshot::Sender<()>>,
}

impl ChildContext {
    /// Signals that the child is up (connected, consuming, ...).
    pub fn ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }

    /// Resolves when the supervisor asks the child to stop.
    pub async fn stopped(&mut self) {
        while !*self.stop.borrow_and_update() {
            if self.stop.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

/// One child: a name, how to start it, and when to restart and how to stop it.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    pub shutdown: Shutdown,
    start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    pub fn new<F, Fut>(
        name: impl Into<String>,
        restart: Restart,
        shutdown: Shutdown,
        start: F,
    ) -> Self
    where
        F: Fn(ChildContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ChildError>> + Send + 'static,
    {
        ChildSpec {
            name: name.into(),
            restart,
            shutdown,
            start: Arc::new(move |ctx| Box::pin(start(ctx))),
        }
    }
}

/// A supervisor's configuration and its static children.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    pub name: String,
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// This supervisor as a child of another: it is ready when all its
    /// children are, and fails (escalates) when its intensity is exceeded.
    pub fn into_child(self, restart: Restart, shutdown: Shutdown) -> ChildSpec {
        let name = self.name.clone();
        ChildSpec::new(name, restart, shutdown, move |ctx| {
            let spec = self.clone();
            async move {
                let (supervisor, _handle) = Supervisor::new(spec);
                supervisor.run_as_child(ctx).await
            }
        })
    }
}

enum Command {
    StartChild {
        spec: ChildSpec,
        reply: oneshot::Sender<Result<(), ChildError>>,
    },
    Children {
        reply: oneshot::Sender<Vec<(String, bool)>>,
    },
}

/// Talks to a running supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    /// Requests to the supervisor task; small, as commands are rare.
    commands: mpsc::Sender<Command>,
}

impl SupervisorHandle {
    /// Starts a dynamic child, after the static ones, and waits for it to be ready.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<(), ChildError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::StartChild { spec, reply })
            .await
            .map_err(|_| ChildError::failed("the supervisor has stopped"))?;
        answer
            .await
            .map_err(|_| ChildError::failed("the supervisor has stopped"))?
    }

    /// The children, in start order, and whether each is running.
    pub async fn children(&self) -> Vec<(String, bool)> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Children { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

struct Slot {
    spec: ChildSpec,
    running: Option<Running>,
}

struct Running {
    /// Identifies this run of the child among the exits the join set reports.
    id: u64,
    /// Asks this run to stop.
    stop: watch::Sender<bool>,
    /// Aborts this run when it does not stop in time.
    abort: AbortHandle,
}

/// A child's end: which run, and how it ended.
type Exit = (u64, Result<(), ChildError>);

#[derive(Debug)]
pub struct Supervisor {
    spec: SupervisorSpec,
    commands: mpsc::Receiver<Command>,
}

struct State {
    name: String,
    slots: Vec<Slot>,
    /// Every child run, reporting its end.
    tasks: JoinSet<Exit>,
    /// Exits that arrived while the supervisor waited for another child.
    pending: VecDeque<Exit>,
    next_id: u64,
    restarts: VecDeque<Instant>,
}

impl Supervisor {
    pub fn new(spec: SupervisorSpec) -> (Supervisor, SupervisorHandle) {
        let (tx, rx) = mpsc::channel(16);
        (
            Supervisor { spec, commands: rx },
            SupervisorHandle { commands: tx },
        )
    }

    /// Runs until `stop` turns true (then stops every child, in reverse order,
    /// and returns `Ok`) or until restart intensity is exceeded (`Err`).
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), ChildError> {
        self.run_as_child(ChildContext { stop, ready: None }).await
    }

    async fn run_as_child(mut self, mut ctx: ChildContext) -> Result<(), ChildError> {
        let mut state = State {
            name: self.spec.name.clone(),
            slots: self
                .spec
                .children
                .iter()
                .cloned()
                .map(|spec| Slot {
                    spec,
                    running: None,
                })
                .collect(),
            tasks: JoinSet::new(),
            pending: VecDeque::new(),
            next_id: 0,
            restarts: VecDeque::new(),
        };
        for index in 0..state.slots.len() {
            if let Err(e) = state.start(index).await {
                tracing::error!(supervisor = %state.name, child = %state.slots[index].spec.name, error = %e, "child failed to start");
                state.stop_all().await;
                return Err(e);
            }
        }
        ctx.ready();
        loop {
            let exit = match state.pending.pop_front() {
                Some(exit) => exit,
                None => tokio::select! {
                    _ = ctx.stopped() => {
                        state.stop_all().await;
                        return Ok(());
                    }
                    Some(command) = self.commands.recv() => {
                        state.command(command).await;
                        continue;
                    }
                    Some(joined) = state.tasks.join_next() => match joined {
                        Ok(exit) => exit,
                        // Aborted runs were already handled by whoever aborted them.
                        Err(_) => continue,
                    },
                },
            };
            self.on_exit(&mut state, &mut ctx, exit).await?;
        }
    }

    async fn on_exit(
        &self,
        state: &mut State,
        ctx: &mut ChildContext,
        (id, result): Exit,
    ) -> Result<(), ChildError> {
        let Some(index) = state
            .slots
            .iter()
            .position(|s| s.running.as_ref().is_some_and(|r| r.id == id))
        else {
            return Ok(()); // a run that was stopped on purpose
        };
        state.slots[index].running = None;
        let spec = state.slots[index].spec.clone();
        let restart = matches!(
            (&result, spec.restart),
            (_, Restart::Permanent) | (Err(_), Restart::Transient)
        );
        let reason = match &result {
            Ok(()) => "ended normally".to_owned(),
            Err(e) => e.to_string(),
        };
        if !restart {
            tracing::info!(supervisor = %state.name, child = %spec.name, %reason, "child ended; not restarted ({:?})", spec.restart);
            // A child that is not coming back leaves the list, as in OTP.
            state.slots.remove(index);
            return Ok(());
        }
        crate::events::emit(crate::events::ChildRestarted {
            supervisor: &state.name,
            child: &spec.name,
            reason: &reason,
        });

        let now = Instant::now();
        let intensity = self.spec.intensity;
        state.restarts.push_back(now);
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > intensity.period)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() > intensity.max_restarts as usize {
            let error = ChildError::Escalated {
                supervisor: state.name.clone(),
                restarts: state.restarts.len(),
                period: intensity.period,
                child: spec.name.clone(),
                reason,
            };
            tracing::error!(supervisor = %state.name, error = %error, "restart intensity exceeded; stopping all children");
            state.stop_all().await;
            return Err(error);
        }

        let affected: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne => vec![index],
            Strategy::OneForAll => (0..state.slots.len()).collect(),
            Strategy::RestForOne => (index..state.slots.len()).collect(),
        };
        for &i in affected.iter().rev() {
            state.stop(i).await;
        }
        // Temporary children are not restarted by a sibling's failure.
        let affected: Vec<usize> = affected
            .into_iter()
            .filter(|&i| i == index || state.slots[i].spec.restart != Restart::Temporary)
            .collect();

        let delay = self.spec.backoff.delay(state.restarts.len());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // Stopping wins over restarting: the main loop sees the stop next.
            _ = ctx.stopped() => return Ok(()),
        }
        for i in affected {
            if let Err(e) = state.start(i).await {
                // A failed start is an exit like any other: it goes through the
                // same restart rules (and intensity) on the next loop turn.
                tracing::warn!(supervisor = %state.name, child = %state.slots[i].spec.name, error = %e, "restart failed");
            }
        }
        Ok(())
    }
}

impl State {
    /// Starts the child at `index` and waits until it is ready or has ended.
    async fn start(&mut self, index: usize) -> Result<(), ChildError> {
        let id = self.next_id;
        self.next_id += 1;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let ctx = ChildContext {
            stop: stop_rx,
            ready: Some(ready_tx),
        };
        let future = (self.slots[index].spec.start)(ctx);
        let abort = self.tasks.spawn(async move {
            let result = match AssertUnwindSafe(future).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(ChildError::Panicked(panic_message(panic.as_ref()))),
            };
            (id, result)
        });
        self.slots[index].running = Some(Running {
            id,
            stop: stop_tx,
            abort,
        });
        let mut ready_rx = ready_rx;
        loop {
            tokio::select! {
                // A child that drops its context without calling `ready` is treated as ready.
                _ = &mut ready_rx => return Ok(()),
                Some(joined) = self.tasks.join_next() => match joined {
                    Ok((exit_id, result)) if exit_id == id => {
                        // Ended before it was ready: report it as an exit, so
                        // the restart rules apply to it.
                        let err = result.clone().err();
                        self.pending.push_back((exit_id, result));
                        return match err {
                            Some(e) => Err(e),
                            None => Ok(()),
                        };
                    }
                    Ok(other) => self.pending.push_back(other),
                    Err(_) => {}
                },
            }
        }
    }

    /// Stops the child at `index` (if running) by its shutdown rule.
    async fn stop(&mut self, index: usize) {
        let Some(running) = self.slots[index].running.take() else {
            return;
        };
        let name = self.slots[index].spec.name.clone();
        match self.slots[index].spec.shutdown {
            Shutdown::Immediate => running.abort.abort(),
            Shutdown::Graceful(limit) => {
                let _ = running.stop.send(true);
                let deadline = Instant::now() + limit;
                loop {
                    if let Some(pos) = self.pending.iter().position(|(id, _)| *id == running.id) {
                        self.pending.remove(pos);
                        return;
                    }
                    match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                        Ok(Some(Ok((id, _)))) if id == running.id => return,
                        Ok(Some(Ok(other))) => self.pending.push_back(other),
                        Ok(Some(Err(_))) => {}
                        Ok(None) => return,
                        Err(_) => {
                            tracing::warn!(supervisor = %self.name, child = %name, ?limit, "child did not stop in time; aborting it");
                            running.abort.abort();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Stops every child, last started first.
    async fn stop_all(&mut self) {
        for index in (0..self.slots.len()).rev() {
            self.stop(index).await;
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::StartChild { spec, reply } => {
                self.slots.push(Slot {
                    spec,
                    running: None,
                });
                let result = self.start(self.slots.len() - 1).await;
                let _ = reply.send(result);
            }
            Command::Children { reply } => {
                let list = self
                    .slots
                    .iter()
                    .map(|s| (s.spec.name.clone(), s.running.is_some()))
                    .collect();
                let _ = reply.send(list);
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_owned()
    }
}

#[cfg(test)]
mod tests;
