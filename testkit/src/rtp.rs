//! A plain-RTP publisher for tests: replays RTP that FFmpeg really sent (the recorded fixtures of
//! `actors/src/media/fixtures/`, made by `scripts/capture-rtp-fixture.py`) to a recorder's ports on
//! loopback, paced in real time as it was captured, looped as long as asked (sequence numbers and
//! timestamps carried on, so the stream is one continuous one). It says exactly what it sent:
//! packets, frames, the media time they span and when the first left, which is what the fidelity
//! tests hold the files to.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A recorded fixture: (arrival µs since the first datagram, datagram), RTCP included.
#[derive(Clone)]
pub struct Fixture {
    pub name: &'static str,
    pub datagrams: Vec<(u64, Vec<u8>)>,
    /// RTP clock rate of the payload.
    pub clock_rate: u32,
    /// How an SDP offer names the payload (`VP8/90000`, `opus/48000/2`, ...).
    pub rtpmap: &'static str,
    pub media: &'static str,
}

impl Fixture {
    /// `vp8`, `vp9`, `h264` (2 s of 30 fps video) or `opus` (2 s of 20 ms frames).
    pub fn load(name: &str) -> Fixture {
        let (name, bytes, clock_rate, rtpmap, media): (&'static str, &[u8], u32, &'static str, &'static str) =
            match name {
                "vp8" => (
                    "vp8",
                    include_bytes!("../../actors/src/media/fixtures/vp8.rtp"),
                    90_000,
                    "VP8/90000",
                    "video",
                ),
                "vp9" => (
                    "vp9",
                    include_bytes!("../../actors/src/media/fixtures/vp9.rtp"),
                    90_000,
                    "VP9/90000",
                    "video",
                ),
                "h264" => (
                    "h264",
                    include_bytes!("../../actors/src/media/fixtures/h264.rtp"),
                    90_000,
                    "H264/90000",
                    "video",
                ),
                "opus" => (
                    "opus",
                    include_bytes!("../../actors/src/media/fixtures/opus.rtp"),
                    48_000,
                    "opus/48000/2",
                    "audio",
                ),
                other => panic!("no fixture {other}"),
            };
        let mut datagrams = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 6 {
            let at = u64::from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
            let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
            datagrams.push((at, rest[6..6 + len].to_vec()));
            rest = &rest[6 + len..];
        }
        Fixture {
            name,
            datagrams,
            clock_rate,
            rtpmap,
            media,
        }
    }

    fn rtp(&self) -> impl Iterator<Item = &(u64, Vec<u8>)> {
        self.datagrams.iter().filter(|(_, d)| !is_rtcp(d))
    }

    /// The payload type the fixture's RTP carries.
    pub fn payload_type(&self) -> u8 {
        self.rtp()
            .next()
            .map(|(_, d)| d[1] & 0x7f)
            .expect("a fixture holds RTP")
    }

    /// The m-line of an SDP offer for this fixture (`port` is the sender's, informative).
    pub fn offer_lines(&self) -> (&'static str, u8, &'static str) {
        (self.media, self.payload_type(), self.rtpmap)
    }

    /// Frames in one pass: distinct RTP timestamps.
    pub fn num_frames(&self) -> u64 {
        let mut ts: Vec<u32> = self.rtp().map(|(_, d)| timestamp(d)).collect();
        ts.sort_unstable();
        ts.dedup();
        ts.len() as u64
    }

    /// RTP ticks from one pass's first frame to the next pass's first frame: the span of a pass
    /// plus one frame interval (the most common step between frames).
    fn pass_ticks(&self) -> u32 {
        let mut ts: Vec<u32> = self.rtp().map(|(_, d)| timestamp(d)).collect();
        ts.dedup();
        let mut steps: Vec<u32> = ts
            .windows(2)
            .map(|w| w[1].wrapping_sub(w[0]))
            .filter(|s| *s > 0)
            .collect();
        steps.sort_unstable();
        let step = steps.get(steps.len() / 2).copied().unwrap_or(0);
        ts.last().unwrap().wrapping_sub(ts[0]).wrapping_add(step)
    }

    fn pass_packets(&self) -> u16 {
        self.rtp().count() as u16
    }

    /// Real time of one pass, at the pace of the frames' timestamps.
    fn pass_duration(&self) -> Duration {
        Duration::from_micros(u64::from(self.pass_ticks()) * 1_000_000 / u64::from(self.clock_rate))
    }
}

fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && (192..=223).contains(&datagram[1])
}

