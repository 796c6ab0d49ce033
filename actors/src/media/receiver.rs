//! One received track, with no IO inside: RTP packets, RTCP and `now` go in; frames ready for the
//! muxer and keyframe requests come out. Reorders, drops duplicates, unwraps timestamps, maps
//! them to wall time, holds video back until a keyframe and asks for one at start and after loss.

use std::time::{Duration, Instant};

use super::clock::{MediaClock, TimestampUnwrapper};
use super::codec::Codec;
use super::depacketize::{Frame, FrameAssembler, Verdict, Vp8Chain};
use super::nack::{NackState, NACK_FIRST_AFTER, NACK_INTERVAL, NACK_TRIES};
use super::reorder::{Released, ReorderBuffer, ReorderStats};
use super::rtp::{parse_rtcp, RtcpPacket, RtpPacket, SenderReport};
use super::sdp::AuxPayloads;

/// How far the media time between two frames may stray from the time between their arrivals
/// before the track is re-anchored at the arrival: a sender that froze its RTP clock through a
/// hold, or jumped it (a SIP re-INVITE, a transfer, a gateway's restart on the same SSRC).
/// Network jitter, a jitter buffer's wait and a stall of the path stay well below it.
const MAX_TIMESTAMP_DEVIATION: Duration = Duration::from_secs(2);

/// How far before the newest frame an H.264 frame may be shown (B-frames): beyond any encoder's
/// reorder depth (x264's is at most 16 frames), short of a clock that jumped back.
const MAX_PRESENTATION_REORDER_MS: i64 = 1000;

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// How long a gap in sequence numbers holds later packets back at least.
    pub reorder_delay: Duration,
    /// How long at most, once the path showed packets later than `reorder_delay`.
    pub jitter_buffer_max: Duration,
    pub reorder_max_packets: usize,
    /// Least time between two keyframe requests while one is awaited.
    pub keyframe_request_interval: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            reorder_delay: Duration::from_millis(200),
            jitter_buffer_max: Duration::from_millis(1500),
            reorder_max_packets: 512,
            keyframe_request_interval: Duration::from_millis(500),
        }
    }
}

