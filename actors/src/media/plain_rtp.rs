//! Plain RTP ingest (SFU forwarders, FFmpeg's `-f rtp`): one UDP port per accepted m-line (and
//! one for RTCP unless the offer asks for rtcp-mux), all read by a [`ReceivePool`]: a fixed set
//! of threads waiting on every socket at once (epoll), not a thread per m-line (`receive.rs`).
//!
//! Source policy: RTP is unauthenticated, so the first acceptable datagram latches the port to its
//! source address and port; datagrams from anywhere else are dropped and counted. Acceptable
//! means: from the offer's connection address (`c=`; an offer without one is refused unless the
//! publisher's key is trusted for any source), and an RTP packet (not RTCP, not noise) with the
//! payload type the m-line was accepted with, so stray or hostile datagrams cannot take a port.
//! Ports are drawn at random from the range, so a sender cannot guess the next session's port.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ingest::{IngestEvent, TrackCounters, TrackPump};
use super::rtp::{is_rtcp, RtpPacket, MAX_RTP_PACKET};
use super::sdp::{Accepted, AuxPayloads, MediaOffer};
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
    /// Where the offer says the sender receives (RTP, RTCP): greeted until the port latches,
    /// for a sender that sends only once it heard from its peer.
    pub greet: Option<(SocketAddr, Option<SocketAddr>)>,
    /// H.264 parameter sets the offer carried.
    pub parameter_sets: Vec<Vec<u8>>,
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
            greet: media.sender_addresses(session_ip),
            parameter_sets: media.h264_parameter_sets(accepted.payload_type),
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

/// Latches a port to the first acceptable source.
pub(super) struct Latch {
    pub(super) allowed_ip: Option<IpAddr>,
    pub(super) source: Option<SocketAddr>,
}

