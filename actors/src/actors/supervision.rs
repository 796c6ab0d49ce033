//! Actor supervision, written once for every supervised actor (the Recorder and the Stream).
//!
//! actix does not isolate a panic inside a handler: tokio catches it, the actor's task is gone,
//! and its addresses answer `MailboxError::Closed` from then on. So each supervised handler runs
//! its body through [`SupervisedActor::guarded`] (under `catch_unwind`, past the kind's fault
//! point), and each asynchronous continuation through [`guard`]; a body that panics (or whose
//! fault point fails) leaves the actor in an unknown state, so the actor does not go on:
//! [`SupervisedActor::crash`] counts the failure, the actor quiesces what it owns (ingest
//! stopped, writers finished) and tells its parent ([`SupervisedActor::on_crash`]), and it stops.
//! The parent rebuilds it from its persisted record — the same path as a restart of the
//! process — within a restart budget ([`admit_restart`]).
//!
//! Counted per kind since the process started ([`totals`]): failures (handler panics and
//! injected faults), restarts, and stalls — a handler body that has not returned within
//! [`STALL_AFTER`] (blocked on I/O or a lock: the actor, and its arbiter, make no progress),
//! noticed by a watchdog thread that reads each actor's [`Progress`] probe.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::domain::ErrorInfo;
use crate::engine::RecoveryConfig;

/// The actor kinds under supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisedKind {
    Recorder,
    Stream,
}

impl SupervisedKind {
    pub const ALL: [SupervisedKind; 2] = [SupervisedKind::Recorder, SupervisedKind::Stream];

    pub fn as_str(self) -> &'static str {
        match self {
            SupervisedKind::Recorder => "Recorder",
            SupervisedKind::Stream => "Stream",
        }
    }

    /// The word used in error messages ("recorder handler Publish failed: ...").
    fn noun(self) -> &'static str {
        match self {
            SupervisedKind::Recorder => "recorder",
            SupervisedKind::Stream => "stream",
        }
    }
}

/// What supervision counted for one actor kind since the process started (they outlive the
/// actors and instances concerned; the debug tree's per-actor `restarts` leave with their actor).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SupervisionTotals {
    /// Handler bodies or continuations that panicked or whose fault point failed.
    pub failures: u64,
    /// Restarts performed: writer restarts and actor rebuilds alike.
    pub restarts: u64,
    /// Handler bodies noticed running longer than [`STALL_AFTER`].
    pub stalls: u64,
    /// Actors of the kind stalled right now.
    pub stalled_now: u64,
}

struct KindCounters {
    failures: AtomicU64,
    restarts: AtomicU64,
    stalls: AtomicU64,
}

impl KindCounters {
    const fn new() -> Self {
        Self {
            failures: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        }
    }
}

static COUNTERS: [KindCounters; 2] = [KindCounters::new(), KindCounters::new()];

/// Counts one restart performed by supervision.
pub fn count_restart(kind: SupervisedKind) {
    COUNTERS[kind as usize].restarts.fetch_add(1, Ordering::Relaxed);
}

/// Restarts of `kind` since the process started (writer restarts and actor rebuilds alike).
pub fn num_restarts(kind: SupervisedKind) -> u64 {
    COUNTERS[kind as usize].restarts.load(Ordering::Relaxed)
}

/// Everything supervision counted for `kind` since the process started.
pub fn totals(kind: SupervisedKind) -> SupervisionTotals {
    let counters = &COUNTERS[kind as usize];
    SupervisionTotals {
        failures: counters.failures.load(Ordering::Relaxed),
        restarts: counters.restarts.load(Ordering::Relaxed),
        stalls: counters.stalls.load(Ordering::Relaxed),
        stalled_now: watched()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| p.kind == kind && p.stalled.load(Ordering::Relaxed))
            .count() as u64,
    }
}

/// Records a failure at `now` in `times` (the failures within the budget's window) and says
/// whether a restart is still within the budget: at most `max_restarts` failures within
/// `restart_window`.
pub fn admit_restart(times: &mut VecDeque<Instant>, now: Instant, recovery: &RecoveryConfig) -> bool {
    let window: Duration = recovery.restart_window;
    times.retain(|at| now.saturating_duration_since(*at) <= window);
    times.push_back(now);
    times.len() <= recovery.max_restarts as usize
}

/// The scope of a handler's fault point; only armed points read it, so a normal build does not
/// build it.
pub fn fault_scope(scope: impl FnOnce() -> String) -> String {
    if cfg!(feature = "fault-injection") {
        scope()
    } else {
        String::new()
    }
}

