//! What ingest (plain RTP or WHIP) shares: per-track counters, the events it reports to its
//! stream, and the glue that runs a [`TrackReceiver`] into a [`FrameSink`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pause::PauseGate;
use super::receiver::{ReceiverOutput, ReceiverStats, TrackReceiver};
use super::writer::FrameSink;

/// Live counters of one track, shared by the ingest side (writes) and snapshots (reads).
#[derive(Debug, Default)]
pub struct TrackCounters {
    pub num_packets: AtomicU64,
    pub num_bytes: AtomicU64,
    pub num_frames: AtomicU64,
    pub num_lost: AtomicU64,
    pub num_keyframe_requests: AtomicU64,
    /// Packets asked for again (generic NACK).
    pub num_nacks: AtomicU64,
    /// Packets that came after the jitter buffer gave up on them.
    pub num_late: AtomicU64,
    /// Frames not written: a packet of theirs was lost.
    pub num_frames_incomplete: AtomicU64,
    /// Whole frames not written: the decoder's chain was broken (waiting for a keyframe, or a
    /// lost frame they refer to).
    pub num_frames_skipped: AtomicU64,
    /// Padding-only packets (a WebRTC sender probing its bandwidth): counted, never loss.
    pub num_padding: AtomicU64,
    /// How long the jitter buffer waits for a gap now, in ms.
    pub jitter_buffer_ms: AtomicU64,
    pub num_malformed: AtomicU64,
    /// Datagrams refused: from a source other than the latched one, or oversized.
    pub num_refused: AtomicU64,
    pub num_frames_dropped: AtomicU64,
    pub bitrate_bps: AtomicU64,
    /// Wall time (µs since the Unix epoch) the track's first packet was handled; 0 before.
    pub first_packet_at_micros: AtomicU64,
    /// Frames not recorded because recording was paused at their time.
    pub num_frames_paused: AtomicU64,
}

impl TrackCounters {
    fn publish(&self, base: &ReceiverStats, stats: &ReceiverStats) {
        let set = |c: &AtomicU64, v: u64, b: u64| c.store(v.saturating_sub(b), Ordering::Relaxed);
        // Counters accumulate over the stream's segments: `base` is what earlier segments left.
        set(&self.num_packets, base.num_packets + stats.num_packets, 0);
        set(&self.num_bytes, base.num_bytes + stats.num_bytes, 0);
        set(&self.num_frames, base.num_frames + stats.num_frames, 0);
        set(&self.num_lost, base.reorder.num_lost + stats.reorder.num_lost, 0);
        set(
            &self.num_keyframe_requests,
            base.num_keyframe_requests + stats.num_keyframe_requests,
            0,
        );
        set(&self.num_malformed, base.num_malformed + stats.num_malformed, 0);
        set(&self.num_nacks, base.num_nacks + stats.num_nacks, 0);
        set(&self.num_late, base.reorder.num_late + stats.reorder.num_late, 0);
        set(
            &self.num_frames_incomplete,
            base.num_frames_incomplete + stats.num_frames_incomplete,
            0,
        );
        set(
            &self.num_frames_skipped,
            base.num_frames_skipped + stats.num_frames_skipped,
            0,
        );
        set(&self.num_padding, base.num_padding + stats.num_padding, 0);
    }

    /// What the counters hold now, as a base for the next segment.
    pub fn totals(&self) -> ReceiverStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut stats = ReceiverStats {
            num_packets: get(&self.num_packets),
            num_bytes: get(&self.num_bytes),
            num_frames: get(&self.num_frames),
            num_keyframe_requests: get(&self.num_keyframe_requests),
            num_malformed: get(&self.num_malformed),
            num_nacks: get(&self.num_nacks),
            num_frames_incomplete: get(&self.num_frames_incomplete),
            num_frames_skipped: get(&self.num_frames_skipped),
            num_padding: get(&self.num_padding),
            ..Default::default()
        };
        stats.reorder.num_late = get(&self.num_late);
        stats.reorder.num_lost = get(&self.num_lost);
        stats
    }
}

/// What ingest tells its stream.
#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// The track's first frame went to its writer (the instance is recording now).
    FirstFrame {
        session_id: String,
        track_id: String,
        wall_micros: i64,
    },
    /// Media arrives but the instance is paused, so none is written yet: the publisher is there
    /// (a recovering instance is not aborted for want of media).
    MediaWhilePaused { session_id: String, track_id: String },
    /// A plain-RTP port latched to its sender: kept in the store, so a restart latches the
    /// re-bound port to the same sender.
    Latched {
        session_id: String,
        track_id: String,
        source: std::net::SocketAddr,
    },
    /// The publisher signalled another orientation of its video (degrees to turn clockwise).
    Orientation {
        session_id: String,
        track_id: String,
        rotation: u16,
    },
    /// The track's ingest ended (publisher gone, idle, or asked to stop).
    TrackEnded {
        session_id: String,
        track_id: String,
        summary: TrackSummary,
    },
}

