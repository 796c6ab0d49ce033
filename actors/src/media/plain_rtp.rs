//! Plain RTP ingest (SFU forwarders, FFmpeg's `-f rtp`): one UDP port per accepted m-line (and
//! one for RTCP unless the offer asks for rtcp-mux), all read by a [`ReceivePool`]: a fixed set
//! of threads waiting on every socket at once (epoll), not a thread per m-line.
//!
//! Source policy: RTP is unauthenticated, so the first acceptable datagram latches the port to its
//! source address and port; datagrams from anywhere else are dropped and counted. Acceptable
//! means: from the offer's connection address (`c=`; an offer without one is refused unless the
//! publisher's key is trusted for any source), and an RTP packet (not RTCP, not noise) with the
//! payload type the m-line was accepted with, so stray or hostile datagrams cannot take a port.
//! Ports are drawn at random from the range, so a sender cannot guess the next session's port.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ingest::{IngestEvent, TrackCounters, TrackPump, TrackSummary};
use super::rtp::{is_rtcp, picture_loss_indication, RtpPacket, MAX_RTP_PACKET};
use super::sdp::{Accepted, MediaOffer};
use super::MediaError;

/// Hands out UDP ports from the configured range, from a random place in it, checking each by
/// binding it.
pub struct PortAllocator {
    bind_ip: IpAddr,
    min: u16,
    max: u16,
    next: Mutex<u16>,
}

impl PortAllocator {
    pub fn new(bind_ip: IpAddr, min: u16, max: u16) -> Self {
        let min = min & !1; // RTP on even ports, RTCP on the odd one above (RFC 3550 §11)
        Self {
            bind_ip,
            min,
            max: max.max(min + 1),
            next: Mutex::new(min),
        }
    }

    pub fn bind_ip(&self) -> IpAddr {
        self.bind_ip
    }

    /// Binds an even RTP port, and its odd neighbour for RTCP when `with_rtcp`.
    pub fn bind(&self, with_rtcp: bool) -> Result<(UdpSocket, Option<UdpSocket>), MediaError> {
        use rand::Rng;
        // Pairs (even RTP port, odd RTCP port) that fit in min..=max.
        let num_pairs = (u32::from(self.max) - u32::from(self.min)).div_ceil(2).max(1);
        let _serial = self.next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = rand::thread_rng().gen_range(0..num_pairs);
        for step in 0..num_pairs {
            let pair = (first + step) % num_pairs;
            let Some(port) = u16::try_from(u32::from(self.min) + 2 * pair).ok() else {
                continue;
            };
            let Ok(rtp) = bind_udp(self.bind_ip, port) else {
                continue;
            };
            if !with_rtcp {
                return Ok((rtp, None));
            }
            let Some(rtcp_port) = port.checked_add(1) else {
                continue;
            };
            if let Ok(rtcp) = bind_udp(self.bind_ip, rtcp_port) {
                return Ok((rtp, Some(rtcp)));
            }
        }
        Err(MediaError::NoPort(format!("{}-{}", self.min, self.max)))
    }

    /// Binds the ports a session had before a restart, so its sender needs no new offer.
    pub fn bind_exact(
        &self,
        rtp_port: u16,
        rtcp_port: Option<u16>,
    ) -> Result<(UdpSocket, Option<UdpSocket>), MediaError> {
        let bind =
            |port: u16| bind_udp(self.bind_ip, port).map_err(|e| MediaError::NoPort(format!("{port} is taken: {e}")));
        let rtp = bind(rtp_port)?;
        let rtcp = rtcp_port.map(bind).transpose()?;
        Ok((rtp, rtcp))
    }
}

/// Receive buffer asked for each plain-RTP socket: ~1 s of a 30 Mbit/s stream, so a receive
/// thread descheduled for a moment on a loaded machine does not cost packets. Linux caps it at
/// `net.core.rmem_max` (and doubles what it grants); the default buffer (~208 KiB) holds only
/// ~50 ms of a high-bitrate screen share.
pub const RECV_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket with [`RECV_BUFFER_BYTES`] of receive buffer (as much as the kernel grants).
fn bind_udp(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((ip, port))?;
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER_BYTES) {
        tracing::debug!(port, error = %e, "cannot enlarge the receive buffer");
    }
    Ok(socket)
}

