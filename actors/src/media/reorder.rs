//! The jitter buffer: packets in any order → packets in sequence order, duplicates dropped,
//! losses declared when a gap has waited longer than the wait allows. A recorder shows nothing
//! live, so it can wait: the wait starts at the configured window and grows (bounded) to what
//! the path shows, the time a gap really took to fill and how late a packet given up on came.
//! The start settles too: the first packet to arrive is not the first one sent, so nothing is
//! released, and no sequence number is taken as the first, until the first arrivals have waited.
//! No clock of its own: every call gets `now`, so tests run on simulated time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rtp::RtpPacket;

/// A jump of the sequence number this large is a sender restart, not loss.
const MAX_SEQUENCE_JUMP: i64 = 3000;

/// The least the first arrivals wait before the start is taken (see `settle_delay`): above the
/// 150 ms of jitter the recorder promises to absorb, within the 300 ms it promises for the first
/// keyframe to be written.
const INITIAL_SETTLE: Duration = Duration::from_millis(180);

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
    /// The configured wait: the least a gap is waited for.
    base_delay: Duration,
    /// The most a gap is waited for, however late the path's packets come.
    max_delay_cap: Duration,
    /// The wait now: the base, or more once the path showed packets later than that.
    max_delay: Duration,
    /// The longest a gap took to fill lately (decays, so a passing storm does not keep a long
    /// wait for ever).
    observed: Duration,
    observed_at: Option<Instant>,
    /// When the first packet arrived: nothing is released before the start settled.
    first_arrival: Option<Instant>,
    max_packets: usize,
    unwrapper: SequenceUnwrapper,
    /// Next sequence number to release.
    next: Option<i64>,
    waiting: BTreeMap<i64, (RtpPacket, Instant)>,
    /// Recent gaps given up on (and when), to tell a late packet from a duplicate and to learn
    /// how much longer the wait should have been; bounded.
    lost_ranges: Vec<(i64, i64, Instant)>,
    highest: Option<i64>,
    stats: ReorderStats,
}

impl ReorderBuffer {
    /// `max_delay`: how long a gap may hold packets back before it is declared lost (it does
    /// not grow); `max_packets`: how many packets may wait at most (memory bound).
    pub fn new(max_delay: Duration, max_packets: usize) -> Self {
        Self::adaptive(max_delay, max_delay, max_packets)
    }

