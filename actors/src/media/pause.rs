//! The pause gate of an instance: which frames are not recorded because recording was paused
//! then. A frame is dropped when its own time (its wall-clock capture time, as the receiver maps
//! it) falls inside a pause interval — not when it happens to arrive — so a file holds no frame
//! of a paused span and every frame outside one, whatever the network and reorder delays.
//! Shared by the recorder (which sets the intervals as pauses are committed) and every track
//! pump of the instance (which asks for each frame); a frame costs two atomic loads when the
//! instance was never paused (and a store when its time is the latest yet).
//!
//! A pause or a resume takes effect in the gate first, at a time after every frame already
//! decided, then is committed to the record at that same time (and taken back if the commit
//! fails): a frame decided while the record was being written cannot land on the wrong side.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::RwLock;

use chrono::{DateTime, TimeZone, Utc};

use crate::domain::PauseInterval;

#[derive(Debug)]
pub struct PauseGate {
    /// Whether any interval is set: the per-frame fast path.
    any: AtomicBool,
    /// The latest frame time any pump has asked about: a pause (or a resume) takes a time after
    /// it, so no frame already recorded falls inside a pause and none already dropped outside.
    decided: AtomicI64,
    /// (start, end) in µs since the Unix epoch; `i64::MAX` for an open end.
    spans: RwLock<Vec<(i64, i64)>>,
}

impl Default for PauseGate {
    fn default() -> Self {
        Self {
            any: AtomicBool::new(false),
            decided: AtomicI64::new(i64::MIN),
            spans: RwLock::default(),
        }
    }
}

/// What [`PauseGate::switch`] did: the time it took and how to undo it if the record's commit
/// fails.
#[derive(Debug)]
pub struct Switched {
    pub at: DateTime<Utc>,
    before: Vec<(i64, i64)>,
}

impl PauseGate {
    pub fn new(pauses: &[PauseInterval]) -> Self {
        let gate = Self::default();
        gate.set(pauses);
        gate
    }

    /// Takes the instance's pause intervals as the record now has them.
    pub fn set(&self, pauses: &[PauseInterval]) {
        let spans: Vec<(i64, i64)> = pauses
            .iter()
            .map(|p| {
                (
                    p.paused.timestamp_micros(),
                    p.resumed.map_or(i64::MAX, |r| r.timestamp_micros()),
                )
            })
            .collect();
        self.replace(spans);
    }

    fn replace(&self, spans: Vec<(i64, i64)>) {
        let mut guard = self.spans.write().unwrap_or_else(|p| p.into_inner());
        self.any.store(!spans.is_empty(), Ordering::SeqCst);
        *guard = spans;
    }

    /// Pauses (`true`) or resumes (`false`) the gate at once, at `now` or just after the latest
    /// frame time already decided, whichever is later; `None` when the gate is already so. The
    /// caller commits the returned time to the record, or [`PauseGate::undo`]es it.
    pub fn switch(&self, paused: bool, now: DateTime<Utc>) -> Option<Switched> {
        let mut spans = self.spans.write().unwrap_or_else(|p| p.into_inner());
        let open = spans.last().is_some_and(|(_, end)| *end == i64::MAX);
        if open == paused {
            return None;
        }
        let before = spans.clone();
        // Announce first, then read the frames decided: a pump records its frame's time before
        // it reads `any` (both sequentially consistent), so either this read sees that time or
        // that pump sees `any` and waits on this lock for the new span.
        self.any.store(true, Ordering::SeqCst);
        let decided = self.decided.load(Ordering::SeqCst);
        let mut at = now.timestamp_micros().max(decided.saturating_add(1));
        if paused {
            spans.push((at, i64::MAX));
        } else if let Some(last) = spans.last_mut() {
            at = at.max(last.0);
            last.1 = at;
        }
        let at = Utc.timestamp_micros(at).single().unwrap_or(now);
        Some(Switched { at, before })
    }

