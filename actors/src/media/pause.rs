//! The pause gate of an instance: which frames are not recorded because recording was paused
//! then. A frame is dropped when its own time (its wall-clock capture time, as the receiver maps
//! it) falls inside a pause interval — not when it happens to arrive — so a file holds no frame
//! of a paused span and every frame outside one, whatever the network and reorder delays.
//! Shared by the recorder (which sets the intervals as pauses are committed) and every track
//! pump of the instance (which asks for each frame); a frame costs one relaxed load when the
//! instance was never paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::domain::PauseInterval;

#[derive(Debug, Default)]
pub struct PauseGate {
    /// Whether any interval is set: the per-frame fast path.
    any: AtomicBool,
    /// (start, end) in µs since the Unix epoch; `i64::MAX` for an open end.
    spans: RwLock<Vec<(i64, i64)>>,
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
        let any = !spans.is_empty();
        *self.spans.write().unwrap_or_else(|p| p.into_inner()) = spans;
        self.any.store(any, Ordering::Release);
    }

    /// Whether a frame of wall time `wall_micros` falls inside a pause (and is not recorded).
    pub fn covers(&self, wall_micros: i64) -> bool {
        if !self.any.load(Ordering::Acquire) {
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
}
