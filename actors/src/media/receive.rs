//! The receive pool: the threads that read every plain-RTP socket of an engine. A fixed set of
//! threads, each waiting on all of its sockets at once through epoll (`mio`), instead of a thread
//! per m-line; see [`ReceivePool`]. What a datagram means (latching, RTP or RTCP) is
//! [`super::plain_rtp`]'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::datagram::{enable_arrival_stamps, keep_arrival_stamps_on, RecvBatch, RECV_BATCH, SLOT};
use super::ingest::{TrackPump, TrackSummary};
use super::plain_rtp::{
    rtcp_may_latch, BoundMedia, Greeting, Inbound, Latch, SessionActivity, EMPTY_RECEIVER_REPORT, GREETINGS,
    GREETING_INTERVAL,
};
use super::rtp::{full_intra_request, generic_nack, picture_loss_indication, MAX_RTP_PACKET};
use super::MediaError;

/// The receive work of one plain-RTP session, running on the pool's threads; stopping is
/// cooperative (a flag, and a wake-up of the threads that serve it), so no socket is ever closed
/// under a read.
pub struct PlainRtpSession {
    stop: Arc<AtomicBool>,
    activity: Arc<SessionActivity>,
    wakers: Vec<Arc<mio::Waker>>,
    /// One per m-line: its track id and summary once its ingest ended.
    ended: Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>>,
}

impl PlainRtpSession {
    pub fn activity(&self) -> &SessionActivity {
        &self.activity
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    /// Stops the session; the receivers resolve as each m-line's ingest ends (at its thread's
    /// next round, at once since the stop wakes it).
    pub fn stop_and_wait(mut self) -> Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>> {
        self.stop();
        std::mem::take(&mut self.ended)
    }
}

impl Drop for PlainRtpSession {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands each m-line of a session to the receive pool. The session ends by itself only when
/// none of its m-lines received anything for `idle_timeout`.
pub fn start(
    media: Vec<(BoundMedia, TrackPump)>,
    idle_timeout: Duration,
    work: &crate::work::WorkGroup,
    pool: &ReceivePool,
) -> Result<PlainRtpSession, MediaError> {
    let stop = Arc::new(AtomicBool::new(false));
    let activity = Arc::new(SessionActivity::new(idle_timeout));
    let mut session = PlainRtpSession {
        stop: stop.clone(),
        activity: activity.clone(),
        wakers: Vec::new(),
        ended: Vec::new(),
    };
    for (bound, pump) in media {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ingest = MediaIngest::new(bound, pump, stop.clone(), activity.clone(), tx, work.enter())?;
        let waker = pool.assign(ingest)?;
        session.ended.push(rx);
        if !session.wakers.iter().any(|w| Arc::ptr_eq(w, &waker)) {
            session.wakers.push(waker);
        }
    }
    Ok(session)
}

/// The threads that read every plain-RTP socket of an engine: a fixed set, each waiting on all
/// of its sockets at once (epoll through `mio`), instead of a thread per m-line. While media
/// flows a thread works in rounds of [`RECEIVE_BATCH`]: it reads every socket that became
/// readable (each until empty, the socket buffer holding seconds of media), runs every track's
/// timers and hands frames to the writers, then sleeps the rest of the round; so it wakes ~25
/// times a second whatever the number of streams. Idle, it sleeps in epoll until a datagram
/// arrives or a timer is due.
#[derive(Clone)]
pub struct ReceivePool(Arc<Vec<ReceiveThread>>);

struct ReceiveThread {
    control: Mutex<std::sync::mpsc::Sender<Box<MediaIngest>>>,
    waker: Arc<mio::Waker>,
    /// m-lines this thread serves now.
    load: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for ReceivePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceivePool({} threads, {} m-lines)", self.0.len(), self.num_media())
    }
}

impl Default for ReceivePool {
    /// The process-wide pool, one thread per core (tests and tools; the service sizes its own).
    fn default() -> Self {
        static SHARED: std::sync::OnceLock<ReceivePool> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| ReceivePool::new(0).expect("the receive pool starts"))
            .clone()
    }
}