/// Runs a handler body with its fault point; `Err` carries what went wrong (the panic's
/// message, or the injected error) when the body panicked or the point failed.
pub fn run_guarded<R>(point: &'static str, scope: &str, body: impl FnOnce() -> R) -> Result<R, String> {
    match catch_unwind(AssertUnwindSafe(|| {
        crate::fault::point_in(point, scope).map(|()| body())
    })) {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(fault)) => Err(fault.to_string()),
        Err(panic) => Err(panic_message(panic.as_ref())),
    }
}

/// How long a handler body may run before the watchdog counts the actor as stalled. Handler
/// bodies do no blocking work by design (files are read and written on threads of their own),
/// so a body this slow is stuck, and so is every actor on its arbiter.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Whether a supervised actor is inside a handler body, and since when. Shared with the
/// watchdog thread, which reads it while the actor may be blocked.
pub struct Progress {
    kind: SupervisedKind,
    /// Milliseconds since the process epoch (plus one) at which the running body began; 0 when
    /// the actor is between messages.
    busy_since: AtomicU64,
    handler: Mutex<&'static str>,
    /// Handler bodies completed: the actor's progress.
    num_handled: AtomicU64,
    /// Counted as stalled in the current busy spell (counted once per spell).
    stalled: AtomicBool,
}

impl Progress {
    fn new(kind: SupervisedKind) -> Self {
        Self {
            kind,
            busy_since: AtomicU64::new(0),
            handler: Mutex::new(""),
            num_handled: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        }
    }

    fn enter(&self, handler: &'static str, now_ms: u64) {
        *self.handler.lock().unwrap_or_else(|p| p.into_inner()) = handler;
        self.busy_since.store(now_ms + 1, Ordering::Release);
    }

    fn leave(&self) {
        self.busy_since.store(0, Ordering::Release);
        self.stalled.store(false, Ordering::Relaxed);
        self.num_handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Handler bodies this actor completed.
    pub fn num_handled(&self) -> u64 {
        self.num_handled.load(Ordering::Relaxed)
    }

    /// Whether the watchdog counts this actor as stalled now.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Looks at the probe at `now_ms`: true the first time in a busy spell that the body has run
    /// `stall_after` or longer (the spell is then counted as one stall).
    fn check(&self, now_ms: u64, stall_after: Duration) -> bool {
        let since = self.busy_since.load(Ordering::Acquire);
        if since == 0 || now_ms + 1 < since + stall_after.as_millis() as u64 {
            return false;
        }
        !self.stalled.swap(true, Ordering::Relaxed)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn watched() -> std::sync::MutexGuard<'static, Vec<Weak<Progress>>> {
    static WATCHED: Mutex<Vec<Weak<Progress>>> = Mutex::new(Vec::new());
    WATCHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// One look of the watchdog at `now_ms`: forgets the probes of ended actors and answers the
/// ones newly stalled (kind and the handler they are stuck in).
fn scan(now_ms: u64, stall_after: Duration) -> Vec<(SupervisedKind, &'static str)> {
    let mut list = watched();
    list.retain(|p| p.strong_count() > 0);
    list.iter()
        .filter_map(Weak::upgrade)
        .filter(|p| p.check(now_ms, stall_after))
        .map(|p| (p.kind, *p.handler.lock().unwrap_or_else(|e| e.into_inner())))
        .collect()
}

fn watch(probe: &Arc<Progress>) {
    static WATCHDOG: OnceLock<()> = OnceLock::new();
    watched().push(Arc::downgrade(probe));
    WATCHDOG.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("supervision-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(WATCH_EVERY);
                for (kind, handler) in scan(now_ms(), STALL_AFTER) {
                    COUNTERS[kind as usize].stalls.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        kind = kind.as_str(),
                        handler,
                        stall_after_secs = STALL_AFTER.as_secs(),
                        "a supervised actor has been inside one handler too long: it makes no progress"
                    );
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the supervision watchdog: stalls go unnoticed");
        }
    });
}

/// The supervision state each supervised actor carries: whether one of its handlers failed
/// (the actor then takes no more work), and its progress probe.
pub struct Supervision {
    crashed: bool,
    progress: Arc<Progress>,
}

impl Supervision {
    pub fn new(kind: SupervisedKind) -> Self {
        let progress = Arc::new(Progress::new(kind));
        watch(&progress);
        Self {
            crashed: false,
            progress,
        }
    }

    /// A handler of this actor failed (or it was retired): it takes no more work.
    pub fn has_crashed(&self) -> bool {
        self.crashed
    }

