//! The engine's clock: every timer and time stamp of the actors (recovery windows, reconnect grace,
//! restart budgets, upload retries, flush intervals, the times written into records) is read from
//! a [`Clock`], never from `Instant::now`/`Utc::now` directly, so that a test can move time on
//! instead of sleeping.
//!
//! A node runs on [`Clock::system`]: real time, nothing added. [`Clock::manual`] is the same real
//! time plus an offset that only its [`ClockControl`] moves forward; [`Clock::sleep`] wakes when
//! either real time or the offset reaches its deadline. Real time keeps flowing, so what runs on
//! its own threads (sockets, writer threads, the state store's fsync thread) keeps working while
//! the test jumps over the waits it wants to skip.
//!
//! (The RTP clock of a track, which maps media time to wall time, is `media::clock`.)

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

#[derive(Clone, Default)]
pub struct Clock {
    skew: Option<Arc<Skew>>,
}

struct Skew {
    /// Nanoseconds added to real time; only grows.
    offset_nanos: AtomicU64,
    /// Bumped at every advance, so sleepers look at the time again.
    advanced: tokio::sync::watch::Sender<u64>,
}

/// Moves a manual [`Clock`] forward (held by a test).
#[derive(Clone)]
pub struct ClockControl(Arc<Skew>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.skew {
            None => f.write_str("Clock::system"),
            Some(_) => write!(f, "Clock::manual(+{:?})", self.offset()),
        }
    }
}

impl Clock {
    /// Real time.
    pub fn system() -> Self {
        Self { skew: None }
    }

    /// Real time plus an offset moved by the returned control.
    pub fn manual() -> (Self, ClockControl) {
        let (advanced, _) = tokio::sync::watch::channel(0);
        let skew = Arc::new(Skew {
            offset_nanos: AtomicU64::new(0),
            advanced,
        });
        (
            Self {
                skew: Some(skew.clone()),
            },
            ClockControl(skew),
        )
    }

    /// How far this clock is ahead of real time (zero for the system clock).
    pub fn offset(&self) -> Duration {
        self.skew.as_ref().map_or(Duration::ZERO, |s| {
            Duration::from_nanos(s.offset_nanos.load(Ordering::Acquire))
        })
    }

    /// The monotonic time timers and budgets are measured on.
    pub fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// The wall time written into records.
    pub fn utc(&self) -> DateTime<Utc> {
        let now = Utc::now();
        match &self.skew {
            None => now,
            Some(_) => now + chrono::Duration::from_std(self.offset()).unwrap_or(chrono::Duration::zero()),
        }
    }

    /// The wall time in microseconds since the Unix epoch.
    pub fn utc_micros(&self) -> i64 {
        self.utc().timestamp_micros()
    }

    /// Resolves once `duration` has passed on this clock.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let deadline = self.now() + duration;
        let clock = self.clone();
        async move {
            let Some(skew) = clock.skew.clone() else {
                return tokio::time::sleep(duration).await;
            };
            let mut advanced = skew.advanced.subscribe();
            loop {
                let now = clock.now();
                if now >= deadline {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(deadline - now) => {}
                    changed = advanced.changed() => {
                        if changed.is_err() {
                            // The control is gone: only real time moves from now on.
                            tokio::time::sleep(deadline.saturating_duration_since(clock.now())).await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl ClockControl {
    /// Moves the clock forward by `by`; every sleep whose deadline it passes wakes.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.offset_nanos.fetch_add(nanos, Ordering::AcqRel);
        self.0.advanced.send_modify(|n| *n += 1);
    }

    /// How far the clock has been moved so far.
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.0.offset_nanos.load(Ordering::Acquire))
    }
}

/// Runs `f` on the actor after `duration` on `clock` (what `ctx.run_later` does on real time).
pub fn run_later<A, F>(clock: &Clock, ctx: &mut actix::Context<A>, duration: Duration, f: F) -> actix::SpawnHandle
where
    A: actix::Actor<Context = actix::Context<A>>,
    F: FnOnce(&mut A, &mut actix::Context<A>) + 'static,
{
    use actix::{ActorFutureExt, AsyncContext};
    ctx.spawn(actix::fut::wrap_future::<_, A>(clock.sleep(duration)).map(move |(), act, ctx| f(act, ctx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_real_time() {
        let clock = Clock::system();
        assert_eq!(clock.offset(), Duration::ZERO);
        let before = Instant::now();
        let now = clock.now();
        assert!(now >= before && now <= Instant::now());
    }

    #[test]
    fn a_manual_clock_moves_only_forward_by_its_control() {
        let (clock, control) = Clock::manual();
        let t0 = clock.now();
        let w0 = clock.utc();
        control.advance(Duration::from_secs(60));
        assert!(clock.now() - t0 >= Duration::from_secs(60));
        assert!(clock.utc() - w0 >= chrono::Duration::seconds(60));
        assert_eq!(control.offset(), Duration::from_secs(60));
        assert_eq!(clock.offset(), Duration::from_secs(60));
    }

    #[actix::test]
    async fn a_sleep_wakes_when_the_clock_is_advanced_past_it() {
        let (clock, control) = Clock::manual();
        let slept = tokio::spawn(clock.sleep(Duration::from_secs(3600)));
        tokio::task::yield_now().await;
        control.advance(Duration::from_secs(1800));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!slept.is_finished(), "woke after half its time");
        control.advance(Duration::from_secs(1800));
        tokio::time::timeout(Duration::from_secs(10), slept)
            .await
            .expect("woke once the clock passed its deadline")
            .unwrap();
    }

    #[actix::test]
    async fn a_sleep_on_the_system_clock_takes_real_time() {
        let clock = Clock::system();
        let t0 = Instant::now();
        clock.sleep(Duration::from_millis(30)).await;
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }
}