/// The token of a thread's waker; sockets have `2 * slot` (RTP) and `2 * slot + 1` (RTCP).
const WAKER: mio::Token = mio::Token(usize::MAX);

impl ReceivePool {
    /// A pool of `threads` receive threads (0: one per core), started now.
    pub fn new(threads: usize) -> std::io::Result<ReceivePool> {
        keep_arrival_stamps_on();
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let mut started = Vec::new();
        for i in 0..threads {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = std::sync::mpsc::channel();
            let load = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let thread_load = load.clone();
            std::thread::Builder::new()
                .name(format!("rtp-receive-{i}"))
                .spawn(move || ReceiveLoop::new(poll, rx, thread_load).run())?;
            started.push(ReceiveThread {
                control: Mutex::new(tx),
                waker,
                load,
            });
        }
        Ok(ReceivePool(Arc::new(started)))
    }

    pub fn num_threads(&self) -> usize {
        self.0.len()
    }

    /// m-lines being received now.
    pub fn num_media(&self) -> usize {
        self.0.iter().map(|t| t.load.load(Ordering::Relaxed)).sum()
    }

    /// Gives an m-line to the least loaded thread; its waker.
    pub(super) fn assign(&self, ingest: MediaIngest) -> Result<Arc<mio::Waker>, MediaError> {
        let thread = self
            .0
            .iter()
            .min_by_key(|t| t.load.load(Ordering::Relaxed))
            .ok_or_else(|| MediaError::Io("the receive pool has no thread".into()))?;
        thread.load.fetch_add(1, Ordering::Relaxed);
        let sent = thread
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(ingest));
        if sent.is_err() {
            thread.load.fetch_sub(1, Ordering::Relaxed);
            return Err(MediaError::Io("the receive thread is gone".into()));
        }
        let _ = thread.waker.wake();
        Ok(thread.waker.clone())
    }
}

/// While media flows, a receive thread works in rounds this long: it reads everything that
/// arrived meanwhile (the socket buffers hold seconds of it), then sleeps the rest of the round,
/// so it wakes ~25 times a second whatever the packet rate and the number of sockets. 40 ms is
/// far below the reorder window and the writer's flush.
pub const RECEIVE_BATCH: Duration = Duration::from_millis(40);

/// The longest an idle receive thread sleeps in epoll before it looks at stop flags and timers.
const IDLE_WAIT: Duration = Duration::from_millis(50);

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// One m-line on a receive thread: its sockets, latches, receiver and writer.
pub(super) struct MediaIngest {
    rtp: mio::net::UdpSocket,
    rtcp: Option<mio::net::UdpSocket>,
    inbound: Inbound,
    rtcp_latch: Latch,
    stop: Arc<AtomicBool>,
    /// The session's last datagram on any of its m-lines, and its idle limit.
    activity: Arc<SessionActivity>,
    /// Greetings left for a sender that waits to hear from us (see [`Greeting`]).
    greeting: Option<Greeting>,
    /// A sender that takes keyframe requests as FIR only: the last FIR's sequence number.
    fir_sequence: Option<u8>,
    /// Readiness seen since the last read (epoll is edge-triggered: a socket is read until empty).
    rtp_readable: bool,
    rtcp_readable: bool,
    done: Option<tokio::sync::oneshot::Sender<(String, TrackSummary)>>,
    /// Counted in the engine's work group until the ingest ended.
    #[allow(dead_code)]
    guard: crate::work::WorkGuard,
}

