//! A small reorder window: packets in any order → packets in sequence order, duplicates dropped,
//! losses declared when a gap has waited longer than the window allows. No clock of its own:
//! every call gets `now`, so tests run on simulated time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rtp::RtpPacket;

/// A jump of the sequence number this large is a sender restart, not loss.
const MAX_SEQUENCE_JUMP: i64 = 3000;

/// Extends 16-bit sequence numbers to 64 bits across wrap-arounds, tolerating reordering.
#[derive(Debug, Default, Clone)]
pub struct SequenceUnwrapper {
    last: Option<i64>,
}

impl SequenceUnwrapper {
    pub fn unwrap(&mut self, seq: u16) -> i64 {
        let ext = self.peek(seq);
        if self.last.is_none_or(|last| ext > last) {
            self.last = Some(ext);
        }
        ext
    }

    /// What `seq` unwraps to, without moving the reference.
    pub fn peek(&self, seq: u16) -> i64 {
        match self.last {
            None => i64::from(seq) + (1 << 16),
            Some(last) => {
                let delta = i64::from(seq.wrapping_sub(last as u16) as i16);
                last + delta
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// A packet, with its arrival.
    Packet(RtpPacket, Instant),
    /// This many packets will never come; the next `Packet` follows the gap.
    Lost(u64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReorderStats {
    pub num_duplicates: u64,
    /// Arrived after the window had given up on them.
    pub num_late: u64,
    pub num_lost: u64,
    pub num_reordered: u64,
    pub num_restarts: u64,
    /// Missing packets filled from a copy carried by a later one (RED).
    pub num_recovered: u64,
}

pub struct ReorderBuffer {
    max_delay: Duration,
    max_packets: usize,
    unwrapper: SequenceUnwrapper,
    /// Next sequence number to release.
    next: Option<i64>,
    waiting: BTreeMap<i64, (RtpPacket, Instant)>,
    /// Recent gaps given up on, to tell a late packet from a duplicate; bounded.
    lost_ranges: Vec<(i64, i64)>,
    highest: Option<i64>,
    stats: ReorderStats,
}

impl ReorderBuffer {
    /// `max_delay`: how long a gap may hold packets back before it is declared lost;
    /// `max_packets`: how many packets may wait at most (memory bound).
    pub fn new(max_delay: Duration, max_packets: usize) -> Self {
        Self {
            max_delay,
            max_packets: max_packets.max(1),
            unwrapper: SequenceUnwrapper::default(),
            next: None,
            waiting: BTreeMap::new(),
            lost_ranges: Vec::new(),
            highest: None,
            stats: ReorderStats::default(),
        }
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn push(&mut self, packet: RtpPacket, now: Instant, out: &mut Vec<Released>) {
        let mut seq = self.unwrapper.unwrap(packet.sequence);
        let next = *self.next.get_or_insert(seq);
        if (seq - next).abs() > MAX_SEQUENCE_JUMP {
            seq = self.restart(packet.sequence, out);
        } else if seq < next {
            // Either released already (a duplicate) or given up on (late): both dropped.
            if self.was_given_up(seq) {
                self.stats.num_late += 1;
            } else {
                self.stats.num_duplicates += 1;
            }
            return;
        }
        if self.waiting.contains_key(&seq) {
            self.stats.num_duplicates += 1;
            return;
        }
        if self.highest.is_some_and(|h| seq < h) {
            self.stats.num_reordered += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.waiting.insert(seq, (packet, now));
        self.release(now, out);
    }

    /// A copy of a packet carried by a later one (RFC 2198 redundancy): taken only if it fills
    /// a place still open (not released, not waiting, not given up on), so a copy never
    /// duplicates or reorders anything; `now` is the arrival of the packet that carried it.
    pub fn fill(&mut self, packet: RtpPacket, now: Instant, out: &mut Vec<Released>) {
        let Some(next) = self.next else { return };
        let seq = self.unwrapper.peek(packet.sequence);
        let open = seq >= next && seq - next <= MAX_SEQUENCE_JUMP && !self.waiting.contains_key(&seq);
        if !open {
            return;
        }
        self.stats.num_recovered += 1;
        self.waiting.insert(seq, (packet, now));
        self.release(now, out);
    }

    /// Releases what timed out; call when no packet arrived for a while.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Released>) {
        self.release(now, out);
    }

    /// When [`Self::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().next().map(|(_, at)| *at + self.max_delay)
    }

    fn release(&mut self, now: Instant, out: &mut Vec<Released>) {
        loop {
            let Some(next) = self.next else { return };
            if let Some((packet, arrived)) = self.waiting.remove(&next) {
                out.push(Released::Packet(packet, arrived));
                self.next = Some(next + 1);
                continue;
            }
            let Some((&first, (_, arrived))) = self.waiting.iter().next() else {
                return;
            };
            let overdue = now.saturating_duration_since(*arrived) >= self.max_delay;
            if overdue || self.waiting.len() > self.max_packets {
                let gap = (first - next) as u64;
                self.stats.num_lost += gap;
                if self.lost_ranges.len() >= 64 {
                    self.lost_ranges.remove(0);
                }
                self.lost_ranges.push((next, first));
                out.push(Released::Lost(gap));
                self.next = Some(first);
            } else {
                return;
            }
        }
    }

    fn was_given_up(&self, seq: i64) -> bool {
        self.lost_ranges.iter().any(|(from, to)| (*from..*to).contains(&seq))
    }

    /// The sender started a new sequence: whatever waits is released in order, the gaps before
    /// it counted lost, and the window restarts at `seq`.
    fn restart(&mut self, seq: u16, out: &mut Vec<Released>) -> i64 {
        self.stats.num_restarts += 1;
        let mut expected = self.next.unwrap_or(0);
        for (s, (packet, arrived)) in std::mem::take(&mut self.waiting) {
            if s > expected {
                self.stats.num_lost += (s - expected) as u64;
                out.push(Released::Lost((s - expected) as u64));
            }
            out.push(Released::Packet(packet, arrived));
            expected = s + 1;
        }
        self.unwrapper = SequenceUnwrapper::default();
        let ext = self.unwrapper.unwrap(seq);
        self.next = Some(ext);
        self.lost_ranges.clear();
        self.highest = None;
        ext
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(seq: u16) -> RtpPacket {
        RtpPacket {
            payload_type: 96,
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq) * 10,
            ssrc: 1,
            payload: Bytes::new(),
        }
    }

    fn seqs(out: &[Released]) -> Vec<i64> {
        out.iter()
            .map(|r| match r {
                Released::Packet(p, _) => i64::from(p.sequence),
                Released::Lost(n) => -(*n as i64),
            })
            .collect()
    }

    #[test]
    fn sequence_numbers_unwrap_across_the_16_bit_boundary() {
        let mut u = SequenceUnwrapper::default();
        let a = u.unwrap(65534);
        assert_eq!(u.unwrap(65535), a + 1);
        assert_eq!(u.unwrap(1), a + 3);
        assert_eq!(u.unwrap(0), a + 2, "a late packet from before the wrap");
        assert_eq!(u.unwrap(65535), a + 1);
    }

    #[test]
    fn reordered_packets_come_out_in_order_and_duplicates_are_dropped() {
        let t0 = Instant::now();
        let mut rb = ReorderBuffer::new(Duration::from_millis(50), 100);
        let mut out = Vec::new();
        for seq in [10, 12, 11, 11, 13, 12] {
            rb.push(pkt(seq), t0, &mut out);
        }
        assert_eq!(seqs(&out), vec![10, 11, 12, 13]);
        assert_eq!(rb.stats().num_duplicates, 2);
        assert_eq!(rb.stats().num_reordered, 1);
    }

    #[test]
    fn a_gap_is_declared_lost_after_the_window_and_late_packets_are_dropped() {
        let t0 = Instant::now();
        let mut rb = ReorderBuffer::new(Duration::from_millis(50), 100);
        let mut out = Vec::new();
        rb.push(pkt(1), t0, &mut out);
        rb.push(pkt(4), t0 + Duration::from_millis(10), &mut out);
        assert_eq!(seqs(&out), vec![1]);
        assert_eq!(rb.next_deadline(), Some(t0 + Duration::from_millis(60)));
        rb.poll(t0 + Duration::from_millis(59), &mut out);
        assert_eq!(seqs(&out), vec![1]);
        rb.poll(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(seqs(&out), vec![1, -2, 4]);
        rb.push(pkt(2), t0 + Duration::from_millis(70), &mut out);
        assert_eq!(rb.stats().num_late, 1);
        assert_eq!(rb.stats().num_lost, 2);
    }

    #[test]
    fn a_full_window_gives_up_on_the_gap_at_once() {
        let t0 = Instant::now();
        let mut rb = ReorderBuffer::new(Duration::from_secs(10), 3);
        let mut out = Vec::new();
        for seq in [1, 3, 4, 5, 6] {
            rb.push(pkt(seq), t0, &mut out);
        }
        assert_eq!(seqs(&out), vec![1, -1, 3, 4, 5, 6]);
    }

    #[test]
    fn a_copy_fills_only_a_place_still_open() {
        let t0 = Instant::now();
        let mut rb = ReorderBuffer::new(Duration::from_millis(50), 100);
        let mut out = Vec::new();
        rb.push(pkt(1), t0, &mut out);
        rb.push(pkt(3), t0, &mut out);
        // 2 is missing: its copy (carried by 3) fills it, and 3 follows at once.
        rb.fill(pkt(2), t0, &mut out);
        assert_eq!(seqs(&out), vec![1, 2, 3]);
        // Copies of what was released, or of what waits, change nothing.
        rb.fill(pkt(1), t0, &mut out);
        rb.push(pkt(5), t0, &mut out);
        rb.fill(pkt(5), t0, &mut out);
        assert_eq!(seqs(&out), vec![1, 2, 3]);
        let stats = rb.stats();
        assert_eq!((stats.num_recovered, stats.num_duplicates, stats.num_lost), (1, 0, 0));
        // A place given up on stays given up on.
        rb.poll(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(seqs(&out), vec![1, 2, 3, -1, 5]);
        rb.fill(pkt(4), t0 + Duration::from_millis(70), &mut out);
        assert_eq!(seqs(&out), vec![1, 2, 3, -1, 5]);
    }

    #[test]
    fn the_window_follows_a_wrap_and_a_sender_restart() {
        let t0 = Instant::now();
        let mut rb = ReorderBuffer::new(Duration::from_millis(50), 100);
        let mut out = Vec::new();
        for seq in [65534, 0, 65535, 1] {
            rb.push(pkt(seq), t0, &mut out);
        }
        assert_eq!(seqs(&out), vec![65534, 65535, 0, 1]);
        out.clear();
        rb.push(pkt(30000), t0, &mut out);
        rb.push(pkt(30001), t0, &mut out);
        assert_eq!(seqs(&out), vec![30000, 30001]);
        assert_eq!(rb.stats().num_restarts, 1);
        assert_eq!(rb.stats().num_lost, 0);
    }
}