fn timestamp(datagram: &[u8]) -> u32 {
    u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]])
}

/// What a replay sent.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub num_packets: u64,
    pub num_frames: u64,
    /// Media time from the first frame to the last (what a file of every frame spans).
    pub span: Duration,
    /// Wall time (µs since the Unix epoch, by `wall_micros`) the first datagram left.
    pub first_sent_wall_micros: i64,
    /// When the last datagram left.
    pub last_sent: Option<Instant>,
}

/// Sends `passes` passes of `fixture` to `rtp` (and its RTCP, first pass only, to `rtcp`) in
/// real time, from a socket bound to 127.0.0.1 (the address the offer names). `wall_micros`
/// reads the wall clock the test compares with (the engine's clock in the harness). Blocking:
/// run it on a thread of its own.
pub fn replay(
    fixture: &Fixture,
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
    passes: u32,
    wall_micros: impl Fn() -> i64,
) -> Sent {
    replay_until(fixture, rtp, rtcp, passes, wall_micros, || false)
}

/// [`replay`], ending early (at a packet boundary) once `stop` says so.
pub fn replay_until(
    fixture: &Fixture,
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
    passes: u32,
    wall_micros: impl Fn() -> i64,
    stop: impl Fn() -> bool,
) -> Sent {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket");
    let pass_ticks = fixture.pass_ticks();
    let pass_packets = fixture.pass_packets();
    let pass_duration = fixture.pass_duration();
    let first_at = fixture.datagrams.first().map_or(0, |(at, _)| *at);
    let mut sent = Sent::default();
    let mut first_ts: Option<u32> = None;
    let mut last_ts = 0u32;
    let start = Instant::now();
    'passes: for pass in 0..passes {
        for (at, datagram) in &fixture.datagrams {
            if stop() {
                break 'passes;
            }
            let due = start + pass_duration * pass + Duration::from_micros(at - first_at);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if is_rtcp(datagram) {
                // Sender reports describe the first pass's clock; later passes go without.
                if let (0, Some(rtcp)) = (pass, rtcp) {
                    let _ = socket.send_to(datagram, rtcp);
                }
                continue;
            }
            let mut packet = datagram.clone();
            let seq = u16::from_be_bytes([packet[2], packet[3]]).wrapping_add(pass_packets.wrapping_mul(pass as u16));
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            let ts = timestamp(&packet).wrapping_add(pass_ticks.wrapping_mul(pass));
            packet[4..8].copy_from_slice(&ts.to_be_bytes());
            if sent.num_packets == 0 {
                sent.first_sent_wall_micros = wall_micros();
            }
            socket.send_to(&packet, rtp).expect("send to loopback");
            sent.num_packets += 1;
            if sent.num_packets == 1 || ts != last_ts {
                sent.num_frames += 1;
            }
            first_ts.get_or_insert(ts);
            last_ts = ts;
            sent.last_sent = Some(Instant::now());
        }
    }
    if let Some(first) = first_ts {
        sent.span =
            Duration::from_micros(u64::from(last_ts.wrapping_sub(first)) * 1_000_000 / u64::from(fixture.clock_rate));
    }
    sent
}

/// An audio sender driven by a script, one packet per frame, paced in real time from one socket
/// (so the recorder's latch holds across the script): the payloads of a fixture whose packets are
/// one frame each (Opus as FFmpeg sent it) or raw frames (G.711), under the header fields the test
/// controls: a hold (nothing sent), a new SSRC, a jump of the RTP clock on the same SSRC, RTCP
/// BYE, RFC 4733 DTMF events between the audio packets. Says what it sent, as [`replay`] does.
pub struct ScriptedAudio {
    socket: UdpSocket,
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
    payloads: Vec<Vec<u8>>,
    next_payload: usize,
    payload_type: u8,
    /// RTP ticks per frame.
    frame_ticks: u32,
    clock_rate: u32,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Frames and media time of every burst, in order (for the gaps the file must keep).
    bursts: Vec<Burst>,
    /// RFC 2198: every packet as RED of this payload type, carrying the previous frame too.
    red: Option<u8>,
    previous: Option<Vec<u8>>,
    /// Every n-th packet is not sent (lost on the way).
    drop_every: Option<u64>,
    num_dropped: u64,
}

