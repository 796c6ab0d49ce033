//! The engine's own threads, counted: every thread the media path and the actors start for
//! blocking work (track writers, plain-RTP receive threads, segment joins and probes, restores,
//! compositions) runs inside a [`WorkGroup`], so whoever ends an engine can wait until none is
//! left — an in-process restart (the engine harness) before it reads the files they write, and a
//! draining node before it exits.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct WorkGroup(Arc<Inner>);

#[derive(Default)]
struct Inner {
    running: Mutex<usize>,
    idle: Condvar,
}

impl std::fmt::Debug for WorkGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkGroup({} running)", self.num_running())
    }
}

/// One piece of work of a group; the group counts it until it is dropped (also when its thread
/// unwinds).
pub struct WorkGuard(WorkGroup);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        let mut running = self.0 .0.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        if *running == 0 {
            self.0 .0.idle.notify_all();
        }
    }
}

impl WorkGroup {
    pub fn enter(&self) -> WorkGuard {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        WorkGuard(self.clone())
    }

    pub fn num_running(&self) -> usize {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a named thread counted by this group.
    pub fn spawn<F, T>(&self, name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let guard = self.enter();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let _guard = guard;
            f()
        })
    }

    /// Blocks until no work of the group runs, at most `timeout`; whether it got there.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            running = self
                .0
                .idle
                .wait_timeout(running, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Nice value of background threads (compositions, reading recovered segments back): live
/// recording (ingest, writers, the API) keeps the CPU when both want it; they take what is left.
pub const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`] (Linux: per thread;
/// threads it starts, such as x264's, inherit it). Failure only costs priority, so it is logged, not fatal.
pub fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // Already as low or lower (the whole service runs niced): raising it needs privileges.
        if libc::getpriority(libc::PRIO_PROCESS, tid) >= BACKGROUND_NICE {
            return;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE)
    };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "background thread keeps normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_counts_its_threads_until_they_end_even_by_a_panic() {
        let group = WorkGroup::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let waiting = group.spawn("t", move || rx.recv().is_ok()).unwrap();
        let panicking = group.spawn("p", || panic!("boom")).unwrap();
        assert!(panicking.join().is_err());
        assert_eq!(group.num_running(), 1);
        assert!(!group.wait_idle(Duration::from_millis(20)));
        tx.send(()).unwrap();
        assert!(group.wait_idle(Duration::from_secs(10)));
        assert!(waiting.join().unwrap());
        assert_eq!(group.num_running(), 0);
    }

    #[test]
    fn composition_threads_run_below_normal_priority() {
        let thread_nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) };
        let before = thread_nice();
        let nice = std::thread::spawn(|| {
            lower_priority();
            // SAFETY: plain syscalls on the calling thread's own id.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            }
        })
        .join()
        .unwrap();
        assert_eq!(nice, BACKGROUND_NICE.max(before));
        // Only the composition thread changed.
        assert_eq!(thread_nice(), before);
    }
}
