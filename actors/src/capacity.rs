//! Admission control: what this node takes on, so a node that is full says so (503 with
//! `Retry-After`) instead of recording every stream badly.
//!
//! The model is a budget of work in thousandths of a core ("units"): each open plain-RTP
//! session, WHIP publisher and running composition costs what the media benchmark measured for
//! it (configurable). A publish is admitted when its cost fits in what live media has left of
//! the budget and the process's measured CPU use is below its ceiling; a start when at least the
//! cheapest publish would fit. Live media is never refused because of compositions: a
//! composition runs only from what live media leaves unused (and at a lower CPU priority), so
//! it never takes capacity live media may need. Every admission is a [`CapacityPermit`] that
//! gives its units back when dropped, so no path has to remember to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::messages::IngestTransport;

/// Costs and limits, in units (1000 = one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityConfig {
    /// The node's budget.
    pub budget: u64,
    /// One open plain-RTP session (audio + video).
    pub rtp_session: u64,
    /// One WHIP publisher (ICE, DTLS, SRTP on top of the recording path).
    pub whip_session: u64,
    /// One composition running.
    pub composition: u64,
    /// New live media is refused while the process uses more than this share of the node's
    /// cores (percent, averaged over the last few seconds); 0 turns the check off.
    pub max_cpu_percent: u64,
    /// What a refusal's `Retry-After` says.
    pub retry_after_secs: u64,
}

impl CapacityConfig {
    /// Defaults from the media benchmark on a 2-core node (BENCHMARKS.md): 85 % of the cores'
    /// units for the budget.
    pub fn for_cores(cores: usize) -> Self {
        Self {
            budget: 850 * cores as u64,
            rtp_session: 4,
            whip_session: 12,
            composition: 1000,
            max_cpu_percent: 90,
            retry_after_secs: 5,
        }
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self::for_cores(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

/// Why admission was refused: the limit's configuration key, a message and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub limit: &'static str,
    pub message: String,
    pub retry_after_secs: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapacityUse {
    pub budget: u64,
    /// Units held by open live sessions.
    pub live: u64,
    /// Units held by running compositions.
    pub composition: u64,
    pub rtp_sessions: u64,
    pub whip_sessions: u64,
    pub compositions: u64,
    /// Refusals so far.
    pub num_refused: u64,
    /// The process's CPU use, permille of the node's cores.
    pub cpu_permille: u64,
    /// The node is draining: it has nothing available for new work.
    pub draining: bool,
}

impl CapacityUse {
    /// What live media may still take.
    pub fn available_live(&self) -> u64 {
        if self.draining {
            return 0;
        }
        self.budget.saturating_sub(self.live)
    }

    /// What a composition may take: what live media and the other compositions leave.
    pub fn available_composition(&self) -> u64 {
        if self.draining {
            return 0;
        }
        self.budget.saturating_sub(self.live + self.composition)
    }
}

/// What a permit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Live(IngestTransport),
    Composition,
    /// A session restored after a restart: counted whatever the budget says (it was admitted
    /// before the crash, and refusing it now would lose its media).
    Restored(IngestTransport),
}

/// The node's capacity: the budget and what holds it now.
pub struct Capacity {
    config: CapacityConfig,
    used: Mutex<CapacityUse>,
    cpu: CpuMeter,
    /// The node is going down (a SIGTERM drain): it takes no new work at all.
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Capacity({:?})", self.usage())
    }
}

impl Default for Capacity {
    fn default() -> Self {
        let config = CapacityConfig::default();
        Capacity {
            used: Mutex::new(CapacityUse {
                budget: config.budget,
                ..Default::default()
            }),
            config,
            cpu: CpuMeter::default(),
            draining: Default::default(),
        }
    }
}

impl Capacity {
    pub fn new(config: CapacityConfig) -> Arc<Capacity> {
        Arc::new(Capacity {
            used: Mutex::new(CapacityUse {
                budget: config.budget,
                ..Default::default()
            }),
            config,
            cpu: CpuMeter::default(),
            draining: Default::default(),
        })
    }

    pub fn config(&self) -> CapacityConfig {
        self.config
    }

    pub fn usage(&self) -> CapacityUse {
        let mut usage = *self.lock();
        usage.cpu_permille = self.cpu.permille();
        usage.draining = self.is_draining();
        usage
    }