impl MediaIngest {
    pub(super) fn new(
        bound: BoundMedia,
        pump: TrackPump,
        stop: Arc<AtomicBool>,
        activity: Arc<SessionActivity>,
        done: tokio::sync::oneshot::Sender<(String, TrackSummary)>,
        guard: crate::work::WorkGuard,
    ) -> Result<MediaIngest, MediaError> {
        let io = |e: std::io::Error| MediaError::Io(format!("cannot make a media socket non-blocking: {e}"));
        bound.rtp.set_nonblocking(true).map_err(io)?;
        // The kernel stamps each datagram as it arrives: a round reads up to 40 ms later, and the
        // receiver's arrival clock (the wall time of frames before a sender report) must not
        // carry that delay.
        if let Err(e) = enable_arrival_stamps(&bound.rtp) {
            tracing::debug!(error = %e, "no kernel receive timestamps: arrival is the read time");
        }
        if let Some(rtcp) = &bound.rtcp {
            rtcp.set_nonblocking(true).map_err(io)?;
        }
        let greeting = bound
            .greet
            .filter(|_| bound.latched_source.is_none())
            .map(|(rtp, rtcp)| Greeting {
                rtp,
                rtcp,
                left: GREETINGS,
                next: Instant::now(),
            });
        Ok(MediaIngest {
            greeting,
            fir_sequence: bound.accepted.fir.then_some(0),
            rtp: mio::net::UdpSocket::from_std(bound.rtp),
            rtcp: bound.rtcp.map(mio::net::UdpSocket::from_std),
            rtcp_latch: Latch {
                allowed_ip: bound.allowed_source,
                source: None,
            },
            inbound: Inbound {
                counters: pump.counters.clone(),
                payload_type: bound.accepted.payload_type,
                aux: bound.accepted.aux,
                rtp_latch: Latch {
                    allowed_ip: bound.allowed_source,
                    source: bound.latched_source,
                },
                last_packet: None,
                pump,
            },
            stop,
            activity,
            // Datagrams may have arrived before the sockets were registered.
            rtp_readable: true,
            rtcp_readable: true,
            done: Some(done),
            guard,
        })
    }

    /// The next moment this ingest needs a round without any datagram: a receiver timer or its
    /// idle timeout.
    fn next_deadline(&self) -> Instant {
        let idle = self.activity.last() + self.activity.idle_limit();
        let idle = self.greeting.as_ref().map_or(idle, |g| g.next.min(idle));
        self.inbound
            .pump
            .receiver
            .next_deadline()
            .map_or(idle, |at| at.min(idle))
    }

    /// Greets a sender that waits to hear from its peer, until the RTP port latched.
    fn greet(&mut self, now: Instant) {
        if self.inbound.rtp_latch.source.is_some() {
            self.greeting = None;
            return;
        }
        let Some(greeting) = self.greeting.as_mut().filter(|g| now >= g.next) else {
            return;
        };
        let _ = self.rtp.send_to(&EMPTY_RECEIVER_REPORT, greeting.rtp);
        if let (Some(sock), Some(to)) = (&self.rtcp, greeting.rtcp) {
            let _ = sock.send_to(&EMPTY_RECEIVER_REPORT, to);
        }
        greeting.left -= 1;
        greeting.next = now + GREETING_INTERVAL;
        if greeting.left == 0 {
            self.greeting = None;
        }
    }