    /// Takes back a switch whose commit failed.
    pub fn undo(&self, switched: Switched) {
        self.replace(switched.before);
    }

    /// Whether a frame of wall time `wall_micros` falls inside a pause (and is not recorded).
    pub fn covers(&self, wall_micros: i64) -> bool {
        if self.decided.load(Ordering::SeqCst) < wall_micros {
            self.decided.fetch_max(wall_micros, Ordering::SeqCst);
        }
        if !self.any.load(Ordering::SeqCst) {
            return false;
        }
        self.spans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(start, end)| (*start..*end).contains(&wall_micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(micros: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_micros(micros).unwrap()
    }

    #[test]
    fn frames_inside_a_pause_are_dropped_and_all_others_kept() {
        let gate = PauseGate::default();
        assert!(!gate.covers(5));
        gate.set(&[
            PauseInterval {
                paused: at(100),
                resumed: Some(at(200)),
            },
            PauseInterval {
                paused: at(300),
                resumed: None,
            },
        ]);
        // (frame time, dropped)
        for (t, dropped) in [
            (99, false),
            (100, true),
            (199, true),
            (200, false),
            (299, false),
            (300, true),
            (i64::MAX - 1, true),
        ] {
            assert_eq!(gate.covers(t), dropped, "{t}");
        }
        gate.set(&[]);
        assert!(!gate.covers(150));
    }

    #[test]
    fn a_switch_takes_a_time_after_every_frame_already_decided_and_can_be_undone() {
        let gate = PauseGate::default();
        // A frame whose time is ahead of the clock was recorded before the pause came in.
        assert!(!gate.covers(1_000));
        assert!(gate.switch(false, at(500)).is_none(), "not paused: nothing to resume");
        let paused = gate.switch(true, at(500)).expect("pauses");
        assert_eq!(paused.at, at(1_001), "after the frame already recorded");
        assert!(gate.switch(true, at(600)).is_none(), "already paused");
        assert!(!gate.covers(1_000) && gate.covers(1_001));
        // A frame dropped at 2,000 stays inside: the resume comes after it.
        assert!(gate.covers(2_000));
        let resumed = gate.switch(false, at(1_500)).expect("resumes");
        assert_eq!(resumed.at, at(2_001));
        assert!(gate.covers(2_000) && !gate.covers(2_001));
        // A commit that failed takes the resume back: the gate is paused again.
        gate.undo(resumed);
        assert!(gate.covers(5_000));
        gate.undo(paused);
        assert!(!gate.covers(5_000), "and the pause, back to never paused");
        // The clock later than every frame: the switch takes the clock's time.
        assert_eq!(gate.switch(true, at(9_000)).expect("pauses").at, at(9_000));
    }

    #[test]
    fn frames_decided_while_a_pause_is_switched_never_land_on_the_wrong_side() {
        use std::sync::Arc;
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Pumps ask about frames of rising times while the pause is switched on and off.
        let pumps: Vec<_> = (0..3)
            .map(|n| {
                let (gate, stop) = (gate.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut decided = Vec::new();
                    let mut t = n;
                    while !stop.load(Ordering::Relaxed) {
                        decided.push((t, gate.covers(t)));
                        t += 3;
                    }
                    decided
                })
            })
            .collect();
        let mut switches = Vec::new();
        for n in 0..200 {
            std::thread::yield_now();
            if let Some(s) = gate.switch(n % 2 == 0, at(0)) {
                switches.push(s.at.timestamp_micros());
            }
        }
        stop.store(true, Ordering::Relaxed);
        // Every frame decided as the final intervals say.
        let spans: Vec<(i64, i64)> = switches
            .chunks(2)
            .map(|c| (c[0], c.get(1).copied().unwrap_or(i64::MAX)))
            .collect();
        for pump in pumps {
            for (t, dropped) in pump.join().expect("pump") {
                let inside = spans.iter().any(|(a, b)| (*a..*b).contains(&t));
                assert_eq!(dropped, inside, "frame at {t} against {spans:?}");
            }
        }
    }
}