impl Latch {
    /// Whether a datagram from `from` is taken; an unlatched port latches to it when it comes
    /// from the allowed IP and `may_latch` (it is an RTP packet of the accepted payload type).
    pub(super) fn admit(&mut self, from: SocketAddr, may_latch: bool) -> bool {
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

/// The per-datagram state of a receive thread.
pub(super) struct Inbound {
    pub(super) pump: TrackPump,
    pub(super) counters: Arc<TrackCounters>,
    pub(super) payload_type: u8,
    /// DTMF, comfort noise and RED beside the media (the receiver sorts them out).
    pub(super) aux: AuxPayloads,
    pub(super) rtp_latch: Latch,
    pub(super) last_packet: Option<Instant>,
}

impl Inbound {
    /// Whether RTP of `payload_type` belongs to this m-line.
    fn takes(&self, payload_type: u8) -> bool {
        payload_type == self.payload_type || self.aux.payload_types().any(|p| p == payload_type)
    }

    pub(super) fn datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let was_latched = self.rtp_latch.source.is_some();
        // Only a packet that is RTP of an accepted payload type may latch the port.
        let may_latch =
            !was_latched && !is_rtcp(data) && RtpPacket::parse(data).is_ok_and(|p| self.takes(p.payload_type));
        if data.len() > MAX_RTP_PACKET || !self.rtp_latch.admit(from, may_latch) {
            self.counters.num_refused.fetch_add(1, Ordering::Relaxed);
        } else if is_rtcp(data) {
            self.pump.receiver.push_rtcp(data);
        } else {
            match RtpPacket::parse(data) {
                Ok(packet) if self.takes(packet.payload_type) => {
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

/// When any m-line of a session last received a datagram: a session ends as idle only once
/// all of its m-lines have been silent for the idle limit, never one m-line alone (a customer
/// on hold sends no audio while the agent's video goes on; a muted agent sends nothing at all
/// for minutes). Shared by the session's ingests, read by its stream's snapshot.
#[derive(Debug)]
pub struct SessionActivity {
    base: Instant,
    /// Micros after `base` of the newest datagram (0: none yet).
    last_micros: std::sync::atomic::AtomicU64,
    idle_limit: Duration,
}

impl SessionActivity {
    pub(super) fn new(idle_limit: Duration) -> Self {
        Self {
            base: Instant::now(),
            last_micros: std::sync::atomic::AtomicU64::new(0),
            idle_limit,
        }
    }

    pub(super) fn touch(&self, at: Instant) {
        let micros = at.saturating_duration_since(self.base).as_micros() as u64;
        self.last_micros.fetch_max(micros.max(1), Ordering::Relaxed);
    }

    /// The newest datagram of the session, or its start.
    pub(super) fn last(&self) -> Instant {
        self.base + Duration::from_micros(self.last_micros.load(Ordering::Relaxed))
    }

    /// How long the session has received nothing (since its start when nothing came yet).
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last())
    }

    pub fn idle_limit(&self) -> Duration {
        self.idle_limit
    }

    pub(super) fn is_idle(&self, now: Instant) -> bool {
        self.silent_for(now) >= self.idle_limit
    }
}

/// A sender that learns where to send from the first packet it receives (mediasoup's
/// PlainTransport with `comedia`, a NAT'd gateway with symmetric RTP) waits for the recorder to
/// speak first: until its port latches, the recorder sends an empty RTCP receiver report from its
/// RTP port (and from its RTCP port) to where the offer says the sender listens.
pub(super) struct Greeting {
    pub(super) rtp: std::net::SocketAddr,
    pub(super) rtcp: Option<std::net::SocketAddr>,
    pub(super) left: u8,
    pub(super) next: Instant,
}

/// Greetings sent at most, one a second: a sender that has not started after 10 s is not
/// waiting for us.
pub(super) const GREETINGS: u8 = 10;
pub(super) const GREETING_INTERVAL: Duration = Duration::from_secs(1);

/// RTCP RR with no report block (RFC 3550 §6.4.2): V=2, RC=0, PT=201, length 1, SSRC.
pub(super) const EMPTY_RECEIVER_REPORT: [u8; 8] = [0x80, 201, 0, 1, 0x72, 0x65, 0x63, 0x31];

/// Whether a datagram on an unlatched RTCP port may latch it, so that keyframe requests go to
/// where the sender reads RTCP. RTCP does; so does the probe an SFU forwarder sends from its RTCP
/// socket before any media to open that path (Janus' `rtp_forward` with `rtcp_port`: two empty
/// 12-byte RTP headers, payload type 0, from a socket other than the one its RTP leaves from,
/// which Janus never reads). Either must come from the IP the RTP port latched to, or, before
/// RTP came, from the offer's address (an offer without one needs a key trusted for any source).
pub(super) fn rtcp_may_latch(
    datagram: &[u8],
    from: std::net::SocketAddr,
    rtp_source: Option<std::net::SocketAddr>,
    allowed_ip: Option<std::net::IpAddr>,
) -> bool {
    let is_probe = datagram.len() == 12 && datagram[0] >> 6 == 2;
    let shape = is_rtcp(datagram) || is_probe;
    let ip_ok = match rtp_source {
        Some(rtp) => rtp.ip() == from.ip(),
        None => allowed_ip.is_none_or(|ip| ip == from.ip()),
    };
    shape && ip_ok
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
            aux: AuxPayloads::default(),
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

#[cfg(test)]
mod rtcp_latch_tests {
    use super::rtcp_may_latch;

    #[test]
    fn the_rtcp_port_latches_to_rtcp_or_a_forwarders_probe_from_the_senders_ip() {
        let janus_rtcp: std::net::SocketAddr = "10.0.0.5:51234".parse().unwrap();
        let janus_rtp: std::net::SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let probe = [0x80u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
        let offer_ip = Some("10.0.0.5".parse().unwrap());
        // Janus' probes come before any media: the offer's address allows them.
        assert!(rtcp_may_latch(&probe, janus_rtcp, None, offer_ip));
        assert!(rtcp_may_latch(&rr, janus_rtcp, Some(janus_rtp), offer_ip));
        // From elsewhere, or noise, or a media packet: never.
        assert!(!rtcp_may_latch(&probe, "10.0.0.6:1".parse().unwrap(), None, offer_ip));
        assert!(!rtcp_may_latch(
            &probe,
            "10.0.0.6:1".parse().unwrap(),
            Some(janus_rtp),
            None
        ));
        assert!(!rtcp_may_latch(b"hello, port!", janus_rtcp, None, offer_ip));
        let mut media = vec![0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        media.extend_from_slice(&[1, 2, 3]);
        assert!(!rtcp_may_latch(&media, janus_rtcp, None, offer_ip));
    }
}
