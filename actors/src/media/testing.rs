//! Deterministic packet fixtures for the media tests: a synthetic VP8 sender and a seeded
//! impairment model (loss, reordering, duplication) on simulated arrival times.

use bytes::Bytes;

use super::rtp::RtpPacket;

/// xorshift64*: tiny, seeded, the same sequence on every machine.
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Drops, delays and duplicates packets; returns them sorted by the new arrival time.
    pub fn impair(
        &mut self,
        packets: Vec<(u64, RtpPacket)>,
        loss: f64,
        reorder: f64,
        duplicate: f64,
        max_delay_ms: u64,
    ) -> Vec<(u64, RtpPacket)> {
        let mut out = Vec::new();
        for (at, p) in packets {
            if self.unit() < loss {
                continue;
            }
            let delay = if self.unit() < reorder {
                1 + self.next_u64() % max_delay_ms
            } else {
                0
            };
            if self.unit() < duplicate {
                out.push((at + delay + 1 + self.next_u64() % max_delay_ms, p.clone()));
            }
            out.push((at + delay, p));
        }
        out.sort_by_key(|(at, _)| *at);
        out
    }
}

/// A VP8 sender at 30 fps: a keyframe every `gop` frames, each frame split over
/// `packets_per_frame` packets, content derived from the frame's timestamp.
#[derive(Clone)]
pub struct SyntheticVp8 {
    first_seq: u16,
    first_ts: u32,
    gop: u32,
    packets_per_frame: u16,
    ssrc: u32,
    /// Picture IDs (15-bit) and this many temporal layers (1-3) in the descriptors.
    temporal_layers: Option<u8>,
}

impl SyntheticVp8 {
    /// Descriptors with a picture ID, TL0PICIDX and TID, in `layers` temporal layers (libvpx's
    /// patterns: 0 1 for two, 0 2 1 2 for three).
    pub fn with_picture_ids(mut self, layers: u8) -> Self {
        self.temporal_layers = Some(layers.clamp(1, 3));
        self
    }

    /// The temporal layer of frame `index` and the TL0PICIDX it refers to.
    pub fn layer_of(&self, index: u32) -> (u8, u8) {
        let pattern: &[u8] = match self.temporal_layers {
            Some(2) => &[0, 1],
            Some(3) => &[0, 2, 1, 2],
            _ => &[0],
        };
        let period = pattern.len() as u32;
        (pattern[(index % period) as usize], (index / period) as u8)
    }

    pub fn new(first_seq: u16, first_ts: u32, gop: u32, packets_per_frame: u16) -> Self {
        Self {
            first_seq,
            first_ts,
            gop: gop.max(1),
            packets_per_frame: packets_per_frame.max(1),
            ssrc: 0x5eed,
            temporal_layers: None,
        }
    }

    pub fn with_ssrc(mut self, ssrc: u32) -> Self {
        self.ssrc = ssrc;
        self
    }

    fn index_of(&self, ts: u32) -> u32 {
        ts.wrapping_sub(self.first_ts) / 3000
    }

    /// The whole encoded frame sent at RTP time `ts`.
    pub fn frame_bytes(&self, ts: u32) -> Bytes {
        let index = self.index_of(ts);
        let keyframe = index % self.gop == 0;
        let len = 100 * usize::from(self.packets_per_frame);
        let mut data = Vec::with_capacity(len);
        data.push(if keyframe { 0x00 } else { 0x01 });
        data.extend((1..len).map(|i| (index as usize * 31 + i) as u8));
        Bytes::from(data)
    }

    /// `num_frames` frames as (arrival ms, packet), in send order.
    pub fn packets(&self, num_frames: u32) -> Vec<(u64, RtpPacket)> {
        let mut out = Vec::new();
        let mut seq = self.first_seq;
        for index in 0..num_frames {
            let ts = self.first_ts.wrapping_add(index * 3000);
            let data = self.frame_bytes(ts);
            let chunk = data.len().div_ceil(usize::from(self.packets_per_frame));
            let at = u64::from(index) * 1000 / 30;
            let chunks: Vec<_> = data.chunks(chunk).collect();
            for (i, part) in chunks.iter().enumerate() {
                let mut payload = vec![if i == 0 { 0x10 } else { 0x00 }];
                if self.temporal_layers.is_some() {
                    let (tid, tl0) = self.layer_of(index);
                    let pid = (index as u16 + 1000) & 0x7fff;
                    payload[0] |= 0x80;
                    payload.extend_from_slice(&[0xe0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, tid << 6]);
                }
                payload.extend_from_slice(part);
                out.push((
                    at,
                    RtpPacket {
                        payload_type: 96,
                        marker: i + 1 == chunks.len(),
                        sequence: seq,
                        timestamp: ts,
                        ssrc: self.ssrc,
                        payload: Bytes::from(payload),
                    },
                ));
                seq = seq.wrapping_add(1);
            }
        }
        out
    }
}