    /// One round: reads what arrived, runs the timers, hands frames on. `Some(reason)` when the
    /// ingest ended (stopped, idle, or a socket failed); whether any datagram was read.
    fn round(&mut self, batch: &mut RecvBatch) -> (Option<&'static str>, bool) {
        let stopping = self.stop.load(Ordering::Acquire);
        let mut read_any = false;
        // Asked to stop: one last pass takes what the sockets still hold. A batch that comes
        // back short emptied the socket: a datagram arriving later is a new epoll edge.
        if self.rtp_readable || stopping {
            loop {
                match batch.recv(&self.rtp) {
                    Ok(n) => {
                        read_any |= n > 0;
                        for (datagram, from, arrived) in batch.datagrams() {
                            self.inbound.datagram(datagram, from, arrived);
                        }
                        if n < RECV_BATCH {
                            break;
                        }
                    }
                    Err(e) if is_timeout(&e) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, track_id = %self.inbound.pump.track_id, "rtp socket failed");
                        return (Some("socket error"), read_any);
                    }
                }
            }
            self.rtp_readable = false;
        }
        if let (Some(rtcp), true) = (&self.rtcp, self.rtcp_readable || stopping) {
            let buf = &mut batch.bufs[..SLOT];
            while let Ok((len, from)) = rtcp.recv_from(buf) {
                read_any = true;
                let may_latch = rtcp_may_latch(
                    &buf[..len],
                    from,
                    self.inbound.rtp_latch.source,
                    self.rtcp_latch.allowed_ip,
                );
                if len <= MAX_RTP_PACKET && self.rtcp_latch.admit(from, may_latch) {
                    self.inbound.pump.receiver.push_rtcp(&buf[..len]);
                    // A sender on hold that goes on sending reports is still there.
                    self.activity.touch(Instant::now());
                } else {
                    self.inbound.counters.num_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.rtcp_readable = false;
        }
        let now = Instant::now();
        self.greet(now);
        let pump = &mut self.inbound.pump;
        let mut out = std::mem::take(pump.outputs());
        pump.receiver.poll(now, &mut out);
        *pump.outputs() = out;
        let fir = &mut self.fir_sequence;
        let plis: Vec<Vec<u8>> = pump
            .drain(now)
            .into_iter()
            .map(|ssrc| match fir {
                Some(sequence) => {
                    *sequence = sequence.wrapping_add(1);
                    full_intra_request(0, ssrc, *sequence).to_vec()
                }
                None => picture_loss_indication(0, ssrc).to_vec(),
            })
            .collect();
        let nacks = pump
            .take_nacks()
            .into_iter()
            .map(|(ssrc, sequences)| generic_nack(0, ssrc, &sequences));
        for feedback in plis.into_iter().chain(nacks) {
            // Feedback goes where the sender's RTCP comes from; with rtcp-mux (or before any
            // RTCP arrived) to its RTP source.
            match (&self.rtcp, self.rtcp_latch.source, self.inbound.rtp_latch.source) {
                (Some(sock), Some(to), _) => {
                    let _ = sock.send_to(&feedback, to);
                }
                (_, _, Some(to)) => {
                    let _ = self.rtp.send_to(&feedback, to);
                }
                _ => {}
            }
        }
        if stopping {
            return (Some("stopped"), read_any);
        }
        if let Some(last) = self.inbound.last_packet {
            self.activity.touch(last);
        }
        if self.activity.is_idle(now) {
            return (Some("idle"), read_any);
        }
        (None, read_any)
    }

    /// The ports are free before the end is reported (a supervised restart re-binds them).
    fn end(self, registry: &mio::Registry, reason: &str) {
        let MediaIngest {
            mut rtp,
            rtcp,
            inbound,
            done,
            guard,
            ..
        } = self;
        let _ = registry.deregister(&mut rtp);
        drop(rtp);
        if let Some(mut rtcp) = rtcp {
            let _ = registry.deregister(&mut rtcp);
        }
        let pump = inbound.pump;
        tracing::info!(track_id = %pump.track_id, reason, "rtp ingest ended");
        let track_id = pump.track_id.clone();
        let summary = pump.end(reason);
        if let Some(done) = done {
            let _ = done.send((track_id, summary));
        }
        drop(guard);
    }
}

/// A receive thread: its epoll, its m-lines (a slab indexed by token / 2).
struct ReceiveLoop {
    poll: mio::Poll,
    control: std::sync::mpsc::Receiver<Box<MediaIngest>>,
    load: Arc<std::sync::atomic::AtomicUsize>,
    slots: Vec<Option<MediaIngest>>,
    free: Vec<usize>,
}

