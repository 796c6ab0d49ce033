//! The receive pool: the threads that read every plain-RTP socket of an engine. A fixed set of
//! threads, each waiting on all of its sockets at once through epoll (`mio`), instead of a thread
//! per m-line; see [`ReceivePool`]. What a datagram means (latching, RTP or RTCP) is
//! [`super::plain_rtp`]'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ingest::{TrackPump, TrackSummary};
use super::plain_rtp::{BoundMedia, Inbound, Latch};
use super::rtp::{is_rtcp, picture_loss_indication, MAX_RTP_PACKET};
use super::MediaError;

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

/// Asks the kernel to stamp every datagram with its arrival time (`SO_TIMESTAMPNS`).
/// Linux turns receive timestamps on machine-wide from a deferred work item when the first
/// socket of the machine asks for them, and off again (deferred too) when the last one closes:
/// a datagram that arrives in between is stamped when it is read, up to a round late. One
/// socket with the option, held for the life of the process from the pool's creation, keeps
/// them on, so the first session of a node and every one after it get arrival times.
fn keep_arrival_stamps_on() {
    static KEEPER: std::sync::OnceLock<Option<std::net::UdpSocket>> = std::sync::OnceLock::new();
    KEEPER.get_or_init(|| {
        let kept = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|socket| enable_arrival_stamps(&socket).map(|()| socket));
        match kept {
            Ok(socket) => Some(socket),
            Err(err) => {
                tracing::warn!(error = %err, "receive timestamps not held on; early datagrams may be stamped when read");
                None
            }
        }
    });
}

fn enable_arrival_stamps(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One datagram with its source and its arrival: the kernel's stamp when the socket has them
/// (on the monotonic clock: now minus how long ago the stamp was), else the read time.
fn recv_stamped(
    socket: &mio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr, Instant)> {
    use std::os::fd::AsRawFd;
    // SAFETY: every pointer in `msg` points into locals that outlive the call; the control
    // buffer is u64-aligned as cmsghdr needs; CMSG_* walk only within msg_controllen.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let len = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let now = Instant::now();
        let mut arrived = now;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let stamp = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                let stamp = std::time::UNIX_EPOCH
                    + Duration::new(stamp.tv_sec.max(0) as u64, stamp.tv_nsec.clamp(0, 999_999_999) as u32);
                if let Ok(age) = std::time::SystemTime::now().duration_since(stamp) {
                    // A stamp from the future (the wall clock stepped) is no better than now.
                    arrived = now.checked_sub(age.min(Duration::from_secs(5))).unwrap_or(now);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from: std::net::SocketAddr = match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let v4 = &*(&addr as *const _ as *const libc::sockaddr_in);
                std::net::SocketAddrV4::new(u32::from_be(v4.sin_addr.s_addr).into(), u16::from_be(v4.sin_port)).into()
            }
            libc::AF_INET6 => {
                let v6 = &*(&addr as *const _ as *const libc::sockaddr_in6);
                std::net::SocketAddrV6::new(
                    v6.sin6_addr.s6_addr.into(),
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )
                .into()
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a datagram from a non-IP address",
                ))
            }
        };
        Ok((len as usize, from, arrived))
    }
}

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
    pub(super) fn new(
        bound: BoundMedia,
        pump: TrackPump,
        stop: Arc<AtomicBool>,
        idle_timeout: Duration,
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
                match recv_stamped(&self.rtp, buf) {
                    Ok((len, from, arrived)) => {
                        read_any = true;
                        self.inbound.datagram(&buf[..len], from, arrived);
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
                let Some(ingest) = self.slots[at].as_mut() else {
                    continue;
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_read_late_keeps_the_time_it_arrived() {
        keep_arrival_stamps_on();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_arrival_stamps(&receiver).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let receiver = mio::net::UdpSocket::from_std(receiver);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel turns receive timestamps on for the whole machine from a deferred work item
        // the first time a socket asks; until it has run, a datagram is stamped when it is read.
        // Wait for that (a datagram read 30 ms late must keep its earlier time), as a long-lived
        // node does once at its first session.
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let probe_at = Instant::now();
            sender.send_to(b"probe", receiver.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let (_, _, arrived) = recv_stamped(&receiver, &mut buf).unwrap();
            if arrived < probe_at + Duration::from_millis(20) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the kernel never stamped a datagram on arrival"
            );
        }
        let sent_at = Instant::now();
        sender.send_to(b"rtp", receiver.local_addr().unwrap()).unwrap();
        // A round reads it 120 ms later.
        std::thread::sleep(Duration::from_millis(120));
        let read_at = Instant::now();
        let (len, from, arrived) = recv_stamped(&receiver, &mut buf).unwrap();
        assert_eq!((&buf[..len], from), (&b"rtp"[..], sender.local_addr().unwrap()));
        assert!(
            arrived < sent_at + Duration::from_millis(50),
            "arrived {:?} after sending, read {:?} after",
            arrived - sent_at,
            read_at - sent_at
        );
        assert!(arrived + Duration::from_millis(5) >= sent_at, "not before it was sent");
    }
}