/// A frame on the track's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedFrame {
    pub frame: Frame,
    /// RTP timestamp unwrapped to 64 bits, in the codec's clock rate; continuous across sender
    /// restarts within one receiver.
    pub timestamp: i64,
    /// Best estimate of the frame's wall-clock time when it was emitted (µs since Unix epoch).
    pub wall_micros: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverOutput {
    Frame(TimedFrame),
    /// Send a picture loss indication to the sender of `ssrc`.
    RequestKeyframe {
        ssrc: u32,
    },
    /// Ask the sender of `ssrc` to send these packets again (generic NACK, RFC 4585 §6.2.1).
    Nack {
        ssrc: u32,
        sequences: Vec<u16>,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub num_packets: u64,
    pub num_bytes: u64,
    pub num_frames: u64,
    pub num_keyframes: u64,
    pub num_keyframe_requests: u64,
    /// Frames not written because the decoder state was broken (waiting for a keyframe).
    pub num_frames_skipped: u64,
    /// Frames dropped because a packet of theirs was lost.
    pub num_frames_incomplete: u64,
    pub num_malformed: u64,
    pub num_sender_reports: u64,
    pub num_ssrc_changes: u64,
    /// Times the RTP clock jumped on one SSRC and the track was re-anchored at the arrival.
    pub num_timestamp_jumps: u64,
    /// Packets asked for again (generic NACK).
    pub num_nacks: u64,
    /// Padding-only packets (bandwidth probes): in sequence, nothing to record.
    pub num_padding: u64,
    /// Packets beside the media that are never recorded: DTMF events (RFC 4733, counted as
    /// packets, never as digits) and comfort noise.
    pub num_aux_dropped: u64,
    pub reorder: ReorderStats,
}

pub struct TrackReceiver {
    codec: Codec,
    /// The media's payload type and those beside it; `None`: every packet is media (WHIP,
    /// whose stack routes packets by payload type).
    payloads: Option<(u8, AuxPayloads)>,
    /// The sender retransmits on NACK (plain RTP whose offer says so; WebRTC's stack does its
    /// own).
    nack: Option<NackState>,
    config: ReceiverConfig,
    reorder: ReorderBuffer,
    assembler: FrameAssembler,
    timestamps: TimestampUnwrapper,
    clock: MediaClock,
    /// `now` at construction and the wall time it stands for: turns `Instant`s into wall time
    /// without reading a clock inside.
    wall_reference: (Instant, i64),
    ssrc: Option<u32>,
    /// A sender report that came before the first RTP packet (FFmpeg sends one first).
    early_report: Option<SenderReport>,
    /// When the first RTP packet arrived (the kernel's stamp on plain RTP).
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    waiting_for_keyframe: bool,
    /// VP8: which frames still decode after a loss (picture IDs, temporal layers); other video
    /// waits for a keyframe after any loss.
    vp8: Option<Vp8Chain>,
    /// Packets went missing since the last whole frame (VP8 asks its chain what that broke).
    lost_since_frame: bool,
    last_keyframe_request: Option<Instant>,
    first_frame_timestamp: Option<i64>,
    last_frame_timestamp: Option<i64>,
    /// When the packet that completed the last frame arrived.
    last_frame_arrival: Option<Instant>,
    stats: ReceiverStats,
}

impl TrackReceiver {
    pub fn new(codec: Codec, config: ReceiverConfig, now: Instant, wall_micros_now: i64) -> Self {
        Self {
            codec,
            payloads: None,
            nack: None,
            reorder: ReorderBuffer::adaptive(
                config.reorder_delay,
                config.jitter_buffer_max,
                config.reorder_max_packets,
            ),
            assembler: FrameAssembler::new(codec),
            timestamps: TimestampUnwrapper::default(),
            clock: MediaClock::new(codec.clock_rate()),
            config,
            wall_reference: (now, wall_micros_now),
            ssrc: None,
            early_report: None,
            first_arrival: None,
            last_arrival: None,
            waiting_for_keyframe: codec.is_video(),
            vp8: (codec == Codec::Vp8).then(Vp8Chain::default),
            lost_since_frame: false,
            last_keyframe_request: None,
            first_frame_timestamp: None,
            last_frame_timestamp: None,
            last_frame_arrival: None,
            stats: ReceiverStats::default(),
        }
    }

    /// Plain RTP: the media is `payload_type`; `aux` are taken beside it (see [`AuxPayloads`]).
    pub fn with_payloads(mut self, payload_type: u8, aux: AuxPayloads) -> Self {
        self.payloads = Some((payload_type, aux));
        self
    }

    /// H.264 parameter sets known before any packet (the offer's `sprop-parameter-sets`).
    pub fn with_h264_parameter_sets(mut self, parameter_sets: Vec<Vec<u8>>) -> Self {
        if self.codec == Codec::H264 && !parameter_sets.is_empty() {
            self.assembler = FrameAssembler::with_h264_parameter_sets(parameter_sets);
        }
        self
    }

    /// The sender retransmits what a generic NACK asks for: a gap is waited for as long as it
    /// is asked for (every try, and a round trip for the last one's answer).
    pub fn with_nack(mut self, nack: bool) -> Self {
        self.nack = nack.then(NackState::default);
        if nack {
            let wait = NACK_FIRST_AFTER + NACK_INTERVAL * u32::from(NACK_TRIES) + Duration::from_millis(100);
            let base = self.config.reorder_delay.max(wait);
            self.reorder = ReorderBuffer::adaptive(
                base,
                self.config.jitter_buffer_max.max(base),
                self.config.reorder_max_packets,
            );
        }
        self
    }

    /// A datagram for this track that was not RTP of its payload type.
    pub fn note_malformed(&mut self) {
        self.stats.num_malformed += 1;
    }

    /// Frames after this need a keyframe first (one was dropped downstream); asks for one.
    pub fn await_keyframe(&mut self) {
        if self.codec.is_video() {
            self.waiting_for_keyframe = true;
        }
    }

    /// How long the jitter buffer waits for a gap now.
    pub fn jitter_buffer_delay(&self) -> Duration {
        self.reorder.delay()
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    pub fn stats(&self) -> ReceiverStats {
        let mut stats = self.stats;
        stats.reorder = self.reorder.stats();
        stats.num_frames_incomplete = self.assembler.num_incomplete();
        stats.num_malformed += self.assembler.num_malformed();
        stats
    }

    /// Picture size of a keyframe, when the codec says it cheaply.
    pub fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        self.assembler.dimensions(frame)
    }

    /// The wall time (µs since the Unix epoch) of a moment on the receiver's monotonic clock.
    pub fn wall_at(&self, at: Instant) -> i64 {
        let (reference, wall) = self.wall_reference;
        match at.checked_duration_since(reference) {
            Some(after) => wall + after.as_micros() as i64,
            None => wall - reference.duration_since(at).as_micros() as i64,
        }
    }

    /// Wall time of the first frame emitted, by the best mapping known now (a sender report that
    /// came after the first frame still improves it).
    pub fn started_wall_micros(&self) -> Option<i64> {
        self.clock.wall_micros(self.first_frame_timestamp?)
    }

    /// Wall time of the last frame emitted.
    pub fn stopped_wall_micros(&self) -> Option<i64> {
        self.clock.wall_micros(self.last_frame_timestamp?)
    }

    /// When the first RTP packet arrived: what "how soon recording started" is measured from.
    pub fn first_arrival(&self) -> Option<Instant> {
        self.first_arrival
    }

    pub fn first_frame_timestamp(&self) -> Option<i64> {
        self.first_frame_timestamp
    }

    pub fn push_rtp(&mut self, packet: RtpPacket, now: Instant, out: &mut Vec<ReceiverOutput>) {
        self.stats.num_packets += 1;
        self.stats.num_bytes += packet.payload.len() as u64;
        match self.ssrc {
            None => {
                self.ssrc = Some(packet.ssrc);
                self.timestamps.unwrap(packet.timestamp);
                if let Some(sr) = self.early_report.take().filter(|sr| sr.ssrc == packet.ssrc) {
                    self.apply_report(sr);
                }
            }
            Some(ssrc) if ssrc != packet.ssrc => self.switch_source(&packet, now, out),
            Some(_) => {}
        }
        self.first_arrival.get_or_insert(now);
        self.last_arrival = Some(now);
        if let Some(nack) = &mut self.nack {
            nack.arrived(packet.sequence, now);
        }
        if self.waiting_for_keyframe && super::keyframe::starts_keyframe(self.codec, self.payloads, &packet) {
            // A keyframe is on its way (a publisher's first frame is one): asking for another
            // only makes the sender drop what it queued (Chromium skips two frames) and send a
            // second; if this one cannot be completed, the request follows an interval later.
            self.last_keyframe_request = Some(now);
        }
        let mut released = Vec::new();
        match self.payloads {
            Some((media, aux)) if aux.red == Some(packet.payload_type) => match super::red::split(&packet, media) {
                Ok(red) => {
                    self.reorder.push(red.primary, now, &mut released);
                    for copy in red.redundant {
                        self.reorder.fill(copy, now, &mut released);
                    }
                }
                Err(_) => {
                    self.stats.num_malformed += 1;
                    // Its place in the sequence is taken, so it is counted lost, not waited for.
                    self.reorder.push(packet, now, &mut released);
                }
            },
            // DTMF and comfort noise share the media's sequence numbers: they go through the
            // window (so no gap is seen) and are dropped when released.
            _ => self.reorder.push(packet, now, &mut released),
        }
        if let Some(seq) = self
            .reorder
            .settling()
            .then(|| super::keyframe::first_whole_keyframe(self.codec, self.payloads, self.reorder.settling_packets()))
            .flatten()
        {
            // Video is written from a keyframe on: what was sent before one cannot matter, so
            // the start need not wait for it (the first keyframe is written at once).
            self.reorder.start_at(seq, now, &mut released);
        }
        self.handle_released(released, now, out);
        self.request_keyframe_if_due(now, out);
        self.nack_if_due(now, out);
    }

    /// Asks again for the missing packets the jitter buffer still waits for.
    fn nack_if_due(&mut self, now: Instant, out: &mut Vec<ReceiverOutput>) {
        let (Some(nack), Some(ssrc)) = (&mut self.nack, self.ssrc) else {
            return;
        };
        nack.forget_before(now.checked_sub(self.reorder.delay()).unwrap_or(now));
        let sequences = nack.due(now);
        if !sequences.is_empty() {
            self.stats.num_nacks += sequences.len() as u64;
            out.push(ReceiverOutput::Nack { ssrc, sequences });
        }
    }

    /// RTCP from the sender: sender reports refine the wall-clock mapping.
    pub fn push_rtcp(&mut self, buf: &[u8]) {
        for packet in parse_rtcp(buf) {
            if let RtcpPacket::SenderReport(sr) = packet {
                match self.ssrc {
                    None => self.early_report = Some(sr),
                    Some(ssrc) if ssrc == sr.ssrc => self.apply_report(sr),
                    Some(_) => {}
                }
            }
        }
    }

    /// A sender report already parsed (WebRTC ingest gets them from its stack).
    pub fn push_sender_report(&mut self, sr: SenderReport) {
        match self.ssrc {
            None => self.early_report = Some(sr),
            Some(ssrc) if ssrc == sr.ssrc => self.apply_report(sr),
            Some(_) => {}
        }
    }

    fn apply_report(&mut self, sr: SenderReport) {
        let ext = self.timestamps.peek(sr.rtp_timestamp);
        self.clock.on_sender_report(sr.ntp, ext);
        self.stats.num_sender_reports += 1;
    }

    /// Time passed with no packet: releases what the reorder window gave up on, repeats a
    /// keyframe request that went unanswered.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<ReceiverOutput>) {
        let mut released = Vec::new();
        self.reorder.poll(now, &mut released);
        self.handle_released(released, now, out);
        self.request_keyframe_if_due(now, out);
        self.nack_if_due(now, out);
    }

    /// The ingest ends: everything the jitter buffer holds is released (open gaps lost).
    pub fn flush(&mut self, now: Instant, out: &mut Vec<ReceiverOutput>) {
        let mut released = Vec::new();
        self.reorder.flush(&mut released);
        self.handle_released(released, now, out);
    }

    /// When [`Self::poll`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let keyframe = (self.waiting_for_keyframe && self.ssrc.is_some())
            .then(|| {
                self.last_keyframe_request
                    .map(|at| at + self.config.keyframe_request_interval)
            })
            .flatten();
        let nack = self.nack.as_ref().and_then(NackState::next_deadline);
        [self.reorder.next_deadline(), keyframe, nack]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_released(&mut self, released: Vec<Released>, _now: Instant, out: &mut Vec<ReceiverOutput>) {
        for item in released {
            match item {
                Released::Lost(_) => {
                    self.assembler.lost();
                    self.after_loss();
                }
                Released::Packet(packet, _) if self.payloads.is_some_and(|(pt, _)| packet.payload_type != pt) => {
                    // DTMF, comfort noise, or a RED packet that could not be read: never recorded.
                    self.stats.num_aux_dropped += 1;
                }
                Released::Packet(packet, _) if packet.payload.is_empty() => {
                    // Padding only (a WebRTC sender probing for bandwidth): it takes a sequence
                    // number and carries nothing; no frame is missing a part.
                    self.stats.num_padding += 1;
                }
                Released::Packet(packet, arrived) => {
                    let incomplete_before = self.assembler.num_incomplete();
                    let frames = self.assembler.push(&packet);
                    if self.assembler.num_incomplete() > incomplete_before {
                        self.after_loss();
                    }
                    for frame in frames {
                        if let Some(chain) = &mut self.vp8 {
                            let lost = std::mem::take(&mut self.lost_since_frame);
                            match chain.frame(frame.picture, frame.keyframe, lost) {
                                Verdict::Write => {}
                                Verdict::Skip => {
                                    self.stats.num_frames_skipped += 1;
                                    continue;
                                }
                                Verdict::AwaitKeyframe => self.waiting_for_keyframe = true,
                            }
                        }
                        self.emit(frame, arrived, out);
                    }
                }
            }
        }
    }

    /// A packet or a frame went missing: VP8 learns from the next frame what that broke, other
    /// video waits for a keyframe.
    fn after_loss(&mut self) {
        if self.vp8.is_some() {
            self.lost_since_frame = true;
        } else if self.codec.is_video() {
            self.waiting_for_keyframe = true;
        }
    }

    /// Re-anchors the timeline when the RTP clock jumped on this SSRC: the frame is placed
    /// where its arrival says, after the last one, so the file keeps the real gap (a hold whose
    /// sender froze its clock) and no jump (forward or back) of the sender's own.
    fn reanchor_if_jumped(&mut self, rtp_timestamp: u32, arrived: Instant) {
        let (Some(last), Some(last_arrival)) = (self.last_frame_timestamp, self.last_frame_arrival) else {
            return;
        };
        let rate = i64::from(self.codec.clock_rate());
        let media_ticks = self.timestamps.peek(rtp_timestamp) - last;
        let wall_ticks = arrived.saturating_duration_since(last_arrival).as_micros() as i64 * rate / 1_000_000;
        let limit = MAX_TIMESTAMP_DEVIATION.as_micros() as i64 * rate / 1_000_000;
        if (media_ticks - wall_ticks).abs() <= limit {
            return;
        }
        self.stats.num_timestamp_jumps += 1;
        let next = last + wall_ticks.max(1);
        self.timestamps.rebase(rtp_timestamp, next);
        // The sender reports described the clock before the jump.
        self.clock = MediaClock::new(self.codec.clock_rate());
        self.clock.on_arrival(self.wall_at(arrived), next);
    }

    fn emit(&mut self, frame: Frame, arrived: Instant, out: &mut Vec<ReceiverOutput>) {
        self.reanchor_if_jumped(frame.rtp_timestamp, arrived);
        let timestamp = self.timestamps.unwrap(frame.rtp_timestamp);
        if let Some(last) = self.last_frame_timestamp {
            let in_order = match self.codec {
                // H.264 with B-frames sends in decode order: a frame may be shown before the
                // newest one sent, but not before the file's first, nor long before the newest.
                Codec::H264 => {
                    let limit = i64::from(self.codec.clock_rate()) * MAX_PRESENTATION_REORDER_MS / 1000;
                    timestamp != last
                        && self.first_frame_timestamp.is_none_or(|first| timestamp > first)
                        && last - timestamp < limit
                }
                // Other video is strictly increasing; audio never goes back.
                _ if self.codec.is_video() => timestamp > last,
                _ => timestamp >= last,
            };
            if !in_order {
                self.stats.num_frames_skipped += 1;
                return;
            }
        }
        if self.waiting_for_keyframe {
            if !frame.keyframe {
                self.stats.num_frames_skipped += 1;
                return;
            }
            self.waiting_for_keyframe = false;
        }
        // Anchored at the frame's arrival, not at its release from the jitter buffer (which
        // waits): without sender reports, tracks of one sender line up by arrival.
        let wall = self.wall_at(arrived);
        self.clock.on_arrival(wall, timestamp);
        self.first_frame_timestamp.get_or_insert(timestamp);
        // The newest frame shown (B-frames come after the frame they precede).
        self.last_frame_timestamp = Some(self.last_frame_timestamp.map_or(timestamp, |last| last.max(timestamp)));
        self.last_frame_arrival = Some(arrived);
        self.stats.num_frames += 1;
        self.stats.num_keyframes += u64::from(frame.keyframe && self.codec.is_video());
        out.push(ReceiverOutput::Frame(TimedFrame {
            wall_micros: self.clock.wall_micros(timestamp),
            frame,
            timestamp,
        }));
    }

    fn request_keyframe_if_due(&mut self, now: Instant, out: &mut Vec<ReceiverOutput>) {
        let Some(ssrc) = self.ssrc else { return };
        if !self.waiting_for_keyframe {
            return;
        }
        let due = self
            .last_keyframe_request
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.keyframe_request_interval);
        if due {
            self.last_keyframe_request = Some(now);
            self.stats.num_keyframe_requests += 1;
            out.push(ReceiverOutput::RequestKeyframe { ssrc });
        }
    }

    /// A new SSRC on the same track (the sender restarted its encoder): flush what waits, and
    /// continue the timeline where it was, advanced by the time that passed, so the file keeps
    /// real gaps without the new source's random timestamp base.
    fn switch_source(&mut self, packet: &RtpPacket, now: Instant, out: &mut Vec<ReceiverOutput>) {
        self.stats.num_ssrc_changes += 1;
        let mut released = Vec::new();
        self.reorder.flush(&mut released);
        self.handle_released(released, now, out);
        // The new source's numbering starts afresh; what the path taught about waiting (and
        // the counts) carry on.
        self.reorder = self.reorder.for_new_source();
        if self.nack.is_some() {
            self.nack = Some(NackState::default());
        }
        self.assembler = FrameAssembler::new(self.codec);
        let elapsed = self
            .last_arrival
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or_default();
        let ticks = (elapsed.as_micros() as i64) * i64::from(self.codec.clock_rate()) / 1_000_000;
        // At least a frame after the last one (a simulcast switch hands over within a frame:
        // the new source's first picture is the next one, not one in the same millisecond).
        let spacing = i64::from(self.codec.clock_rate()) / if self.codec.is_video() { 30 } else { 50 };
        let next = self
            .timestamps
            .last()
            .map(|last| last + ticks.max(spacing))
            .unwrap_or(0);
        self.timestamps.rebase(packet.timestamp, next);
        // The old sender report described the old source's clock.
        let wall = self.wall_at(now);
        self.clock = MediaClock::new(self.codec.clock_rate());
        self.clock.on_arrival(wall, next);
        self.ssrc = Some(packet.ssrc);
        self.waiting_for_keyframe = self.codec.is_video();
        self.vp8 = self.vp8.take().map(|_| Vp8Chain::default());
        self.lost_since_frame = false;
        self.last_keyframe_request = None;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::testing::{SimRng, SyntheticVp8};

    fn frames(out: &[ReceiverOutput]) -> Vec<&TimedFrame> {
        out.iter()
            .filter_map(|o| match o {
                ReceiverOutput::Frame(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn num_requests(out: &[ReceiverOutput]) -> usize {
        out.iter()
            .filter(|o| matches!(o, ReceiverOutput::RequestKeyframe { .. }))
            .count()
    }

    /// Feeds `packets` (arrival offsets in ms) and polls every 10 ms until `end_ms`.
    fn run(rx: &mut TrackReceiver, t0: Instant, packets: Vec<(u64, RtpPacket)>, end_ms: u64) -> Vec<ReceiverOutput> {
        let mut out = Vec::new();
        let mut packets = packets.into_iter().peekable();
        for ms in (0..=end_ms).step_by(10) {
            while let Some((at, _)) = packets.peek() {
                if *at > ms {
                    break;
                }
                let (at, p) = packets.next().expect("peeked");
                rx.push_rtp(p, t0 + Duration::from_millis(at), &mut out);
            }
            rx.poll(t0 + Duration::from_millis(ms), &mut out);
        }
        out
    }

    #[test]
    fn a_clean_stream_comes_out_whole_starting_with_a_keyframe() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 1_000_000_000);
        let stream = SyntheticVp8::new(0xfff0, u32::MAX - 30_000, 30, 4);
        let packets = stream.packets(90); // 3 s at 30 fps, keyframe every 30 frames
        let out = run(&mut rx, t0, packets, 3_500);
        let got = frames(&out);
        assert_eq!(got.len(), 90);
        assert!(got[0].frame.keyframe);
        let ts: Vec<i64> = got.iter().map(|f| f.timestamp - got[0].timestamp).collect();
        assert_eq!(
            ts,
            (0..90).map(|i| i * 3000).collect::<Vec<_>>(),
            "3000 ticks apart across the wrap"
        );
        assert_eq!(
            num_requests(&out),
            0,
            "the first packet begins a keyframe: none asked for (a sender drops frames for it)"
        );
        assert_eq!(rx.stats().num_keyframes, 3);
    }

    #[test]
    fn a_video_track_starting_at_a_whole_keyframe_does_not_wait_for_the_settle() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 0);
        let stream = SyntheticVp8::new(7, 90_000, 30, 3);
        let packets = stream.packets(1);
        let mut out = Vec::new();
        for (at, p) in packets {
            rx.push_rtp(p, t0 + Duration::from_millis(at), &mut out);
        }
        let got = frames(&out);
        assert_eq!(got.len(), 1, "the keyframe is out at once, not after the settle");
        assert!(got[0].frame.keyframe);
        // Audio settles: a packet sent before the first to arrive may still come.
        let mut rx = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 0);
        let mut out = Vec::new();
        let p = |seq: u16| RtpPacket {
            payload_type: 111,
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq) * 960,
            ssrc: 9,
            payload: bytes::Bytes::from_static(&[0xfc]),
        };
        rx.push_rtp(p(5), t0, &mut out);
        rx.push_rtp(p(4), t0 + Duration::from_millis(120), &mut out);
        rx.poll(t0 + Duration::from_millis(400), &mut out);
        assert_eq!(frames(&out).len(), 2, "the earlier packet is not lost");
    }

    #[test]
    fn writing_waits_for_a_keyframe_and_keeps_asking() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 0);
        let stream = SyntheticVp8::new(1, 0, 30, 2);
        // Join in the middle of a GOP: frames 10..60, keyframe at 30.
        let packets: Vec<_> = stream
            .packets(60)
            .into_iter()
            .filter(|(at, _)| *at > 10 * 1000 / 30)
            .collect();
        let out = run(&mut rx, t0, packets, 2_100);
        let got = frames(&out);
        assert!(got[0].frame.keyframe, "the first frame out is a keyframe");
        assert_eq!(got.len(), 30);
        assert!(
            num_requests(&out) >= 2,
            "asked again while none came: {}",
            num_requests(&out)
        );
        assert_eq!(rx.stats().num_frames_skipped, 19);
    }

    #[test]
    fn seeded_loss_reorder_and_duplication_give_ordered_clean_frames_and_keyframe_requests() {
        for seed in 1..=20u64 {
            let t0 = Instant::now();
            let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 0);
            let stream = SyntheticVp8::new(seed as u16 * 1000, seed as u32 * 77_777, 30, 5);
            let mut rng = SimRng::new(seed);
            let clean = stream.packets(300);
            let num_sent = clean.len();
            let impaired = rng.impair(clean, 0.02, 0.05, 0.03, 40);
            let out = run(&mut rx, t0, impaired, 11_000);
            let got = frames(&out);
            assert!(got[0].frame.keyframe, "seed {seed}");
            for pair in got.windows(2) {
                assert!(
                    pair[1].timestamp > pair[0].timestamp,
                    "seed {seed}: frames in time order"
                );
            }
            let stats = rx.stats();
            assert!(
                stats.reorder.num_lost > 0,
                "seed {seed}: 2% loss of {num_sent} packets shows"
            );
            assert!(stats.reorder.num_duplicates > 0, "seed {seed}");
            assert!(num_requests(&out) >= 2, "seed {seed}: loss asks for a keyframe");
            // Every emitted frame is byte-identical to the frame that was sent.
            for f in &got {
                assert_eq!(f.frame.data, stream.frame_bytes(f.frame.rtp_timestamp), "seed {seed}");
            }
        }
    }

    #[test]
    fn an_ssrc_change_keeps_the_timeline_continuous() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 0);
        let first = SyntheticVp8::new(100, 5_000, 30, 2).with_ssrc(1).packets(30);
        // The same sender restarts 2 s later with a new SSRC, sequence and timestamp base.
        let second: Vec<_> = SyntheticVp8::new(40_000, 3_000_000_000, 30, 2)
            .with_ssrc(2)
            .packets(30)
            .into_iter()
            .map(|(at, p)| (at + 2_000, p))
            .collect();
        let mut all = first;
        all.extend(second);
        let out = run(&mut rx, t0, all, 3_500);
        let got = frames(&out);
        assert_eq!(got.len(), 60);
        let gap = got[30].timestamp - got[29].timestamp;
        // 2 s minus the 29 frame intervals of the first run, in 90 kHz ticks, within a poll step.
        let expected = (2_000 - 29 * 1000 / 30) * 90;
        assert!((gap - expected).abs() <= 90 * 40, "gap {gap} vs {expected}");
        assert_eq!(rx.stats().num_ssrc_changes, 1);
    }

    #[test]
    fn audio_losses_are_counted_without_waiting_for_anything() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 0);
        let mut out = Vec::new();
        for i in 0..50u16 {
            if i == 10 || i == 11 {
                continue;
            }
            let p = RtpPacket {
                payload_type: 111,
                marker: false,
                sequence: i,
                timestamp: u32::from(i) * 960,
                ssrc: 9,
                payload: bytes::Bytes::from(vec![0xfc, i as u8]),
            };
            rx.push_rtp(p, t0 + Duration::from_millis(u64::from(i) * 20), &mut out);
        }
        rx.poll(t0 + Duration::from_secs(2), &mut out);
        assert_eq!(frames(&out).len(), 48);
        assert_eq!(num_requests(&out), 0);
        assert_eq!(rx.stats().reorder.num_lost, 2);
    }

    fn pcmu(seq: u16, ts: u32, ssrc: u32) -> RtpPacket {
        RtpPacket {
            payload_type: 0,
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc,
            payload: bytes::Bytes::from(vec![0xffu8; 160]),
        }
    }

    fn frame_times(out: &[ReceiverOutput]) -> Vec<i64> {
        frames(out).iter().map(|f| f.timestamp).collect()
    }

    /// VP8 with picture IDs in two temporal layers, 60 frames, one keyframe: frame `lost_frame`
    /// never arrives and a padding probe after frame 20 (a sequence number) is lost too.
    fn vp8_layers_losing(lost_frame: Option<u32>) -> Vec<ReceiverOutput> {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 0);
        let stream = SyntheticVp8::new(100, 0, 600, 2).with_picture_ids(2);
        let packets = stream
            .packets(60)
            .into_iter()
            .filter(|(_, p)| Some(p.timestamp) != lost_frame.map(|f| f * 3000))
            .map(|(at, mut p)| {
                if lost_frame.is_some() && p.timestamp > 20 * 3000 {
                    p.sequence = p.sequence.wrapping_add(1);
                }
                (at, p)
            })
            .collect();
        run(&mut rx, t0, packets, 3000)
    }

    #[test]
    fn with_picture_ids_a_lost_probe_or_upper_layer_frame_costs_that_frame_only() {
        // Frame 7 is in the upper layer (odd frames): it alone is missing, and no keyframe is
        // asked for beyond the one asked at the start.
        let out = vp8_layers_losing(Some(7));
        let written: Vec<i64> = frames(&out).iter().map(|f| f.timestamp / 3000).collect();
        let expected: Vec<i64> = (0..60).filter(|i| *i != 7).collect();
        assert_eq!(written, expected);
        assert_eq!(num_requests(&out), num_requests(&vp8_layers_losing(None)));
    }

    #[test]
    fn with_picture_ids_a_lost_base_layer_frame_waits_for_a_keyframe() {
        let out = vp8_layers_losing(Some(10));
        let written: Vec<i64> = frames(&out).iter().map(|f| f.timestamp / 3000).collect();
        assert_eq!(written, (0..10).collect::<Vec<i64>>());
        assert!(num_requests(&out) > num_requests(&vp8_layers_losing(None)));
    }

    #[test]
    fn padding_probes_between_the_packets_of_a_frame_break_nothing() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Vp8, ReceiverConfig::default(), t0, 0);
        let stream = SyntheticVp8::new(100, 0, 30, 3);
        let mut out = Vec::new();
        let mut seq = 100u16;
        for (at, mut p) in stream.packets(60) {
            p.sequence = seq;
            seq = seq.wrapping_add(1);
            rx.push_rtp(p.clone(), t0 + Duration::from_millis(at), &mut out);
            // A probe after every packet: same SSRC, next sequence number, no payload.
            let probe = RtpPacket {
                sequence: seq,
                marker: false,
                payload: bytes::Bytes::new(),
                ..p
            };
            seq = seq.wrapping_add(1);
            rx.push_rtp(probe, t0 + Duration::from_millis(at), &mut out);
        }
        rx.poll(t0 + Duration::from_secs(3), &mut out);
        assert_eq!(frames(&out).len(), 60);
        let stats = rx.stats();
        assert_eq!(
            (stats.num_padding, stats.num_malformed, stats.num_frames_incomplete),
            (180, 0, 0)
        );
    }

    #[test]
    fn dtmf_and_comfort_noise_take_their_place_in_the_sequence_and_are_never_recorded() {
        let t0 = Instant::now();
        let aux = AuxPayloads {
            telephone_event: Some(101),
            comfort_noise: Some(13),
            red: None,
        };
        let mut rx = TrackReceiver::new(Codec::Pcmu, ReceiverConfig::default(), t0, 0).with_payloads(0, aux);
        let mut out = Vec::new();
        for i in 0..50u16 {
            let at = t0 + Duration::from_millis(u64::from(i) * 20);
            let mut p = pcmu(i, u32::from(i) * 160, 5);
            // Packets 10..15 are a DTMF digit's events, 30 a comfort-noise packet.
            if (10..15).contains(&i) {
                p.payload_type = 101;
                p.payload = bytes::Bytes::from_static(&[5, 0x80, 0, 160]);
            } else if i == 30 {
                p.payload_type = 13;
                p.payload = bytes::Bytes::from_static(&[40]);
            }
            rx.push_rtp(p, at, &mut out);
        }
        rx.poll(t0 + Duration::from_secs(2), &mut out);
        let got = frames(&out);
        assert_eq!(got.len(), 44, "only the audio packets are frames");
        assert!(got.iter().all(|f| f.frame.data.len() == 160 && f.frame.data[0] == 0xff));
        let stats = rx.stats();
        assert_eq!(stats.num_aux_dropped, 6);
        assert_eq!(stats.reorder.num_lost, 0, "their sequence numbers are no loss");
    }

    #[test]
    fn red_copies_fill_a_lost_packet_with_the_frame_it_lost() {
        let t0 = Instant::now();
        let aux = AuxPayloads {
            red: Some(63),
            ..Default::default()
        };
        let mut rx = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 0).with_payloads(111, aux);
        let mut out = Vec::new();
        let frame = |i: u16| vec![0xfc, i as u8, (i >> 8) as u8];
        for i in 0..50u16 {
            if i == 20 || i == 21 {
                continue; // lost; 22 carries 20 and 21 as redundancy, 23 carries 21 and 22
            }
            let blocks: Vec<(u32, Vec<u8>)> = [2u16, 1]
                .iter()
                .filter(|back| i >= **back)
                .map(|back| (u32::from(*back) * 960, frame(i - back)))
                .collect();
            let refs: Vec<(u32, &[u8])> = blocks.iter().map(|(o, d)| (*o, d.as_slice())).collect();
            let p = RtpPacket {
                payload_type: 63,
                marker: false,
                sequence: 1000 + i,
                timestamp: u32::from(i) * 960,
                ssrc: 9,
                payload: bytes::Bytes::from(crate::media::red::build(111, &refs, &frame(i))),
            };
            rx.push_rtp(p, t0 + Duration::from_millis(u64::from(i) * 20), &mut out);
        }
        rx.poll(t0 + Duration::from_secs(2), &mut out);
        let got = frames(&out);
        assert_eq!(got.len(), 50, "every frame, the lost two from their copies");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.frame.data.as_ref(), frame(i as u16).as_slice(), "frame {i}");
            assert_eq!(f.timestamp - got[0].timestamp, i as i64 * 960);
        }
        let stats = rx.stats();
        assert_eq!((stats.reorder.num_recovered, stats.reorder.num_lost), (2, 0));
    }

    #[test]
    fn a_jump_of_the_rtp_clock_on_one_ssrc_is_re_anchored_at_the_arrival() {
        // 3 s of audio, 15 s of silence, then 5 s more whose timestamps jumped by `jump` (as a
        // SIP re-INVITE or a transfer may do) on the same SSRC and sequence.
        for jump_secs in [600i64, -5, 0] {
            let t0 = Instant::now();
            let mut rx = TrackReceiver::new(Codec::Pcmu, ReceiverConfig::default(), t0, 0)
                .with_payloads(0, AuxPayloads::default());
            let mut out = Vec::new();
            let mut seq = 7u16;
            for i in 0..150u32 {
                rx.push_rtp(
                    pcmu(seq, i * 160, 3),
                    t0 + Duration::from_millis(u64::from(i) * 20),
                    &mut out,
                );
                seq += 1;
            }
            let resume = t0 + Duration::from_secs(18);
            // With no jump the sender's clock ran on through the silence (18 s from the start).
            let base = (18 * 8000 + jump_secs * 8000).rem_euclid(1 << 32) as u32;
            for i in 0..250u32 {
                let ts = base.wrapping_add(i * 160);
                rx.push_rtp(
                    pcmu(seq, ts, 3),
                    resume + Duration::from_millis(u64::from(i) * 20),
                    &mut out,
                );
                seq += 1;
            }
            rx.poll(resume + Duration::from_secs(6), &mut out);
            let times = frame_times(&out);
            assert_eq!(times.len(), 400, "jump {jump_secs} s: every frame kept");
            let gap = times[150] - times[149];
            assert!(
                (gap - (15 * 8000 + 160)).abs() <= 160,
                "jump {jump_secs} s: the silence is a 15 s gap, got {} ticks",
                gap
            );
            assert!(
                times.windows(2).all(|w| w[1] > w[0]),
                "jump {jump_secs} s: in time order"
            );
            assert_eq!(
                rx.stats().num_timestamp_jumps,
                u64::from(jump_secs != 0),
                "jump {jump_secs} s"
            );
        }
    }

    #[test]
    fn a_retransmitting_sender_is_asked_for_what_is_missing_until_it_comes() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 0)
            .with_payloads(111, AuxPayloads::default())
            .with_nack(true);
        let p = |seq: u16| RtpPacket {
            payload_type: 111,
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq) * 960,
            ssrc: 9,
            payload: bytes::Bytes::from(vec![0xfc, seq as u8]),
        };
        let ms = Duration::from_millis;
        let mut out = Vec::new();
        for seq in [1u16, 2, 3, 6] {
            rx.push_rtp(p(seq), t0 + ms(u64::from(seq) * 20), &mut out);
        }
        let nacks = |out: &[ReceiverOutput]| -> Vec<Vec<u16>> {
            out.iter()
                .filter_map(|o| match o {
                    ReceiverOutput::Nack { ssrc: 9, sequences } => Some(sequences.clone()),
                    _ => None,
                })
                .collect()
        };
        rx.poll(t0 + ms(125), &mut out);
        assert!(nacks(&out).is_empty(), "a little reordering is not loss yet");
        rx.push_rtp(p(7), t0 + ms(140), &mut out);
        assert_eq!(nacks(&out), vec![vec![4, 5]]);
        // Asked again a round trip later; 4 comes back, then 5.
        rx.poll(t0 + ms(200), &mut out);
        assert_eq!(nacks(&out).len(), 1, "not before the interval");
        rx.poll(t0 + ms(270), &mut out);
        assert_eq!(nacks(&out), vec![vec![4, 5], vec![4, 5]]);
        rx.push_rtp(p(4), t0 + ms(280), &mut out);
        rx.push_rtp(p(5), t0 + ms(300), &mut out);
        rx.poll(t0 + ms(2_000), &mut out);
        assert_eq!(nacks(&out).len(), 2, "nothing more once they came");
        assert_eq!(
            frames(&out).len(),
            7,
            "every frame, the retransmitted ones in their place"
        );
        assert_eq!(rx.stats().reorder.num_lost, 0);
        assert_eq!(rx.stats().num_nacks, 4);

        // At the start the first packet to arrive need not be the first sent: a packet before
        // it that comes late shows a gap below it too.
        let mut rx = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 0)
            .with_payloads(111, AuxPayloads::default())
            .with_nack(true);
        let mut out = Vec::new();
        rx.push_rtp(p(10), t0, &mut out);
        rx.push_rtp(p(7), t0 + ms(5), &mut out);
        rx.poll(t0 + ms(40), &mut out);
        assert_eq!(nacks(&out), vec![vec![8, 9]]);
    }

    #[test]
    fn sender_reports_give_the_start_in_the_senders_clock() {
        let t0 = Instant::now();
        let mut rx = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 7_000_000);
        let mut out = Vec::new();
        let p = |seq: u16, ts: u32| RtpPacket {
            payload_type: 111,
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc: 9,
            payload: bytes::Bytes::from_static(&[0xfc]),
        };
        rx.push_rtp(p(1, 48_000), t0 + Duration::from_millis(30), &mut out);
        rx.poll(t0 + Duration::from_millis(500), &mut out);
        assert_eq!(
            rx.started_wall_micros(),
            Some(7_030_000),
            "arrival (not the jitter buffer's release) until a report comes"
        );
        let ntp = (1_700_000_000u64 + 2_208_988_800) << 32;
        rx.push_rtcp(&crate::media::rtp::sender_report_bytes(
            &crate::media::rtp::SenderReport {
                ssrc: 9,
                ntp,
                rtp_timestamp: 96_000,
            },
        ));
        assert_eq!(rx.started_wall_micros(), Some(1_699_999_999_000_000));
        // A report about another source is ignored.
        rx.push_rtcp(&crate::media::rtp::sender_report_bytes(
            &crate::media::rtp::SenderReport {
                ssrc: 10,
                ntp: 0,
                rtp_timestamp: 0,
            },
        ));
        assert_eq!(rx.stats().num_sender_reports, 1);
    }
}
