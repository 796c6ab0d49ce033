//! Media time: RTP timestamps unwrapped to 64 bits, and the mapping from a track's RTP clock to
//! wall-clock time through RTCP sender reports, so tracks of one sender share one clock.

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: i64 = 2_208_988_800;

/// Extends 32-bit RTP timestamps to 64 bits across wrap-arounds. Differences are read as signed
/// 32-bit values, so a timestamp slightly older than the last one (reordering, B-frames) maps
/// before it rather than four billion ticks later.
#[derive(Debug, Default, Clone)]
pub struct TimestampUnwrapper {
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let ext = self.peek(ts);
        if self.last.is_none_or(|(_, last)| ext > last) {
            self.last = Some((ts, ext));
        }
        ext
    }

    /// What `ts` unwraps to, without moving the reference.
    pub fn peek(&self, ts: u32) -> i64 {
        match self.last {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw) as i32),
        }
    }

    /// Continues the timeline across a sender restart: `ts` from now on means `ext`.
    pub fn rebase(&mut self, ts: u32, ext: i64) {
        self.last = Some((ts, ext));
    }

    pub fn last(&self) -> Option<i64> {
        self.last.map(|(_, ext)| ext)
    }
}

/// Converts a 64-bit NTP timestamp to microseconds since the Unix epoch.
pub fn ntp_to_unix_micros(ntp: u64) -> i64 {
    let secs = (ntp >> 32) as i64 - NTP_UNIX_OFFSET_SECS;
    let frac = ((ntp & 0xffff_ffff) * 1_000_000) >> 32;
    secs * 1_000_000 + frac as i64
}

/// Maps a track's unwrapped RTP time to wall-clock microseconds since the Unix epoch: through the
/// newest sender report when there is one (the sender's own clock, common to all its tracks),
/// otherwise through the arrival of the first frame (good to a network delay).
#[derive(Debug, Clone)]
pub struct MediaClock {
    clock_rate: u32,
    sender_report: Option<(i64, i64)>,
    arrival_anchor: Option<(i64, i64)>,
}

impl MediaClock {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            sender_report: None,
            arrival_anchor: None,
        }
    }

    pub fn on_sender_report(&mut self, ntp: u64, rtp_ext: i64) {
        self.sender_report = Some((ntp_to_unix_micros(ntp), rtp_ext));
    }

    /// Anchors the fallback mapping; only the first call counts.
    pub fn on_arrival(&mut self, wall_micros: i64, rtp_ext: i64) {
        self.arrival_anchor.get_or_insert((wall_micros, rtp_ext));
    }

    pub fn has_sender_report(&self) -> bool {
        self.sender_report.is_some()
    }

    pub fn wall_micros(&self, rtp_ext: i64) -> Option<i64> {
        let (wall, rtp) = self.sender_report.or(self.arrival_anchor)?;
        Some(wall + (rtp_ext - rtp) * 1_000_000 / i64::from(self.clock_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_unwrap_across_the_32_bit_boundary() {
        let mut u = TimestampUnwrapper::default();
        let start = u32::MAX - 3000;
        let a = u.unwrap(start);
        assert_eq!(u.unwrap(start.wrapping_add(3000)), a + 3000);
        assert_eq!(u.unwrap(start.wrapping_add(6000)), a + 6000, "past the wrap");
        assert_eq!(u.unwrap(start.wrapping_add(4500)), a + 4500, "an older one maps before");
        assert_eq!(u.last(), Some(a + 6000), "and does not move the reference back");
        // Many wraps: 90 kHz wraps every ~13 h; step through three of them in 1 s steps.
        let mut ts = 0u32;
        let first = u.unwrap(ts);
        for _ in 0..(3 * 47_722) {
            ts = ts.wrapping_add(90_000);
            u.unwrap(ts);
        }
        assert_eq!(u.last(), Some(first + 3 * 47_722 * 90_000));
        u.rebase(7, 1_000);
        assert_eq!(u.unwrap(97), 1_090);
    }

    #[test]
    fn sender_reports_map_rtp_time_to_wall_time() {
        // 2020-01-01T00:00:00Z = 1577836800 s Unix; half a second in fraction.
        let ntp = ((1_577_836_800u64 + 2_208_988_800) << 32) | 0x8000_0000;
        assert_eq!(ntp_to_unix_micros(ntp), 1_577_836_800_500_000);
        let mut video = MediaClock::new(90_000);
        let mut audio = MediaClock::new(48_000);
        assert_eq!(video.wall_micros(0), None);
        video.on_arrival(5_000_000, 1_000);
        assert_eq!(video.wall_micros(1_000 + 90_000), Some(6_000_000), "arrival fallback");
        // One sender, one NTP instant, two RTP clocks with unrelated offsets.
        video.on_sender_report(ntp, 900_000);
        audio.on_sender_report(ntp, 480_000);
        let v = video.wall_micros(900_000 + 9_000).unwrap();
        let a = audio.wall_micros(480_000 + 4_800).unwrap();
        assert_eq!(v, a, "100 ms after the report on both clocks is the same instant");
        assert_eq!(v, 1_577_836_800_600_000);
    }
}