/// How a track's ingest went, for the segment bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct TrackSummary {
    pub started_wall_micros: Option<i64>,
    pub stopped_wall_micros: Option<i64>,
    pub reason: String,
}

pub type EventSink = Arc<dyn Fn(IngestEvent) + Send + Sync>;

/// A new writer for a running pump: supervision restarted the track into a new segment while
/// its connection stays up (WHIP). The pump switches at its next packet and waits for (and asks
/// for) a keyframe, so the new segment starts decodable.
#[derive(Clone, Default)]
pub struct SinkSwap {
    pending: Arc<AtomicBool>,
    sink: Arc<Mutex<Option<FrameSink>>>,
}

impl SinkSwap {
    pub fn put(&self, sink: FrameSink) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
        self.pending.store(true, Ordering::Release);
    }

    /// The new sink, once; a relaxed flag keeps the per-packet check free of the lock.
    fn take(&self) -> Option<FrameSink> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Drives one track: receiver outputs to the writer, keyframe requests to `request_keyframe`,
/// counters published at most every 250 ms, a bitrate every second.
pub struct TrackPump {
    pub session_id: String,
    pub track_id: String,
    pub receiver: TrackReceiver,
    pub sink: FrameSink,
    pub counters: Arc<TrackCounters>,
    pub events: EventSink,
    pub swap: SinkSwap,
    /// The instance's pause intervals: a frame whose time falls inside one is dropped.
    pub pause: Arc<PauseGate>,
    /// The last frame was dropped by a pause: the next one kept asks for a keyframe.
    after_pause: bool,
    /// `MediaWhilePaused` was sent (once per pump).
    flow_reported: bool,
    base: ReceiverStats,
    first_frame_sent: bool,
    last_publish: Option<Instant>,
    bitrate_window: (Instant, u64),
    out: Vec<ReceiverOutput>,
    /// Packets to ask for again, per SSRC, since the last `take_nacks`.
    nacks: Vec<(u32, Vec<u16>)>,
    /// The video orientation last signalled (degrees clockwise).
    rotation: Option<u16>,
}

impl TrackPump {
    pub fn new(
        session_id: String,
        track_id: String,
        receiver: TrackReceiver,
        sink: FrameSink,
        counters: Arc<TrackCounters>,
        events: EventSink,
        now: Instant,
    ) -> Self {
        let base = counters.totals();
        Self {
            session_id,
            track_id,
            receiver,
            sink,
            counters,
            events,
            swap: SinkSwap::default(),
            pause: Arc::default(),
            after_pause: false,
            flow_reported: false,
            base,
            first_frame_sent: false,
            last_publish: None,
            bitrate_window: (now, 0),
            out: Vec::new(),
            nacks: Vec::new(),
            rotation: None,
        }
    }

    /// The publisher's video orientation, as its packets carry it: told to the stream when it
    /// changes (a phone turned), once per change.
    pub fn orientation(&mut self, rotation: u16) {
        if self.rotation != Some(rotation) {
            self.rotation = Some(rotation);
            (self.events)(IngestEvent::Orientation {
                session_id: self.session_id.clone(),
                track_id: self.track_id.clone(),
                rotation,
            });
        }
    }

