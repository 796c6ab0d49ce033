//! The stream's state snapshot for the debug tree and the tests.

use super::*;

impl Handler<Snapshot> for Stream {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut children = Vec::new();
        for track in &self.tracks {
            let c = &track.counters;
            let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            let sum = |f: &dyn Fn(&WriterStats) -> u64| track.segments.iter().map(|s| f(&s.stats)).sum::<u64>();
            let counters = BTreeMap::from([
                ("num_packets", get(&c.num_packets)),
                ("num_bytes", get(&c.num_bytes)),
                ("num_frames", get(&c.num_frames)),
                ("num_lost", get(&c.num_lost)),
                ("num_keyframe_requests", get(&c.num_keyframe_requests)),
                ("num_malformed", get(&c.num_malformed)),
                ("num_refused", get(&c.num_refused)),
                ("bitrate_bps", get(&c.bitrate_bps)),
                (
                    "num_frames_written",
                    sum(&|s| s.num_frames_written.load(Ordering::Relaxed)),
                ),
                (
                    "num_bytes_written",
                    sum(&|s| s.num_bytes_written.load(Ordering::Relaxed)),
                ),
                (
                    "num_frames_dropped",
                    sum(&|s| s.num_frames_dropped.load(Ordering::Relaxed)),
                ),
                ("num_slow_writes", sum(&|s| s.num_slow_writes.load(Ordering::Relaxed))),
                ("num_flushes", sum(&|s| s.num_flushes.load(Ordering::Relaxed))),
                (
                    "max_write_micros",
                    track
                        .segments
                        .iter()
                        .map(|s| s.stats.max_write_micros.load(Ordering::Relaxed))
                        .max()
                        .unwrap_or(0),
                ),
                (
                    "writer_queue_depth",
                    track.segments.iter().map(|s| s.stats.queue_depth()).sum(),
                ),
                ("num_segments", track.segments.len() as u64),
            ]);
            for (name, value) in &counters {
                if matches!(*name, "max_write_micros" | "num_segments") {
                    continue;
                }
                *totals.entry(name).or_default() += value;
            }
            children.push(ActorSnapshot {
                kind: "Track",
                id: track.id.clone(),
                state: format!("{} {}", track.codec.kind().as_str(), track.codec.name()),
                mailbox_depth: 0,
                restarts: 0,
                last_error: None,
                counters,
                children: vec![],
            });
        }
        totals.insert("num_tracks", self.tracks.len() as u64);
        totals.insert("num_sessions", self.num_sessions);
        totals.insert("connected", u64::from(self.session.is_some()));
        totals.insert("num_restarts", u64::from(self.restarts));
        totals.insert("num_failed", u64::from(self.has_failed()));
        totals.insert("millis_in_state", self.state_since.elapsed().as_millis() as u64);
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
            counters: totals,
            children,
        })
    }
}
