//! The stream's state snapshot for the debug tree, `/metrics` and the tests.

use super::*;
use crate::snapshot::{Counters, MediaCounters, SessionSilence, StreamCounters, TrackFileCounters};

impl TrackState {
    /// The track's media counters: what ingest counted and what its writers wrote.
    fn media_counters(&self) -> MediaCounters {
        let c = &self.counters;
        let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        let sum = |f: &dyn Fn(&WriterStats) -> u64| self.segments.iter().map(|s| f(&s.stats)).sum::<u64>();
        MediaCounters {
            num_packets: get(&c.num_packets),
            num_bytes: get(&c.num_bytes),
            num_frames: get(&c.num_frames),
            num_lost: get(&c.num_lost),
            num_keyframe_requests: get(&c.num_keyframe_requests),
            num_nacks: get(&c.num_nacks),
            num_late: get(&c.num_late),
            num_frames_incomplete: get(&c.num_frames_incomplete),
            num_frames_skipped: get(&c.num_frames_skipped),
            num_padding: get(&c.num_padding),
            jitter_buffer_ms: get(&c.jitter_buffer_ms),
            num_malformed: get(&c.num_malformed),
            num_refused: get(&c.num_refused),
            bitrate_bps: get(&c.bitrate_bps),
            num_frames_written: sum(&|s| s.num_frames_written.load(Ordering::Relaxed)),
            num_bytes_written: sum(&|s| s.num_bytes_written.load(Ordering::Relaxed)),
            num_frames_dropped: sum(&|s| s.num_frames_dropped.load(Ordering::Relaxed)),
            num_slow_writes: sum(&|s| s.num_slow_writes.load(Ordering::Relaxed)),
            num_flushes: sum(&|s| s.num_flushes.load(Ordering::Relaxed)),
            writer_queue_depth: self.segments.iter().map(|s| s.stats.queue_depth()).sum(),
            num_frames_paused: get(&c.num_frames_paused),
            num_tracks_not_writing: u64::from(self.not_writing),
        }
    }

    fn file_counters(&self) -> TrackFileCounters {
        TrackFileCounters {
            num_segments: self.segments.len() as u64,
            max_write_micros: self
                .segments
                .iter()
                .map(|s| s.stats.max_write_micros.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
            first_write_at_micros: self
                .segments
                .iter()
                .map(|s| s.stats.first_write_at_micros.load(Ordering::Relaxed))
                .find(|at| *at > 0)
                .unwrap_or(0),
            first_packet_at_micros: self.counters.first_packet_at_micros.load(Ordering::Relaxed),
        }
    }
}

impl Stream {
    /// The live plain-RTP session's silence (a WHIP session ends with its peer connection).
    fn session_silence(&self) -> SessionSilence {
        match self.session.as_ref().map(|s| &s.ingest) {
            Some(super::session::Ingest::Rtp(rtp)) => {
                let activity = rtp.activity();
                SessionSilence {
                    silent_ms: activity.silent_for(std::time::Instant::now()).as_millis() as u64,
                    idle_limit_ms: activity.idle_limit().as_millis() as u64,
                }
            }
            _ => SessionSilence::default(),
        }
    }
}

impl Handler<Snapshot> for Stream {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let mut totals = MediaCounters::default();
        let mut children = Vec::new();
        for track in &self.tracks {
            let media = track.media_counters();
            totals.add(&media);
            children.push(ActorSnapshot {
                kind: "Track",
                id: track.id.clone(),
                state: format!("{} {}", track.codec.kind().as_str(), track.codec.name()),
                mailbox_depth: 0,
                restarts: 0,
                last_error: None,
                counters: Counters::Track {
                    media,
                    track: track.file_counters(),
                },
                children: vec![],
            });
        }
        let stream = StreamCounters {
            num_tracks: self.tracks.len() as u64,
            num_sessions: self.num_sessions,
            connected: u64::from(self.session.is_some()),
            num_restarts: u64::from(self.restarts),
            num_failed: u64::from(self.has_failed()),
        };
        let millis_in_state = self
            .media
            .clock
            .now()
            .saturating_duration_since(self.state_since)
            .as_millis() as u64;
        MessageResult(ActorSnapshot {
            kind: "Stream",
            id: format!(
                "{} {} {}",
                self.record.id,
                self.record.user_id,
                self.record.kind.as_str()
            ),
            state: self.record.state.as_str().into(),
            mailbox_depth: 0,
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            counters: Counters::Stream {
                media: totals,
                stream,
                millis_in_state,
                session: self.session_silence(),
            },
            children,
        })
    }
}