/// One run of frames sent without a pause.
#[derive(Debug, Clone)]
pub struct Burst {
    pub num_frames: u64,
    pub first_sent: Instant,
    pub last_sent: Instant,
}

impl ScriptedAudio {
    /// Frames from a fixture of one-packet frames (`opus`), `frame_ticks` apart.
    pub fn from_fixture(fixture: &Fixture, frame_ticks: u32, rtp: SocketAddr, rtcp: Option<SocketAddr>) -> Self {
        let payloads = fixture.rtp().map(|(_, d)| d[12..].to_vec()).collect::<Vec<_>>();
        Self::new(
            payloads,
            fixture.payload_type(),
            frame_ticks,
            fixture.clock_rate,
            rtp,
            rtcp,
        )
    }

    pub fn new(
        payloads: Vec<Vec<u8>>,
        payload_type: u8,
        frame_ticks: u32,
        clock_rate: u32,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
    ) -> Self {
        assert!(!payloads.is_empty());
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket"),
            rtp,
            rtcp,
            payloads,
            next_payload: 0,
            payload_type,
            frame_ticks,
            clock_rate,
            ssrc: 0x5eed_0001,
            sequence: 4_000,
            timestamp: 1_000_000,
            bursts: Vec::new(),
            red: None,
            previous: None,
            drop_every: None,
            num_dropped: 0,
        }
    }

    /// Sends from `socket` (a sender that must receive on the port it sends from).
    pub fn with_socket(mut self, socket: UdpSocket) -> Self {
        self.socket = socket;
        self
    }

    /// Sends every frame as RED (`payload_type`), with the previous frame as its redundancy.
    pub fn with_red(mut self, payload_type: u8) -> Self {
        self.red = Some(payload_type);
        self
    }

    /// Leaves out every `n`-th packet, as a lossy path would.
    pub fn dropping_every(mut self, n: u64) -> Self {
        self.drop_every = Some(n.max(2));
        self
    }

    pub fn num_dropped(&self) -> u64 {
        self.num_dropped
    }

    /// The RED payload of `primary` with the previous frame as its one redundant block.
    fn red_payload(&self, media_payload_type: u8, primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(previous) = &self.previous {
            let offset = self.frame_ticks;
            out.push(0x80 | media_payload_type);
            out.push((offset >> 6) as u8);
            out.push((((offset & 0x3f) << 2) as u8) | ((previous.len() >> 8) as u8 & 0x03));
            out.push(previous.len() as u8);
        }
        out.push(media_payload_type);
        if let Some(previous) = &self.previous {
            out.extend_from_slice(previous);
        }
        out.extend_from_slice(primary);
        out
    }

    /// Sends `num_frames` frames, one every frame interval; with `dtmf` (digit, every n-th
    /// frame), a telephone-event packet for the digit follows every n-th audio packet.
    pub fn send(&mut self, num_frames: u64, dtmf: Option<(u8, u64)>) -> &Burst {
        let interval = Duration::from_micros(u64::from(self.frame_ticks) * 1_000_000 / u64::from(self.clock_rate));
        let start = Instant::now();
        for n in 0..num_frames {
            let due = start + interval * n as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let payload = self.payloads[self.next_payload % self.payloads.len()].clone();
            self.next_payload += 1;
            let (payload_type, body) = match self.red {
                Some(red) => (red, self.red_payload(self.payload_type, &payload)),
                None => (self.payload_type, payload.clone()),
            };
            self.previous = Some(payload);
            let sequence = self.sequence;
            if self.drop_every.is_some_and(|n| u64::from(sequence) % n == n - 1) {
                self.sequence = self.sequence.wrapping_add(1);
                self.num_dropped += 1;
            } else {
                self.packet(payload_type, &body);
            }
            if let Some((digit, _)) = dtmf.filter(|(_, every)| n % every == every - 1) {
                // RFC 4733: event, E|volume, duration; same SSRC and sequence space.
                let event = [digit, 0x8a, 0x03, 0x20];
                self.packet(101, &event);
            }
            self.timestamp = self.timestamp.wrapping_add(self.frame_ticks);
        }
        let last = Instant::now();
        self.bursts.push(Burst {
            num_frames,
            first_sent: start,
            last_sent: last,
        });
        self.bursts.last().expect("just pushed")
    }

    fn packet(&mut self, payload_type: u8, payload: &[u8]) {
        let mut p = Vec::with_capacity(12 + payload.len());
        p.push(0x80);
        p.push(payload_type & 0x7f);
        p.extend_from_slice(&self.sequence.to_be_bytes());
        p.extend_from_slice(&self.timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.socket.send_to(&p, self.rtp).expect("send to loopback");
        self.sequence = self.sequence.wrapping_add(1);
    }

    /// Sends nothing for `d`. With `clock_runs` the RTP clock advances meanwhile (a sender that
    /// keeps time through a hold); without, it stays where it was (one that froze it).
    pub fn hold(&mut self, d: Duration, clock_runs: bool) {
        std::thread::sleep(d);
        if clock_runs {
            let ticks = d.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000;
            self.timestamp = self.timestamp.wrapping_add(ticks as u32);
        }
    }

    /// A new source: new SSRC, sequence and timestamp base (an encoder restarted after a hold).
    pub fn new_source(&mut self) {
        self.ssrc = self.ssrc.wrapping_mul(2_654_435_761).wrapping_add(7);
        self.sequence = self.sequence.wrapping_add(20_000);
        self.timestamp = self.timestamp.wrapping_add(0x4000_0000);
    }

    /// Moves the RTP clock by `ticks` on the same SSRC and sequence (a SIP re-INVITE, a transfer).
    pub fn jump_clock(&mut self, ticks: i64) {
        self.timestamp = (i64::from(self.timestamp) + ticks).rem_euclid(1 << 32) as u32;
    }

    /// RTCP BYE for the current SSRC, to the RTCP port (or the RTP port with rtcp-mux).
    pub fn bye(&self) {
        let mut p = vec![0x81, 203, 0, 1];
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        let _ = self.socket.send_to(&p, self.rtcp.unwrap_or(self.rtp));
    }

    pub fn bursts(&self) -> &[Burst] {
        &self.bursts
    }

    pub fn num_frames(&self) -> u64 {
        self.bursts.iter().map(|b| b.num_frames).sum()
    }
}