impl ReceiveLoop {
    fn new(
        poll: mio::Poll,
        control: std::sync::mpsc::Receiver<Box<MediaIngest>>,
        load: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        Self {
            poll,
            control,
            load,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn add(&mut self, mut ingest: MediaIngest) {
        let at = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let registry = self.poll.registry();
        let mut registered = registry.register(&mut ingest.rtp, mio::Token(2 * at), mio::Interest::READABLE);
        if let (Ok(()), Some(rtcp)) = (&registered, ingest.rtcp.as_mut()) {
            registered = registry.register(rtcp, mio::Token(2 * at + 1), mio::Interest::READABLE);
        }
        if let Err(e) = registered {
            tracing::error!(error = %e, "cannot watch a media socket");
            self.free.push(at);
            self.load.fetch_sub(1, Ordering::Relaxed);
            ingest.end(registry, "socket error");
            return;
        }
        self.slots[at] = Some(ingest);
    }

    fn run(mut self) {
        let mut events = mio::Events::with_capacity(1024);
        let mut batch = RecvBatch::new();
        let mut flowing_until: Option<Instant> = None;
        loop {
            let round_start = Instant::now();
            let next = self
                .slots
                .iter()
                .flatten()
                .map(MediaIngest::next_deadline)
                .min()
                .map_or(IDLE_WAIT, |at| at.saturating_duration_since(round_start))
                .clamp(Duration::from_millis(1), IDLE_WAIT);
            if let Err(e) = self.poll.poll(&mut events, Some(next)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "epoll failed");
                    std::thread::sleep(IDLE_WAIT);
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    continue;
                }
                if let Some(Some(ingest)) = self.slots.get_mut(token.0 / 2) {
                    if token.0 % 2 == 0 {
                        ingest.rtp_readable = true;
                    } else {
                        ingest.rtcp_readable = true;
                    }
                }
            }
            loop {
                match self.control.try_recv() {
                    Ok(ingest) => self.add(*ingest),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    // The pool is gone; the thread serves what it has until each ends.
                    Err(std::sync::mpsc::TryRecvError::Disconnected) if self.slots.iter().all(Option::is_none) => {
                        return
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                }
            }
            let mut read_any = false;
            for at in 0..self.slots.len() {
                let Some(ingest) = self.slots[at].as_mut() else {
                    continue;
                };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ingest.round(&mut batch)));
                let ended = match outcome {
                    Ok((ended, read)) => {
                        read_any |= read;
                        ended
                    }
                    Err(_) => {
                        // Only this m-line is lost; its end channel closes without a summary.
                        tracing::error!(track_id = %ingest.inbound.pump.track_id, "rtp ingest panicked");
                        let mut lost = self.slots[at].take().expect("present above");
                        let _ = self.poll.registry().deregister(&mut lost.rtp);
                        if let Some(rtcp) = lost.rtcp.as_mut() {
                            let _ = self.poll.registry().deregister(rtcp);
                        }
                        self.free.push(at);
                        self.load.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if let Some(reason) = ended {
                    let ingest = self.slots[at].take().expect("present above");
                    self.free.push(at);
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    ingest.end(self.poll.registry(), reason);
                }
            }
            // Media flowing: the rest of the round lets datagrams gather in the socket buffers
            // instead of waking for each (a stop still wakes the thread at once: its waker).
            let now = Instant::now();
            if read_any {
                flowing_until = Some(now + Duration::from_millis(200));
            }
            if flowing_until.is_some_and(|until| now < until) {
                let nap = RECEIVE_BATCH.saturating_sub(now.saturating_duration_since(round_start));
                let nap = self
                    .slots
                    .iter()
                    .flatten()
                    .map(|i| i.next_deadline().saturating_duration_since(now))
                    .min()
                    .map_or(nap, |d| d.min(nap));
                if !nap.is_zero() {
                    std::thread::sleep(nap);
                }
            }
        }
    }
}