    /// A wait that starts at `base_delay` and grows with the path's lateness up to `cap`.
    pub fn adaptive(base_delay: Duration, cap: Duration, max_packets: usize) -> Self {
        Self {
            base_delay,
            max_delay_cap: cap.max(base_delay),
            max_delay: base_delay,
            observed: Duration::ZERO,
            observed_at: None,
            first_arrival: None,
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

    /// Whether the start is still settling (nothing released, no first packet taken yet).
    pub fn settling(&self) -> bool {
        self.next.is_none()
    }

    /// While settling: the packets that wait, in sequence order, with their (unwrapped)
    /// sequence numbers.
    pub fn settling_packets(&self) -> impl Iterator<Item = (i64, &RtpPacket)> {
        self.waiting
            .iter()
            .map(|(seq, (packet, _))| (*seq, packet))
            .filter(|_| self.next.is_none())
    }

    /// Ends the settle now, with `seq` as the first packet: what waits below it is dropped (a
    /// caller that knows nothing sent before it matters: a video track starting at a whole
    /// keyframe, everything before which would be skipped anyway).
    pub fn start_at(&mut self, seq: i64, now: Instant, out: &mut Vec<Released>) {
        if self.next.is_none() {
            self.waiting = self.waiting.split_off(&seq);
            self.next = Some(seq);
            self.release(now, out);
        }
    }

    /// How long a gap is waited for now.
    pub fn delay(&self) -> Duration {
        self.max_delay
    }

    /// Learns that a gap took `wait` to fill (or would have): the wait grows to a margin above
    /// the longest seen lately; without new evidence it falls back by 10 ms a second.
    fn observe(&mut self, wait: Duration, now: Instant) {
        if self.max_delay_cap <= self.base_delay {
            return;
        }
        let decayed = match self.observed_at {
            Some(at) => {
                let fall = Duration::from_millis(now.saturating_duration_since(at).as_millis() as u64 / 100);
                self.observed.saturating_sub(fall)
            }
            None => Duration::ZERO,
        };
        self.observed = decayed.max(wait).min(self.max_delay_cap);
        self.observed_at = Some(now);
        let wanted = self.observed + self.observed / 2 + Duration::from_millis(20);
        self.max_delay = wanted.clamp(self.base_delay, self.max_delay_cap);
    }

    pub fn push(&mut self, packet: RtpPacket, now: Instant, out: &mut Vec<Released>) {
        let mut seq = self.unwrapper.unwrap(packet.sequence);
        self.first_arrival.get_or_insert(now);
        match self.next {
            Some(next) if (seq - next).abs() > MAX_SEQUENCE_JUMP => {
                seq = self.restart(packet.sequence, out);
            }
            Some(next) if seq < next => {
                // Either released already (a duplicate) or given up on (late): both dropped.
                if let Some(lost_at) = self.given_up_at(seq) {
                    self.stats.num_late += 1;
                    // The wait was this much too short.
                    let wait = self.max_delay + now.saturating_duration_since(lost_at);
                    self.observe(wait, now);
                } else {
                    self.stats.num_duplicates += 1;
                }
                return;
            }
            _ => {}
        }
        if self.next.is_none()
            && self
                .waiting
                .keys()
                .next()
                .is_some_and(|first| (seq - first).abs() > MAX_SEQUENCE_JUMP)
        {
            // A jump while the start settles: what waited belongs to a source that stopped.
            self.waiting.clear();
            self.highest = None;
        }
        if self.waiting.contains_key(&seq) {
            self.stats.num_duplicates += 1;
            return;
        }
        if self.highest.is_some_and(|h| seq < h) {
            self.stats.num_reordered += 1;
            // How long the gap it fills has waited: since the first packet after it came.
            if let Some((_, arrived)) = self.waiting.range(seq + 1..).next().map(|(_, v)| v) {
                let wait = now.saturating_duration_since(*arrived);
                self.observe(wait, now);
            }
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.waiting.insert(seq, (packet, now));
        self.release(now, out);
    }

    /// A copy of a packet carried by a later one (RFC 2198 redundancy): taken only if it fills
    /// a place still open (not released, not waiting, not given up on), so a copy never
    /// duplicates or reorders anything; `now` is the arrival of the packet that carried it.
    pub fn fill(&mut self, packet: RtpPacket, now: Instant, out: &mut Vec<Released>) {
        let seq = self.unwrapper.peek(packet.sequence);
        let in_order = match self.next {
            Some(next) => seq >= next && seq - next <= MAX_SEQUENCE_JUMP,
            // While the start settles: before what waits, but not far.
            None => self
                .waiting
                .keys()
                .next()
                .is_some_and(|first| (first - seq).abs() <= MAX_SEQUENCE_JUMP),
        };
        let open = in_order && !self.waiting.contains_key(&seq);
        if !open {
            return;
        }
        self.stats.num_recovered += 1;
        self.waiting.insert(seq, (packet, now));
        self.release(now, out);
    }

    /// An empty buffer for a new source (a new SSRC: its own sequence numbers), keeping the
    /// wait learned on this path and the counts so far.
    pub fn for_new_source(&self) -> ReorderBuffer {
        let mut fresh = ReorderBuffer::adaptive(self.base_delay, self.max_delay_cap, self.max_packets);
        fresh.max_delay = self.max_delay;
        fresh.observed = self.observed;
        fresh.observed_at = self.observed_at;
        fresh.stats = self.stats;
        fresh
    }

    /// Releases everything that waits, in order, the gaps still open counted lost: the ingest
    /// ends, and nothing that arrived may be left behind.
    pub fn flush(&mut self, out: &mut Vec<Released>) {
        let mut expected = self.next.or_else(|| self.waiting.keys().next().copied());
        for (s, (packet, arrived)) in std::mem::take(&mut self.waiting) {
            if let Some(e) = expected.filter(|e| s > *e) {
                self.stats.num_lost += (s - e) as u64;
                out.push(Released::Lost((s - e) as u64));
            }
            out.push(Released::Packet(packet, arrived));
            expected = Some(s + 1);
        }
        self.next = expected;
    }

    /// Releases what timed out; call when no packet arrived for a while.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Released>) {
        self.release(now, out);
    }

    /// When [`Self::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.next.is_none() {
            return self.first_arrival.map(|at| at + self.settle_delay());
        }
        self.waiting.values().next().map(|(_, at)| *at + self.max_delay)
    }

    /// How long the first arrivals wait before the lowest of them is taken as the start: the
    /// jitter of a real path reorders its first packets as much as any (a packet sent earlier
    /// may arrive after one sent later), and a start taken too early loses what came before it.
    fn settle_delay(&self) -> Duration {
        self.max_delay
            .max(INITIAL_SETTLE)
            .min(self.max_delay_cap.max(self.base_delay))
    }