/// A plain-RTP SDP offer from 127.0.0.1 with one m-line per `(media, payload type, rtpmap)`.
pub fn offer(lines: &[(&str, u8, &str)]) -> String {
    let mut sdp = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n");
    // Port 9 (discard): the sender's own port is not known ahead, and the recorder greets a real
    // one (see the comedia handling in the receive pool).
    for (media, pt, rtpmap) in lines {
        sdp.push_str(&format!("m={media} 9 RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\n"));
    }
    sdp
}

/// The RTP and RTCP ports of each accepted m-line of an SDP answer (port 0: refused).
pub fn answer_ports(answer: &str) -> Vec<(u16, Option<u16>)> {
    let mut out: Vec<(u16, Option<u16>)> = Vec::new();
    for line in answer.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            let port = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            out.push((port, None));
        } else if let Some(rest) = line.strip_prefix("a=rtcp:") {
            if let Some(last) = out.last_mut() {
                last.1 = rest.split_whitespace().next().and_then(|p| p.parse().ok());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_count_their_frames() {
        assert_eq!(Fixture::load("vp8").num_frames(), 60);
        assert_eq!(Fixture::load("opus").num_frames(), 101);
        assert_eq!(Fixture::load("vp8").payload_type(), 96);
    }

    #[test]
    fn a_looped_replay_counts_every_frame_and_spans_them_all() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = receiver.local_addr().unwrap();
        let fixture = Fixture::load("opus");
        let reader = std::thread::spawn(move || {
            let mut seqs = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = receiver.recv(&mut buf) {
                if !is_rtcp(&buf[..n]) {
                    seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
                }
                if seqs.len() == 202 {
                    break;
                }
            }
            seqs
        });
        let sent = replay(&fixture, target, None, 2, || 0);
        assert_eq!(sent.num_packets, 202);
        assert_eq!(sent.num_frames, 202);
        // 202 frames of 20 ms: 201 intervals.
        assert_eq!(sent.span, Duration::from_millis(201 * 20));
        let seqs = reader.join().unwrap();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{seqs:?}");
    }
}