/// One accepted m-line with its sockets, before its thread starts.
pub struct BoundMedia {
    pub accepted: Accepted,
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
    /// Only this IP may latch the ports, when the offer named one.
    pub allowed_source: Option<IpAddr>,
    /// The source the RTP port is latched to from the start (a session re-bound after a
    /// restart keeps its sender).
    pub latched_source: Option<SocketAddr>,
}

impl BoundMedia {
    pub fn bind(
        allocator: &PortAllocator,
        media: &MediaOffer,
        session_ip: Option<IpAddr>,
        accepted: Accepted,
    ) -> Result<BoundMedia, MediaError> {
        let (rtp, rtcp) = allocator.bind(!media.rtcp_mux)?;
        Ok(BoundMedia {
            accepted,
            rtp,
            rtcp,
            allowed_source: media.connection.or(session_ip),
            latched_source: None,
        })
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn rtcp_port(&self) -> u16 {
        self.rtcp
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or_else(|| self.rtp_port())
    }
}

/// The receive work of one plain-RTP session, running on the pool's threads; stopping is
/// cooperative (a flag, and a wake-up of the threads that serve it), so no socket is ever closed
/// under a read.
pub struct PlainRtpSession {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    /// One per m-line: its track id and summary once its ingest ended.
    ended: Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>>,
}

impl PlainRtpSession {
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

/// Hands each m-line of a session to the receive pool.
pub fn start(
    media: Vec<(BoundMedia, TrackPump)>,
    idle_timeout: Duration,
    work: &crate::work::WorkGroup,
    pool: &ReceivePool,
) -> Result<PlainRtpSession, MediaError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut session = PlainRtpSession {
        stop: stop.clone(),
        wakers: Vec::new(),
        ended: Vec::new(),
    };
    for (bound, pump) in media {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ingest = MediaIngest::new(bound, pump, stop.clone(), idle_timeout, tx, work.enter())?;
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
    fn assign(&self, ingest: MediaIngest) -> Result<Arc<mio::Waker>, MediaError> {
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

/// Latches a port to the first acceptable source.
struct Latch {
    allowed_ip: Option<IpAddr>,
    source: Option<SocketAddr>,
}

impl Latch {
    /// Whether a datagram from `from` is taken; an unlatched port latches to it when it comes
    /// from the allowed IP and `may_latch` (it is an RTP packet of the accepted payload type).
    fn admit(&mut self, from: SocketAddr, may_latch: bool) -> bool {
        match self.source {
            Some(source) => source == from,
            None if may_latch && self.allowed_ip.is_none_or(|ip| ip == from.ip()) => {
                self.source = Some(from);
                true
            }
            None => false,
        }
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
struct MediaIngest {
    rtp: mio::net::UdpSocket,
    rtcp: Option<mio::net::UdpSocket>,
    inbound: Inbound,
    rtcp_latch: Latch,
    stop: Arc<AtomicBool>,
    idle_timeout: Duration,
    started: Instant,
    /// Readiness seen since the last read (epoll is edge-triggered: a socket is read until empty).
    rtp_readable: bool,
    rtcp_readable: bool,
    done: Option<tokio::sync::oneshot::Sender<(String, TrackSummary)>>,
    /// Counted in the engine's work group until the ingest ended.
    #[allow(dead_code)]
    guard: crate::work::WorkGuard,
}

impl MediaIngest {
    fn new(
        bound: BoundMedia,
        pump: TrackPump,
        stop: Arc<AtomicBool>,
        idle_timeout: Duration,
        done: tokio::sync::oneshot::Sender<(String, TrackSummary)>,
        guard: crate::work::WorkGuard,
    ) -> Result<MediaIngest, MediaError> {
        let io = |e: std::io::Error| MediaError::Io(format!("cannot make a media socket non-blocking: {e}"));
        bound.rtp.set_nonblocking(true).map_err(io)?;
        if let Some(rtcp) = &bound.rtcp {
            rtcp.set_nonblocking(true).map_err(io)?;
        }
        Ok(MediaIngest {
            rtp: mio::net::UdpSocket::from_std(bound.rtp),
            rtcp: bound.rtcp.map(mio::net::UdpSocket::from_std),
            rtcp_latch: Latch {
                allowed_ip: bound.allowed_source,
                source: None,
            },
            inbound: Inbound {
                counters: pump.counters.clone(),
                payload_type: bound.accepted.payload_type,
                rtp_latch: Latch {
                    allowed_ip: bound.allowed_source,
                    source: bound.latched_source,
                },
                last_packet: None,
                pump,
            },
            stop,
            idle_timeout,
            started: Instant::now(),
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
        let idle = self.inbound.last_packet.unwrap_or(self.started) + self.idle_timeout;
        self.inbound
            .pump
            .receiver
            .next_deadline()
            .map_or(idle, |at| at.min(idle))
    }

    /// One round: reads what arrived, runs the timers, hands frames on. `Some(reason)` when the
    /// ingest ended (stopped, idle, or a socket failed); whether any datagram was read.
    fn round(&mut self, buf: &mut [u8]) -> (Option<&'static str>, bool) {
        let stopping = self.stop.load(Ordering::Acquire);
        let mut read_any = false;
        // Asked to stop: one last pass takes what the sockets still hold.
        if self.rtp_readable || stopping {
            loop {
                match self.rtp.recv_from(buf) {
                    Ok((len, from)) => {
                        read_any = true;
                        self.inbound.datagram(&buf[..len], from, Instant::now());
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
            while let Ok((len, from)) = rtcp.recv_from(buf) {
                read_any = true;
                // The RTCP port latches only to RTCP from the IP the RTP port latched to.
                let may_latch =
                    is_rtcp(&buf[..len]) && self.inbound.rtp_latch.source.is_some_and(|rtp| rtp.ip() == from.ip());
                if len <= MAX_RTP_PACKET && self.rtcp_latch.admit(from, may_latch) {
                    self.inbound.pump.receiver.push_rtcp(&buf[..len]);
                } else {
                    self.inbound.counters.num_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.rtcp_readable = false;
        }
        let now = Instant::now();
        let pump = &mut self.inbound.pump;
        let mut out = std::mem::take(pump.outputs());
        pump.receiver.poll(now, &mut out);
        *pump.outputs() = out;
        for ssrc in pump.drain(now) {
            // Feedback goes where the sender's RTCP comes from; with rtcp-mux (or before any
            // RTCP arrived) to its RTP source.
            let pli = picture_loss_indication(0, ssrc);
            match (&self.rtcp, self.rtcp_latch.source, self.inbound.rtp_latch.source) {
                (Some(sock), Some(to), _) => {
                    let _ = sock.send_to(&pli, to);
                }
                (_, _, Some(to)) => {
                    let _ = self.rtp.send_to(&pli, to);
                }
                _ => {}
            }
        }
        if stopping {
            return (Some("stopped"), read_any);
        }
        let last = self.inbound.last_packet.unwrap_or(self.started);
        if now.saturating_duration_since(last) >= self.idle_timeout {
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
        // One byte more than the limit, to tell an oversized datagram from one exactly at it.
        let mut buf = vec![0u8; MAX_RTP_PACKET + 1];
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
                let Some(ingest) = self.slots[at].as_mut() else { continue };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ingest.round(&mut buf)));
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

/// The per-datagram state of a receive thread.
struct Inbound {
    pump: TrackPump,
    counters: Arc<TrackCounters>,
    payload_type: u8,
    rtp_latch: Latch,
    last_packet: Option<Instant>,
}

impl Inbound {
    fn datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let was_latched = self.rtp_latch.source.is_some();
        // Only a packet that is RTP of the accepted payload type may latch the port.
        let may_latch =
            !was_latched && !is_rtcp(data) && RtpPacket::parse(data).is_ok_and(|p| p.payload_type == self.payload_type);
        if data.len() > MAX_RTP_PACKET || !self.rtp_latch.admit(from, may_latch) {
            self.counters.num_refused.fetch_add(1, Ordering::Relaxed);
        } else if is_rtcp(data) {
            self.pump.receiver.push_rtcp(data);
        } else {
            match RtpPacket::parse(data) {
                Ok(packet) if packet.payload_type == self.payload_type => {
                    self.last_packet = Some(now);
                    let mut out = std::mem::take(self.pump.outputs());
                    self.pump.receiver.push_rtp(packet, now, &mut out);
                    *self.pump.outputs() = out;
                }
                _ => self.pump.receiver.note_malformed(),
            }
        }
        if let (false, Some(source)) = (was_latched, self.rtp_latch.source) {
            (self.pump.events)(IngestEvent::Latched {
                session_id: self.pump.session_id.clone(),
                track_id: self.pump.track_id.clone(),
                source,
            });
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_sockets_get_a_larger_receive_buffer_than_the_default() {
        let plain = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
        let alloc = PortAllocator::new("127.0.0.1".parse().unwrap(), 47_201, 47_206);
        let (rtp, rtcp) = alloc.bind(true).unwrap();
        for socket in [&rtp, rtcp.as_ref().unwrap()] {
            let granted = socket2::SockRef::from(socket).recv_buffer_size().unwrap();
            assert!(granted > default, "{granted} bytes, the default is {default}");
        }
        let port = rtp.local_addr().unwrap().port();
        drop((rtp, rtcp));
        let (again, _) = alloc.bind_exact(port, None).unwrap();
        assert!(socket2::SockRef::from(&again).recv_buffer_size().unwrap() > default);
    }

    #[test]
    fn ports_come_in_even_pairs_from_the_range_and_run_out_cleanly() {
        let alloc = PortAllocator::new("127.0.0.1".parse().unwrap(), 47_001, 47_006);
        let (a, a_rtcp) = alloc.bind(true).unwrap();
        let port = a.local_addr().unwrap().port();
        assert_eq!(port % 2, 0);
        assert_eq!(a_rtcp.unwrap().local_addr().unwrap().port(), port + 1);
        let (b, _) = alloc.bind(false).unwrap();
        assert_ne!(b.local_addr().unwrap().port(), port);
        let _c = alloc.bind(true).unwrap();
        assert!(matches!(alloc.bind(true), Err(MediaError::NoPort(_))));
    }

    #[test]
    fn a_session_gets_its_exact_ports_back_once_they_are_free() {
        let alloc = PortAllocator::new("127.0.0.1".parse().unwrap(), 47_101, 47_110);
        let (rtp, rtcp) = alloc.bind(true).unwrap();
        let port = rtp.local_addr().unwrap().port();
        assert!(matches!(
            alloc.bind_exact(port, Some(port + 1)),
            Err(MediaError::NoPort(_))
        ));
        drop((rtp, rtcp));
        let (rtp, rtcp) = alloc.bind_exact(port, Some(port + 1)).unwrap();
        assert_eq!(rtp.local_addr().unwrap().port(), port);
        assert_eq!(rtcp.unwrap().local_addr().unwrap().port(), port + 1);
    }

    #[test]
    fn a_latch_restored_after_a_restart_admits_only_its_sender() {
        let mut latch = Latch {
            allowed_ip: None,
            source: Some("127.0.0.1:5000".parse().unwrap()),
        };
        assert!(!latch.admit("127.0.0.1:5002".parse().unwrap(), true));
        assert!(latch.admit("127.0.0.1:5000".parse().unwrap(), false));
    }

    #[test]
    fn the_first_acceptable_source_latches() {
        let mut latch = Latch {
            allowed_ip: Some("127.0.0.1".parse().unwrap()),
            source: None,
        };
        assert!(!latch.admit("127.0.0.2:5000".parse().unwrap(), true));
        // Not a packet that may latch (noise, RTCP, another payload type): refused, unlatched.
        assert!(!latch.admit("127.0.0.1:5009".parse().unwrap(), false));
        assert!(latch.source.is_none());
        assert!(latch.admit("127.0.0.1:5000".parse().unwrap(), true));
        assert!(!latch.admit("127.0.0.1:5001".parse().unwrap(), true));
        assert!(latch.admit("127.0.0.1:5000".parse().unwrap(), false));
    }

    #[test]
    fn ports_are_drawn_at_random_from_the_range_in_pairs() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let alloc = PortAllocator::new(lo, 47_100, 47_199);
        let mut held = Vec::new();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..20 {
            let (rtp, rtcp) = alloc.bind(true).unwrap();
            let port = rtp.local_addr().unwrap().port();
            assert!((47_100..=47_198).contains(&port) && port % 2 == 0, "{port}");
            assert_eq!(rtcp.as_ref().unwrap().local_addr().unwrap().port(), port + 1);
            held.push((rtp, rtcp));
        }
        // Each draw released at once: 20 draws from 50 pairs land on many places, which a
        // round robin from the start of the range would not (it would give 47100 every time).
        for _ in 0..20 {
            let (rtp, _rtcp) = alloc.bind(true).unwrap();
            firsts.insert(rtp.local_addr().unwrap().port());
        }
        drop(held);
        assert!(firsts.len() > 3, "{firsts:?}");
    }

    fn inbound(payload_type: u8, allowed_ip: &str) -> (Inbound, Arc<TrackCounters>, tempfile::TempDir) {
        use crate::media::codec::Codec;
        use crate::media::writer::{TrackWriter, WriterConfig};
        let dir = tempfile::tempdir().unwrap();
        let writer = TrackWriter::spawn(dir.path().join("t.webm"), Codec::Opus, WriterConfig::default()).unwrap();
        let counters = Arc::new(TrackCounters::default());
        let receiver = crate::media::receiver::TrackReceiver::new(Codec::Opus, Default::default(), Instant::now(), 0);
        let pump = TrackPump::new(
            "s".into(),
            "t".into(),
            receiver,
            writer.sink(),
            counters.clone(),
            Arc::new(|_| {}),
            Instant::now(),
        );
        let inbound = Inbound {
            pump,
            counters: counters.clone(),
            payload_type,
            rtp_latch: Latch {
                allowed_ip: Some(allowed_ip.parse().unwrap()),
                source: None,
            },
            last_packet: None,
        };
        (inbound, counters, dir)
    }

    fn rtp(payload_type: u8, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, payload_type & 0x7f];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&960u32.wrapping_mul(u32::from(seq)).to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&[0xf8, 0xff, 0xfe]);
        p
    }

    #[test]
    fn only_rtp_of_the_offered_payload_type_from_the_offered_ip_latches_a_port() {
        let (mut inbound, counters, _dir) = inbound(111, "127.0.0.1");
        let attacker: SocketAddr = "127.0.0.1:6666".parse().unwrap();
        let sender: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = Instant::now();
        // Noise, RTCP and RTP of another payload type do not take the port.
        inbound.datagram(b"hello, port", attacker, now);
        inbound.datagram(
            &[
                0x81, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            attacker,
            now,
        );
        inbound.datagram(&rtp(96, 1), attacker, now);
        assert!(inbound.rtp_latch.source.is_none());
        // Another IP cannot, even with good RTP.
        inbound.datagram(&rtp(111, 1), "127.0.0.9:5000".parse().unwrap(), now);
        assert!(inbound.rtp_latch.source.is_none());
        assert_eq!(counters.num_refused.load(Ordering::Relaxed), 4);
        // The sender's first packet does, and from then on only the sender is heard.
        inbound.datagram(&rtp(111, 2), sender, now);
        assert_eq!(inbound.rtp_latch.source, Some(sender));
        inbound.datagram(&rtp(111, 3), attacker, now);
        assert_eq!(counters.num_refused.load(Ordering::Relaxed), 5);
    }
}