    /// From now on every start and publish is refused (`draining`): the node is going down and
    /// new work belongs on another node. What is live keeps recording.
    pub fn set_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check_draining(&self, used: &mut CapacityUse) -> Result<(), Refused> {
        if !self.is_draining() {
            return Ok(());
        }
        let message = "this recorder node is shutting down (draining); try again later or another node".to_string();
        Err(self.refuse(used, "draining", message))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CapacityUse> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cost(&self, transport: IngestTransport) -> u64 {
        match transport {
            IngestTransport::Rtp => self.config.rtp_session,
            IngestTransport::Whip => self.config.whip_session,
        }
    }

    fn refuse(&self, used: &mut CapacityUse, limit: &'static str, message: String) -> Refused {
        used.num_refused += 1;
        Refused {
            limit,
            message,
            retry_after_secs: self.config.retry_after_secs.max(1),
        }
    }

    /// The CPU ceiling is on and the process is above it.
    fn over_cpu_ceiling(&self, permille: u64) -> bool {
        let ceiling = self.config.max_cpu_percent * 10;
        ceiling != 0 && permille > ceiling
    }

    /// What would refuse a new instance with `used` (a `usage()` snapshot): the limit
    /// `check_start` would name, without counting a refusal. What `/ready` says, beside the
    /// same snapshot's figures, so a balancer or an autoscaler sees a full node before a client
    /// is refused.
    pub fn start_refused_by(&self, used: &CapacityUse) -> Option<&'static str> {
        if used.draining {
            Some("draining")
        } else if used.available_live() < self.cheapest_session() {
            Some("capacity.budget")
        } else if self.over_cpu_ceiling(used.cpu_permille) {
            Some("capacity.max_cpu_percent")
        } else {
            None
        }
    }

    fn cheapest_session(&self) -> u64 {
        self.config.rtp_session.min(self.config.whip_session)
    }

    /// Refused while the CPU ceiling is on and the process is above it.
    fn check_cpu(&self, used: &mut CapacityUse) -> Result<(), Refused> {
        let permille = self.cpu.permille();
        if !self.over_cpu_ceiling(permille) {
            return Ok(());
        }
        let message = format!(
            "this recorder node is busy (CPU {}.{} % of its cores, ceiling {} %); try again later or another node",
            permille / 10,
            permille % 10,
            self.config.max_cpu_percent
        );
        Err(self.refuse(used, "capacity.max_cpu_percent", message))
    }

    /// Room for a new instance: at least the cheapest publish fits.
    pub fn check_start(&self) -> Result<(), Refused> {
        let mut used = self.lock();
        self.check_draining(&mut used)?;
        if used.available_live() < self.cheapest_session() {
            let message = format!(
                "this recorder node is at its capacity ({} of {} units used by live media); try again later or another node",
                used.live, used.budget
            );
            return Err(self.refuse(&mut used, "capacity.budget", message));
        }
        self.check_cpu(&mut used)?;
        Ok(())
    }

    /// Admits one live session of `transport`, or says why not.
    pub fn admit(self: &Arc<Self>, transport: IngestTransport) -> Result<CapacityPermit, Refused> {
        let cost = self.cost(transport);
        let mut used = self.lock();
        self.check_draining(&mut used)?;
        if used.available_live() < cost {
            let message = format!(
                "this recorder node is at its capacity: a {} session costs {cost} units and {} of {} are free; try again later or another node",
                transport_name(transport),
                used.available_live(),
                used.budget
            );
            return Err(self.refuse(&mut used, "capacity.budget", message));
        }
        self.check_cpu(&mut used)?;
        Ok(self.take(&mut used, Work::Live(transport), cost))
    }

    /// Counts a session restored after a restart, over the budget if need be.
    pub fn restored(self: &Arc<Self>, transport: IngestTransport) -> CapacityPermit {
        let cost = self.cost(transport);
        let mut used = self.lock();
        self.take(&mut used, Work::Restored(transport), cost)
    }

    /// A composition may run when its cost fits in what live media and the running compositions
    /// leave of the budget; `None` means wait.
    pub fn admit_composition(self: &Arc<Self>) -> Option<CapacityPermit> {
        let cost = self.config.composition;
        if self.is_draining() {
            // A composition claimed now could outlast the drain; it waits, durable, for the
            // node's restart (or another node).
            return None;
        }
        let mut used = self.lock();
        // One composition may always run on an idle node whose budget is below its cost.
        let fits = used.available_composition() >= cost || (used.live == 0 && used.composition == 0);
        fits.then(|| self.take(&mut used, Work::Composition, cost))
    }

