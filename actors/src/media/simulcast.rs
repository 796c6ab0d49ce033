//! Simulcast over WHIP (`a=simulcast` with `a=rid`): one video track arrives as several RTP
//! streams, the same picture at different sizes. The recorder writes one of them into the
//! track's file: the highest that arrives (measured by what it carries: a layer's bitrate grows
//! with its size), switching down when it stops or falls away (the publisher's bandwidth) and
//! back up when it returns, with enough hysteresis not to flap. A switch is a new source for the
//! track's receiver: the timeline continues and the new layer starts at a keyframe it is asked
//! for. No IO and no clock of its own: packets and `now` come in.

use std::time::{Duration, Instant};

/// The window a layer's bitrate is measured over.
const WINDOW: Duration = Duration::from_millis(1000);
/// A layer silent this long is gone (the publisher stopped sending it).
const GONE_AFTER: Duration = Duration::from_millis(600);
/// Another layer must carry this much more (for a whole window) to be switched to.
const SWITCH_UP_RATIO: f64 = 1.5;
/// Between two switches at least (a switch costs a keyframe).
const MIN_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Layer {
    ssrc: u32,
    /// Bytes in the current and the previous window.
    bytes: (u64, u64),
    window_start: Instant,
    first: Instant,
    last: Instant,
}

impl Layer {
    /// Bytes per second over the last whole window (the current one while the first runs).
    fn rate(&self, now: Instant) -> f64 {
        if now.saturating_duration_since(self.first) < WINDOW {
            let secs = now.saturating_duration_since(self.first).as_secs_f64().max(0.05);
            return self.bytes.0 as f64 / secs;
        }
        self.bytes.1 as f64 / WINDOW.as_secs_f64()
    }

    fn roll(&mut self, now: Instant) {
        while now.saturating_duration_since(self.window_start) >= WINDOW {
            self.bytes = (0, self.bytes.0);
            self.window_start += WINDOW;
        }
    }
}

/// Chooses which RTP stream (SSRC) of a simulcast track is recorded.
#[derive(Debug, Default)]
pub struct LayerSelector {
    layers: Vec<Layer>,
    selected: Option<u32>,
    switched_at: Option<Instant>,
    /// Switches made (the debug tree's counter).
    pub num_switches: u64,
}

/// At most this many layers are followed (Chrome sends three).
const MAX_LAYERS: usize = 8;

impl LayerSelector {
    /// A packet of `bytes` on `ssrc` arrived: whether it belongs to the recorded layer.
    pub fn take(&mut self, ssrc: u32, bytes: usize, now: Instant) -> bool {
        let num_layers = self.layers.len();
        match self.layers.iter_mut().find(|l| l.ssrc == ssrc) {
            Some(layer) => {
                layer.roll(now);
                layer.bytes.0 += bytes as u64;
                layer.last = now;
            }
            None if num_layers < MAX_LAYERS => self.layers.push(Layer {
                ssrc,
                bytes: (bytes as u64, 0),
                window_start: now,
                first: now,
                last: now,
            }),
            None => return false,
        }
        self.reselect(now);
        self.selected == Some(ssrc)
    }

    /// The recorded layer now.
    pub fn selected(&self) -> Option<u32> {
        self.selected
    }

    fn reselect(&mut self, now: Instant) {
        for layer in &mut self.layers {
            layer.roll(now);
        }
        let alive = |l: &&Layer| now.saturating_duration_since(l.last) < GONE_AFTER;
        let best = self
            .layers
            .iter()
            .filter(alive)
            .max_by(|a, b| a.rate(now).total_cmp(&b.rate(now)))
            .map(|l| (l.ssrc, l.rate(now)));
        let current = self
            .selected
            .and_then(|s| self.layers.iter().filter(alive).find(|l| l.ssrc == s));
        let choice = match (current, best) {
            (None, Some((best, _))) => Some(best),
            (Some(current), Some((best, best_rate))) if best != current.ssrc => {
                let settled = self
                    .switched_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= MIN_HOLD);
                let measured = now
                    .saturating_duration_since(self.layers.iter().find(|l| l.ssrc == best).map_or(now, |l| l.first))
                    >= WINDOW;
                let better = best_rate > current.rate(now) * SWITCH_UP_RATIO;
                (settled && measured && better).then_some(best)
            }
            _ => None,
        };
        if let Some(choice) = choice.filter(|c| self.selected != Some(*c)) {
            if self.selected.is_some() {
                self.num_switches += 1;
                self.switched_at = Some(now);
            }
            self.selected = Some(choice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds three layers (q 20 kB/s, h 60 kB/s, f 180 kB/s) in 10 ms steps from `from` for
    /// `ms`, `active` saying which send; returns the packets taken per layer.
    fn run(sel: &mut LayerSelector, t0: Instant, from: u64, ms: u64, active: &[u32]) -> [u64; 3] {
        let mut taken = [0u64; 3];
        for step in (from..from + ms).step_by(10) {
            let now = t0 + Duration::from_millis(step);
            for (i, (ssrc, bytes)) in [(1u32, 200usize), (2, 600), (3, 1800)].into_iter().enumerate() {
                if active.contains(&ssrc) && sel.take(ssrc, bytes, now) {
                    taken[i] += 1;
                }
            }
        }
        taken
    }

    #[test]
    fn the_highest_layer_is_recorded_and_the_track_switches_down_and_back_up() {
        let t0 = Instant::now();
        let mut sel = LayerSelector::default();
        // The first layer to arrive is taken at once, the highest once it is measured.
        run(&mut sel, t0, 0, 1_500, &[1, 2, 3]);
        assert_eq!(sel.selected(), Some(3));
        let taken = run(&mut sel, t0, 1_500, 3_000, &[1, 2, 3]);
        assert_eq!(taken[0] + taken[1], 0, "only the top layer: {taken:?}");
        // The top layer stops (the publisher's bandwidth fell): down to the next.
        run(&mut sel, t0, 4_500, 1_000, &[1, 2]);
        assert_eq!(sel.selected(), Some(2));
        // It comes back: up again once measured and the hold passed.
        run(&mut sel, t0, 5_500, 3_000, &[1, 2, 3]);
        assert_eq!(sel.selected(), Some(3));
        assert!(sel.num_switches <= 3, "{} switches", sel.num_switches);
    }

    #[test]
    fn a_single_stream_is_always_taken() {
        let t0 = Instant::now();
        let mut sel = LayerSelector::default();
        for n in 0..500u64 {
            assert!(sel.take(42, 1000, t0 + Duration::from_millis(n * 20)));
        }
        assert_eq!(sel.num_switches, 0);
    }
}