    fn release(&mut self, now: Instant, out: &mut Vec<Released>) {
        if self.next.is_none() {
            let settled = self
                .first_arrival
                .is_some_and(|at| now.saturating_duration_since(at) >= self.settle_delay());
            if !settled && self.waiting.len() <= self.max_packets {
                return;
            }
            let Some(&first) = self.waiting.keys().next() else {
                return;
            };
            self.next = Some(first);
        }
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
                self.lost_ranges.push((next, first, now));
                out.push(Released::Lost(gap));
                self.next = Some(first);
            } else {
                return;
            }
        }
    }

    /// When the gap `seq` was in was given up on, if it was.
    fn given_up_at(&self, seq: i64) -> Option<Instant> {
        self.lost_ranges
            .iter()
            .find(|(from, to, _)| (*from..*to).contains(&seq))
            .map(|(_, _, at)| *at)
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
        // Nothing before the start settled (the window, here).
        assert!(out.is_empty());
        rb.poll(t0 + Duration::from_millis(50), &mut out);
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
        assert_eq!(
            rb.next_deadline(),
            Some(t0 + Duration::from_millis(50)),
            "the start settles"
        );
        rb.poll(t0 + Duration::from_millis(50), &mut out);
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
    fn the_start_is_the_lowest_packet_of_the_first_arrivals_not_the_first_to_arrive() {
        let t0 = Instant::now();
        let mut rb = ReorderBuffer::adaptive(Duration::from_millis(100), Duration::from_millis(1500), 512);
        let mut out = Vec::new();
        // Jitter: 7 arrives first, 5 and 6 (sent before it) 120 and 150 ms later.
        rb.push(pkt(7), t0, &mut out);
        rb.push(pkt(8), t0 + Duration::from_millis(30), &mut out);
        rb.push(pkt(5), t0 + Duration::from_millis(120), &mut out);
        rb.push(pkt(6), t0 + Duration::from_millis(150), &mut out);
        rb.poll(t0 + Duration::from_millis(170), &mut out);
        assert!(out.is_empty(), "still settling");
        // The reordering seen while settling lengthens the settle itself.
        assert!(rb.delay() > INITIAL_SETTLE, "{:?}", rb.delay());
        rb.poll(t0 + rb.delay(), &mut out);
        assert_eq!(seqs(&out), vec![5, 6, 7, 8]);
        assert_eq!(
            (rb.stats().num_duplicates, rb.stats().num_late, rb.stats().num_lost),
            (0, 0, 0)
        );
    }

    #[test]
    fn the_wait_grows_to_the_lateness_the_path_shows_and_falls_back_when_it_calms() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rb = ReorderBuffer::adaptive(ms(100), ms(1500), 512);
        let mut out = Vec::new();
        rb.push(pkt(1), t0, &mut out);
        rb.poll(t0 + INITIAL_SETTLE, &mut out);
        assert_eq!(rb.delay(), ms(100));
        // 2 is late by 160 ms: it was given up on at 100 ms.
        rb.push(pkt(3), t0 + ms(200), &mut out);
        rb.poll(t0 + ms(300), &mut out);
        rb.push(pkt(2), t0 + ms(360), &mut out);
        assert_eq!(rb.stats().num_late, 1);
        assert!(
            rb.delay() >= ms(160),
            "the wait grew to what the path showed: {:?}",
            rb.delay()
        );
        // Now a packet 200 ms behind fills its gap in time.
        rb.push(pkt(5), t0 + ms(400), &mut out);
        rb.push(pkt(4), t0 + ms(600), &mut out);
        assert_eq!(rb.stats().num_lost, 1, "only the first one");
        assert!(rb.delay() >= ms(300), "{:?}", rb.delay());
        // Bounded by the cap however late a packet comes.
        rb.push(pkt(7), t0 + ms(700), &mut out);
        rb.poll(t0 + ms(3_000), &mut out);
        rb.push(pkt(6), t0 + ms(9_000), &mut out);
        assert_eq!(rb.delay(), ms(1500));
        // A calm path: the evidence decays, 10 ms a second.
        let later = t0 + Duration::from_secs(200);
        rb.push(pkt(9), later, &mut out);
        rb.push(pkt(8), later + ms(5), &mut out);
        assert_eq!(rb.delay(), ms(100));
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
        // 2 is missing: its copy (carried by 3) fills it.
        rb.fill(pkt(2), t0, &mut out);
        rb.poll(t0 + Duration::from_millis(50), &mut out);
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
        rb.poll(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(seqs(&out), vec![65534, 65535, 0, 1]);
        out.clear();
        rb.push(pkt(30000), t0, &mut out);
        rb.push(pkt(30001), t0, &mut out);
        assert_eq!(seqs(&out), vec![30000, 30001]);
        assert_eq!(rb.stats().num_restarts, 1);
        assert_eq!(rb.stats().num_lost, 0);
    }
}