    fn take(self: &Arc<Self>, used: &mut CapacityUse, work: Work, cost: u64) -> CapacityPermit {
        match work {
            Work::Live(t) | Work::Restored(t) => {
                used.live += cost;
                match t {
                    IngestTransport::Rtp => used.rtp_sessions += 1,
                    IngestTransport::Whip => used.whip_sessions += 1,
                }
            }
            Work::Composition => {
                used.composition += cost;
                used.compositions += 1;
            }
        }
        CapacityPermit {
            capacity: self.clone(),
            work,
            cost,
        }
    }
}

fn transport_name(transport: IngestTransport) -> &'static str {
    match transport {
        IngestTransport::Rtp => "plain-RTP",
        IngestTransport::Whip => "WHIP",
    }
}

/// Units held until dropped.
#[derive(Debug)]
pub struct CapacityPermit {
    capacity: Arc<Capacity>,
    work: Work,
    cost: u64,
}

impl CapacityPermit {
    pub fn work(&self) -> Work {
        self.work
    }
}

impl Drop for CapacityPermit {
    fn drop(&mut self) {
        let mut used = self.capacity.lock();
        match self.work {
            Work::Live(t) | Work::Restored(t) => {
                used.live = used.live.saturating_sub(self.cost);
                match t {
                    IngestTransport::Rtp => used.rtp_sessions = used.rtp_sessions.saturating_sub(1),
                    IngestTransport::Whip => used.whip_sessions = used.whip_sessions.saturating_sub(1),
                }
            }
            Work::Composition => {
                used.composition = used.composition.saturating_sub(self.cost);
                used.compositions = used.compositions.saturating_sub(1);
            }
        }
    }
}

/// The process's CPU use over the last few seconds, permille of the node's cores: sampled at
/// most once a second when asked (no thread of its own), over a window of [`CPU_WINDOW`].
#[derive(Default)]
struct CpuMeter {
    /// (when, process CPU µs) samples, oldest first.
    samples: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    last: AtomicU64,
}

const CPU_WINDOW: Duration = Duration::from_secs(5);

impl CpuMeter {
    fn permille(&self) -> u64 {
        let now = Instant::now();
        let Some(cpu) = process_cpu_micros() else {
            return 0;
        };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            samples.push_back((now, cpu));
        }
        while samples.len() > 1
            && samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > CPU_WINDOW * 2)
        {
            samples.pop_front();
        }
        // The oldest sample within the window (or the oldest at all), against now.
        let reference = samples
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= CPU_WINDOW)
            .or(samples.front())
            .copied();
        let Some((at, then)) = reference else { return 0 };
        let wall = now.duration_since(at).as_micros() as u64;
        if wall < 200_000 {
            // Too short to say anything new.
            return self.last.load(Ordering::Relaxed);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let permille = cpu.saturating_sub(then) * 1000 / (wall * cores);
        self.last.store(permille, Ordering::Relaxed);
        permille
    }
}

