//! Generic NACK (RFC 4585 §6.2.1) for a plain-RTP sender that retransmits: which missing
//! packets to ask for, and when. No IO and no clock of its own: arrivals and `now` come in.

use std::time::{Duration, Instant};

/// Generic NACK for a sender that retransmits: a missing packet is asked for shortly after its
/// gap shows (a little reordering is not loss) and again until it comes, it is given up on, or
/// the tries run out.
#[derive(Debug, Default)]
pub(super) struct NackState {
    unwrapper: super::reorder::SequenceUnwrapper,
    /// The lowest and highest packets seen (the first to arrive need not be the first sent).
    lowest: Option<i64>,
    highest: Option<i64>,
    /// Missing packets: when the gap showed, when last asked, tries left.
    missing: std::collections::BTreeMap<i64, (Instant, Option<Instant>, u8)>,
}

/// How long a gap may be a mere reordering before its packets are asked for.
pub(super) const NACK_FIRST_AFTER: Duration = Duration::from_millis(20);
/// Between two requests for the same packet: a round trip on a long path.
pub(super) const NACK_INTERVAL: Duration = Duration::from_millis(120);
pub(super) const NACK_TRIES: u8 = 5;
/// Most packets a gap may miss to be asked for; a larger jump is a restart, not loss.
const NACK_MAX_GAP: i64 = 256;

impl NackState {
    /// A packet arrived: its place is no longer missing; places it skipped now are.
    pub(super) fn arrived(&mut self, sequence: u16, now: Instant) {
        let seq = self.unwrapper.unwrap(sequence);
        self.missing.remove(&seq);
        // Below everything seen so far (jitter at the start): what lies between is missing.
        if let Some(low) = self.lowest.filter(|low| seq + 1 < *low && *low - seq <= NACK_MAX_GAP) {
            for s in seq + 1..low {
                self.missing.insert(s, (now, None, NACK_TRIES));
            }
        }
        if self.lowest.is_none_or(|low| seq < low) {
            self.lowest = Some(seq);
        }
        match self.highest {
            Some(h) if seq > h + 1 && seq - h <= NACK_MAX_GAP => {
                for s in h + 1..seq {
                    self.missing.insert(s, (now, None, NACK_TRIES));
                }
            }
            Some(h) if seq - h > NACK_MAX_GAP || h - seq > NACK_MAX_GAP => self.missing.clear(),
            _ => {}
        }
        if self.highest.is_none_or(|h| seq > h) {
            self.highest = Some(seq);
        }
        while self.missing.len() > NACK_MAX_GAP as usize {
            self.missing.pop_first();
        }
    }

    /// Missing packets older than `give_up` are no longer waited for.
    pub(super) fn forget_before(&mut self, give_up: Instant) {
        self.missing.retain(|_, (seen, _, _)| *seen > give_up);
    }

    /// The packets due to be asked for at `now`.
    pub(super) fn due(&mut self, now: Instant) -> Vec<u16> {
        let mut out = Vec::new();
        self.missing.retain(|seq, (seen, asked, tries)| {
            let due = match asked {
                None => now.saturating_duration_since(*seen) >= NACK_FIRST_AFTER,
                Some(at) => now.saturating_duration_since(*at) >= NACK_INTERVAL,
            };
            if due {
                out.push(*seq as u16);
                *asked = Some(now);
                *tries -= 1;
            }
            *tries > 0 || !due
        });
        out
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.missing
            .values()
            .map(|(seen, asked, _)| match asked {
                None => *seen + NACK_FIRST_AFTER,
                Some(at) => *at + NACK_INTERVAL,
            })
            .min()
    }
}