    /// Marks the actor as ended by its parent (retired): no more work, no failure counted.
    pub fn retire(&mut self) {
        self.crashed = true;
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }
}

/// An actor under supervision. It says what it is ([`Self::KIND`], its fault point and scope)
/// and what to do when it fails ([`Self::on_crash`]); the rest — running bodies guarded,
/// counting, ending the actor once, its continuations — is written here once.
pub trait SupervisedActor: actix::Actor<Context = actix::Context<Self>> {
    const KIND: SupervisedKind;
    /// The fault point every handler body and continuation of this kind passes.
    const FAULT_POINT: &'static str;

    fn supervision(&mut self) -> &mut Supervision;

    /// Who this actor is, in fault scopes and logs ("{conversation}" or "{conversation}
    /// {user}/{kind}").
    fn scope_prefix(&self) -> String;

    /// A handler failed with `error` (`ACTOR_FAILED`): record it, quiesce what the actor owns and
    /// tell its parent, which rebuilds it. Called once; the actor stops right after.
    fn on_crash(&mut self, ctx: &mut actix::Context<Self>, error: ErrorInfo);

    /// Runs a handler body under supervision: a panic (or a failing fault point) inside it ends
    /// this actor (see [`Self::crash`]) and answers `None`; so does any message after that.
    fn guarded<R>(
        &mut self,
        ctx: &mut actix::Context<Self>,
        handler: &'static str,
        body: impl FnOnce(&mut Self, &mut actix::Context<Self>) -> R,
    ) -> Option<R> {
        if self.supervision().has_crashed() {
            return None;
        }
        let scope = fault_scope(|| format!("{} {handler}", self.scope_prefix()));
        let progress = self.supervision().progress.clone();
        progress.enter(handler, now_ms());
        let outcome = run_guarded(Self::FAULT_POINT, &scope, || body(self, ctx));
        progress.leave();
        match outcome {
            Ok(result) => Some(result),
            Err(message) => {
                self.crash(ctx, handler, message);
                None
            }
        }
    }

    /// A handler failed: what the actor holds may be half-changed, so it does not go on. Counts
    /// the failure, hands the error to [`Self::on_crash`] and stops the actor; a second failure
    /// of an actor already ending changes nothing.
    fn crash(&mut self, ctx: &mut actix::Context<Self>, handler: &'static str, message: String) {
        if self.supervision().has_crashed() {
            return;
        }
        self.supervision().crashed = true;
        COUNTERS[Self::KIND as usize].failures.fetch_add(1, Ordering::Relaxed);
        let error = ErrorInfo::new(
            "ACTOR_FAILED",
            format!("{} handler {handler} failed: {message}", Self::KIND.noun()),
        );
        tracing::error!(
            kind = Self::KIND.as_str(),
            actor = %self.scope_prefix(),
            handler,
            error = %message,
            "supervised actor failed: stopping it for a restart"
        );
        self.on_crash(ctx, error);
        actix::ActorContext::stop(ctx);
    }

    /// The fault point of a continuation of `handler` (fault-injection builds): panics when it
    /// fails, which the continuation's [`Guarded`] turns into a crash of the actor.
    fn continuation_point(&self, handler: &'static str) {
        let scope = fault_scope(|| format!("{} continuation {handler}", self.scope_prefix()));
        if let Err(e) = crate::fault::point_in(Self::FAULT_POINT, &scope) {
            panic!("{e}");
        }
    }