/// User + system CPU time of the whole process, µs.
fn process_cpu_micros() -> Option<u64> {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Some(micros(usage.ru_utime) + micros(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(budget: u64) -> CapacityConfig {
        CapacityConfig {
            budget,
            rtp_session: 10,
            whip_session: 30,
            composition: 50,
            max_cpu_percent: 0,
            retry_after_secs: 7,
        }
    }

    #[test]
    fn sessions_are_admitted_until_the_budget_and_given_back_when_dropped() {
        let capacity = Capacity::new(config(45));
        let a = capacity.admit(IngestTransport::Rtp).unwrap();
        let b = capacity.admit(IngestTransport::Whip).unwrap();
        assert_eq!(capacity.usage().live, 40);
        let refused = capacity.admit(IngestTransport::Rtp).unwrap_err();
        assert_eq!(refused.limit, "capacity.budget");
        assert_eq!(refused.retry_after_secs, 7);
        assert!(refused.message.contains("5 of 45 are free"), "{}", refused.message);
        assert_eq!(capacity.check_start().unwrap_err().limit, "capacity.budget");
        drop(b);
        assert!(capacity.check_start().is_ok());
        let _c = capacity.admit(IngestTransport::Rtp).unwrap();
        let usage = capacity.usage();
        assert_eq!((usage.live, usage.rtp_sessions, usage.whip_sessions), (20, 2, 0));
        assert_eq!(usage.num_refused, 2);
        drop(a);
        assert_eq!(capacity.usage().live, 10);
    }

    #[test]
    fn compositions_run_only_on_what_live_media_leaves_and_never_refuse_live_media() {
        let capacity = Capacity::new(config(100));
        let live: Vec<_> = (0..6).map(|_| capacity.admit(IngestTransport::Rtp).unwrap()).collect();
        assert!(
            capacity.admit_composition().is_none(),
            "40 left, a composition costs 50"
        );
        drop(live);
        let composing = capacity.admit_composition().expect("the node is idle");
        let second = capacity.admit_composition().expect("50 left");
        // Live media still gets the whole budget while compositions run.
        let live: Vec<_> = (0..10).map(|_| capacity.admit(IngestTransport::Rtp).unwrap()).collect();
        assert_eq!(capacity.usage().available_live(), 0);
        assert!(capacity.admit_composition().is_none());
        drop(composing);
        drop(live);
        assert_eq!(capacity.usage().composition, 50);
        assert_eq!(second.work(), Work::Composition);
    }

    #[test]
    fn a_draining_node_takes_no_new_work_and_keeps_what_it_has() {
        let capacity = Capacity::new(config(100));
        let live = capacity.admit(IngestTransport::Rtp).unwrap();
        capacity.set_draining();
        let refused = capacity.admit(IngestTransport::Whip).unwrap_err();
        assert_eq!(refused.limit, "draining");
        assert!(refused.message.contains("shutting down"), "{}", refused.message);
        assert_eq!(capacity.check_start().unwrap_err().limit, "draining");
        assert!(capacity.admit_composition().is_none());
        let usage = capacity.usage();
        assert!(usage.draining);
        assert_eq!(
            (usage.live, usage.available_live(), usage.available_composition()),
            (10, 0, 0)
        );
        // A session re-bound at boot still counts (a drain never refuses what was live).
        let _restored = capacity.restored(IngestTransport::Rtp);
        drop(live);
        assert_eq!(capacity.usage().live, 10);
    }

    #[test]
    fn restored_sessions_are_counted_even_over_the_budget() {
        let capacity = Capacity::new(config(15));
        let _a = capacity.admit(IngestTransport::Rtp).unwrap();
        let restored = capacity.restored(IngestTransport::Whip);
        assert_eq!(capacity.usage().live, 40);
        assert!(capacity.admit(IngestTransport::Rtp).is_err());
        drop(restored);
        assert!(capacity.admit(IngestTransport::Rtp).is_err(), "5 left");
        assert_eq!(capacity.usage().available_live(), 5);
    }

    #[test]
    fn a_process_using_its_cores_is_refused_by_the_cpu_ceiling() {
        let capacity = Capacity::new(CapacityConfig {
            max_cpu_percent: 1,
            ..config(1000)
        });
        let _ = capacity.usage(); // first sample
                                  // Burn ~60 % of one core of the node for 400 ms (loops the optimizer cannot drop).
        let until = Instant::now() + Duration::from_millis(400);
        let mut x = 0u64;
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert_eq!(
            capacity.start_refused_by(&capacity.usage()),
            Some("capacity.max_cpu_percent")
        );
        assert_eq!(capacity.usage().num_refused, 0, "saying it is no refusal");
        let refused = capacity.admit(IngestTransport::Rtp).unwrap_err();
        assert_eq!(refused.limit, "capacity.max_cpu_percent");
        assert!(capacity.usage().cpu_permille > 10);
    }

    #[test]
    fn what_would_refuse_a_start_is_said_without_counting_a_refusal() {
        let capacity = Capacity::new(config(25));
        assert_eq!(capacity.start_refused_by(&capacity.usage()), None);
        let _one = capacity.admit(IngestTransport::Rtp).unwrap();
        let two = capacity.admit(IngestTransport::Rtp).unwrap();
        // 5 units left, below the cheapest session.
        assert_eq!(capacity.start_refused_by(&capacity.usage()), Some("capacity.budget"));
        assert_eq!(capacity.usage().num_refused, 0);
        assert_eq!(capacity.check_start().unwrap_err().limit, "capacity.budget");
        drop(two);
        assert_eq!(capacity.start_refused_by(&capacity.usage()), None);
        capacity.set_draining();
        assert_eq!(capacity.start_refused_by(&capacity.usage()), Some("draining"));
    }
}