    /// Handles what the receiver produced; returns the SSRCs to send a keyframe request for.
    pub fn drain(&mut self, now: Instant) -> Vec<u32> {
        if self.counters.first_packet_at_micros.load(Ordering::Relaxed) == 0 {
            // The packet's arrival, not this drain (up to a receive round later).
            if let Some(arrived) = self.receiver.first_arrival() {
                let wall = u64::try_from(self.receiver.wall_at(arrived)).unwrap_or(0);
                self.counters.first_packet_at_micros.store(wall, Ordering::Relaxed);
            }
        }
        if let Some(sink) = self.swap.take() {
            // A new segment: it starts at a keyframe and announces its first frame.
            self.sink = sink;
            self.receiver.await_keyframe();
            self.first_frame_sent = false;
        }
        let mut requests = Vec::new();
        for output in self.out.drain(..) {
            match output {
                ReceiverOutput::Frame(frame) => {
                    let wall = frame.wall_micros;
                    if self.pause.covers(wall.unwrap_or_else(|| self.receiver.wall_at(now))) {
                        self.counters.num_frames_paused.fetch_add(1, Ordering::Relaxed);
                        self.after_pause = true;
                        if !self.flow_reported && !self.first_frame_sent {
                            self.flow_reported = true;
                            (self.events)(IngestEvent::MediaWhilePaused {
                                session_id: self.session_id.clone(),
                                track_id: self.track_id.clone(),
                            });
                        }
                        continue;
                    }
                    if std::mem::take(&mut self.after_pause) && self.receiver.codec().is_video() {
                        // The picture goes on from frames that were not recorded: ask the
                        // publisher for a keyframe (the file keeps the frames meanwhile; a
                        // decoder shows them as after any loss).
                        requests.extend(self.receiver.ssrc());
                    }
                    if !self.sink.offer(frame) {
                        self.counters.num_frames_dropped.fetch_add(1, Ordering::Relaxed);
                        // A dropped video frame breaks the decoder's chain: wait for (and ask
                        // for) a keyframe before writing again.
                        self.receiver.await_keyframe();
                    } else if !self.first_frame_sent {
                        self.first_frame_sent = true;
                        (self.events)(IngestEvent::FirstFrame {
                            session_id: self.session_id.clone(),
                            track_id: self.track_id.clone(),
                            wall_micros: wall.unwrap_or_default(),
                        });
                    }
                }
                ReceiverOutput::RequestKeyframe { ssrc } => requests.push(ssrc),
                ReceiverOutput::Nack { ssrc, sequences } => self.nacks.push((ssrc, sequences)),
            }
        }
        if self
            .last_publish
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_millis(250))
        {
            self.last_publish = Some(now);
            let stats = self.receiver.stats();
            self.counters.publish(&self.base, &stats);
            self.counters.jitter_buffer_ms.store(
                self.receiver.jitter_buffer_delay().as_millis() as u64,
                Ordering::Relaxed,
            );
            let (since, bytes) = self.bitrate_window;
            let elapsed = now.saturating_duration_since(since);
            if elapsed >= Duration::from_secs(1) {
                let bits = stats.num_bytes.saturating_sub(bytes) * 8;
                let bps = bits * 1_000_000 / elapsed.as_micros().max(1) as u64;
                self.counters.bitrate_bps.store(bps, Ordering::Relaxed);
                self.bitrate_window = (now, stats.num_bytes);
            }
        }
        requests
    }

    /// The NACKs the last drains produced.
    pub fn take_nacks(&mut self) -> Vec<(u32, Vec<u16>)> {
        std::mem::take(&mut self.nacks)
    }

    pub fn outputs(&mut self) -> &mut Vec<ReceiverOutput> {
        &mut self.out
    }

    /// Final counters and the ended event; returns the summary too.
    pub fn end(mut self, reason: &str) -> TrackSummary {
        // What still waits in the jitter buffer goes to the file: everything that arrived is
        // written, a gap still open is lost only now.
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        self.receiver.flush(now, &mut out);
        self.out = out;
        self.drain(now);
        let stats = self.receiver.stats();
        self.counters.publish(&self.base, &stats);
        self.counters.bitrate_bps.store(0, Ordering::Relaxed);
        let summary = TrackSummary {
            started_wall_micros: self.receiver.started_wall_micros(),
            stopped_wall_micros: self.receiver.stopped_wall_micros(),
            reason: reason.to_string(),
        };
        drop(std::mem::take(&mut self.out));
        (self.events)(IngestEvent::TrackEnded {
            session_id: self.session_id,
            track_id: self.track_id,
            summary: summary.clone(),
        });
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::Codec;
    use crate::media::writer::{TrackWriter, WriterConfig};

    #[test]
    fn a_swapped_sink_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let writer = TrackWriter::spawn(dir.path().join("t.seg1.webm"), Codec::Opus, WriterConfig::default()).unwrap();
        let swap = SinkSwap::default();
        assert!(swap.take().is_none(), "nothing was put");
        swap.put(writer.sink());
        let clone = swap.clone();
        assert!(clone.take().is_some(), "the pump's copy sees the new sink");
        assert!(swap.take().is_none(), "and only once");
        futures_executor::block_on(writer.finish());
    }

    #[test]
    fn the_first_packet_is_stamped_at_its_arrival_not_at_the_drain() {
        use crate::media::receiver::ReceiverConfig;
        use crate::media::rtp::RtpPacket;
        let dir = tempfile::tempdir().unwrap();
        let writer = TrackWriter::spawn(dir.path().join("t.seg1.webm"), Codec::Opus, WriterConfig::default()).unwrap();
        let t0 = Instant::now();
        let receiver = TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), t0, 1_000_000_000);
        let counters = Arc::new(TrackCounters::default());
        let events: EventSink = Arc::new(|_| {});
        let mut pump = TrackPump::new(
            "s".into(),
            "t".into(),
            receiver,
            writer.sink(),
            counters.clone(),
            events,
            t0,
        );
        let packet = RtpPacket {
            payload_type: 111,
            marker: false,
            sequence: 1,
            timestamp: 960,
            ssrc: 7,
            payload: bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        };
        // Arrived 10 ms in (the kernel's stamp); drained by a receive round 40 ms later.
        let mut out = std::mem::take(pump.outputs());
        pump.receiver.push_rtp(packet, t0 + Duration::from_millis(10), &mut out);
        *pump.outputs() = out;
        pump.drain(t0 + Duration::from_millis(50));
        assert_eq!(counters.first_packet_at_micros.load(Ordering::Relaxed), 1_000_010_000);
        futures_executor::block_on(writer.finish());
    }
}