    /// A continuation of `handler` panicked (see [`Guarded`]).
    fn continuation_failed(&mut self, ctx: &mut actix::Context<Self>, handler: &'static str, message: String) {
        self.crash(ctx, handler, message);
    }
}

/// An actor future whose panics become [`SupervisedActor::continuation_failed`] and a fallback
/// output (the answer a caller of the failed handler gets), instead of ending the actor's task
/// silently (tokio would catch the panic and the actor's address would answer nothing more).
pub struct Guarded<A: SupervisedActor, F: actix::ActorFuture<A>> {
    inner: F,
    handler: &'static str,
    fallback: Option<F::Output>,
}

/// Supervises `future`, a continuation of `handler`; `fallback` is its output if it panics.
pub fn guard<A, F>(handler: &'static str, future: F, fallback: F::Output) -> Guarded<A, F>
where
    A: SupervisedActor,
    F: actix::ActorFuture<A> + Unpin,
{
    Guarded {
        inner: future,
        handler,
        fallback: Some(fallback),
    }
}

impl<A, F> actix::ActorFuture<A> for Guarded<A, F>
where
    A: SupervisedActor,
    F: actix::ActorFuture<A> + Unpin,
    F::Output: Unpin,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut A,
        ctx: &mut actix::Context<A>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let Some(_) = this.fallback.as_ref() else {
            // Failed before: never polled again.
            return std::task::Poll::Pending;
        };
        let inner = &mut this.inner;
        match catch_unwind(AssertUnwindSafe(|| std::pin::Pin::new(inner).poll(act, ctx, task))) {
            Ok(std::task::Poll::Ready(output)) => {
                this.fallback = None;
                std::task::Poll::Ready(output)
            }
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => {
                act.continuation_failed(ctx, this.handler, panic_message(panic.as_ref()));
                match this.fallback.take() {
                    Some(fallback) => std::task::Poll::Ready(fallback),
                    None => std::task::Poll::Pending,
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_restarts: u32, window_secs: u64) -> RecoveryConfig {
        RecoveryConfig {
            max_restarts,
            restart_window: Duration::from_secs(window_secs),
            ..RecoveryConfig::default()
        }
    }

    #[test]
    fn the_budget_admits_max_restarts_within_the_window_and_forgets_older_ones() {
        let recovery = config(2, 10);
        let start = Instant::now();
        let mut times = VecDeque::new();
        assert!(admit_restart(&mut times, start, &recovery));
        assert!(admit_restart(&mut times, start + Duration::from_secs(1), &recovery));
        assert!(!admit_restart(&mut times, start + Duration::from_secs(2), &recovery));
        // Long after, the old failures left the window: one more is admitted.
        let later = start + Duration::from_secs(30);
        assert!(admit_restart(&mut times, later, &recovery));
        assert_eq!(times.len(), 1);
    }

    #[test]
    fn a_zero_budget_admits_nothing() {
        let mut times = VecDeque::new();
        assert!(!admit_restart(&mut times, Instant::now(), &config(0, 10)));
    }

    #[test]
    fn a_panicking_body_is_caught_with_its_message() {
        let caught = run_guarded("no_such_point", "", || -> u32 { panic!("boom {}", 7) });
        assert_eq!(caught, Err("boom 7".to_string()));
        let caught = run_guarded("no_such_point", "", || -> u32 { std::panic::panic_any(3u8) });
        assert_eq!(caught, Err("panic with a non-text payload".to_string()));
        assert_eq!(run_guarded("no_such_point", "", || 5), Ok(5));
    }

    #[test]
    fn restarts_are_counted_per_kind() {
        let before = (
            num_restarts(SupervisedKind::Recorder),
            num_restarts(SupervisedKind::Stream),
        );
        count_restart(SupervisedKind::Stream);
        assert_eq!(num_restarts(SupervisedKind::Stream), before.1 + 1);
        assert!(num_restarts(SupervisedKind::Recorder) >= before.0);
        assert!(totals(SupervisedKind::Stream).restarts > before.1);
    }

    #[test]
    fn a_body_running_past_the_stall_limit_is_noticed_once_per_spell() {
        let stall_after = Duration::from_secs(10);
        let probe = Progress::new(SupervisedKind::Stream);
        // Idle: never stalled, however late.
        assert!(!probe.check(1_000_000, stall_after));
        probe.enter("SupervisionTick", 5_000);
        assert!(!probe.check(5_000, stall_after));
        assert!(!probe.check(14_999, stall_after));
        assert!(probe.check(15_000, stall_after), "busy for exactly the limit");
        assert!(probe.is_stalled());
        // The same spell is counted once.
        assert!(!probe.check(30_000, stall_after));
        probe.leave();
        assert!(!probe.is_stalled());
        assert_eq!(probe.num_handled(), 1);
        // A new spell can stall again.
        probe.enter("OpenRtp", 40_000);
        assert!(probe.check(50_000, stall_after));
    }

    #[test]
    fn the_watchdog_scan_names_the_stalled_handler_and_forgets_ended_actors() {
        let stuck = Supervision::new(SupervisedKind::Recorder);
        stuck.progress.enter("StopRecorder", 0);
        let idle = Supervision::new(SupervisedKind::Recorder);
        let ended = Supervision::new(SupervisedKind::Stream);
        ended.progress.enter("OpenWhip", 0);
        let ended_probe = Arc::downgrade(&ended.progress);
        drop(ended);
        // Far in the future of the test's own probes; other tests' probes may show too.
        let stalled = scan(u64::MAX / 4, Duration::from_secs(10));
        assert!(
            stalled.contains(&(SupervisedKind::Recorder, "StopRecorder")),
            "{stalled:?}"
        );
        assert!(!stalled.iter().any(|(_, h)| *h == "OpenWhip"), "{stalled:?}");
        assert!(ended_probe.upgrade().is_none());
        assert!(!watched().iter().any(|w| w.ptr_eq(&ended_probe)));
        assert!(stuck.progress().is_stalled());
        assert!(!idle.progress().is_stalled());
        assert!(totals(SupervisedKind::Recorder).stalled_now >= 1);
    }
}
