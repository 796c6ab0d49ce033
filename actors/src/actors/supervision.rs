//! Actor supervision shared by the Recorder and Stream actors.
//!
//! actix does not isolate a panic inside a handler: tokio catches it, the actor's task is gone,
//! and its addresses answer `MailboxError::Closed` from then on. So each supervised handler runs
//! its body under `catch_unwind` ([`run_guarded`]); a body that panics (or whose fault point
//! returns an error) leaves the actor in an unknown state, so the actor does not go on: it
//! quiesces what it owns (ingest stopped, writers finished), tells its parent and stops. The
//! parent rebuilds it from its persisted record — the same path as a restart of the process —
//! within a restart budget ([`admit_restart`]).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::engine::RecoveryConfig;

/// The actor kinds whose restarts are counted.
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
}

/// Restarts since the process started, per kind: they outlive the actors and instances that
/// restarted (the debug tree's per-actor `restarts` leave with their actor).
static NUM_RESTARTS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Counts one restart performed by supervision.
pub fn count_restart(kind: SupervisedKind) {
    NUM_RESTARTS[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// Restarts of `kind` since the process started (writer restarts and actor rebuilds alike).
pub fn num_restarts(kind: SupervisedKind) -> u64 {
    NUM_RESTARTS[kind as usize].load(Ordering::Relaxed)
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

/// An actor whose asynchronous handler continuations (the parts of a handler that run after an
/// await: `into_actor(..).then(..)`, `ctx.spawn`, `ctx.wait`) are supervised like its handler
/// bodies: a panic there is caught by [`Guarded`] and handed to the actor, which quiesces and is
/// rebuilt by its parent.
pub trait SupervisedActor: actix::Actor<Context = actix::Context<Self>> {
    fn continuation_failed(&mut self, ctx: &mut actix::Context<Self>, handler: &'static str, message: String);
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
    }
}
