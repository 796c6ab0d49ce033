//! VP8 payload format (RFC 7741 §4).

use super::{DepacketizeError, PayloadFormat, PayloadPart};

pub struct Vp8Depacketizer;

/// What a VP8 payload descriptor says about its frame's place among the others (RFC 7741
/// §4.2): the picture ID counts frames, TL0PICIDX counts base-layer frames, TID is the frame's
/// temporal layer and Y says it depends on the base layer only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picture {
    pub id: u16,
    /// 7 or 15: the picture ID wraps at `1 << id_bits`.
    pub id_bits: u8,
    pub tl0: Option<u8>,
    pub tid: Option<u8>,
    pub layer_sync: bool,
}

impl Picture {
    fn follows(&self, previous: u16) -> bool {
        let mask = (1u16 << self.id_bits) - 1;
        self.id == previous.wrapping_add(1) & mask
    }
}

/// What becomes of a whole VP8 frame after losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything it refers to was written: it decodes.
    Write,
    /// An upper-layer frame whose references were lost: left out, the base layer goes on.
    Skip,
    /// A base-layer frame was lost: nothing decodes until a keyframe.
    AwaitKeyframe,
}

/// Which VP8 frames still decode after losses, from their picture IDs and temporal layers: a
/// lost packet that was no frame's (a padding probe between frames) or a lost frame of an upper
/// temporal layer stops nothing; a lost base-layer frame stops everything until a keyframe.
/// Without picture IDs every loss waits for a keyframe.
#[derive(Debug, Default)]
pub struct Vp8Chain {
    /// The picture ID of the last frame that arrived whole, written or not.
    last_seen: Option<u16>,
    /// The TL0PICIDX of the last base-layer frame written.
    base: Option<u8>,
    /// No frame went missing since that base-layer frame.
    group_intact: bool,
    /// A base-layer frame was lost: only a keyframe restarts.
    broken: bool,
}

impl Vp8Chain {
    /// A whole frame, in sequence order; `lost_before`: packets went missing since the last.
    pub fn frame(&mut self, picture: Option<Picture>, keyframe: bool, lost_before: bool) -> Verdict {
        let Some(p) = picture else {
            self.last_seen = None;
            self.broken |= lost_before && !keyframe;
            return self.verdict_on_base(keyframe);
        };
        // Consecutive picture IDs: whatever was lost in between carried no frame.
        let frame_lost = match self.last_seen {
            Some(last) => !p.follows(last),
            None => lost_before,
        };
        self.last_seen = Some(p.id);
        if keyframe {
            self.base = p.tl0;
            self.group_intact = true;
            self.broken = false;
            return Verdict::Write;
        }
        if self.broken {
            return Verdict::AwaitKeyframe;
        }
        match (p.tid, p.tl0) {
            (Some(tid), Some(tl0)) if tid > 0 => {
                self.group_intact &= !frame_lost;
                let base_written = self.base == Some(tl0);
                if base_written && (self.group_intact || p.layer_sync) {
                    Verdict::Write
                } else {
                    Verdict::Skip
                }
            }
            (_, Some(tl0)) => {
                // A base-layer frame refers to the previous one only.
                if self.base.is_some_and(|b| b.wrapping_add(1) == tl0) {
                    self.base = Some(tl0);
                    self.group_intact = true;
                    Verdict::Write
                } else {
                    self.broken = true;
                    Verdict::AwaitKeyframe
                }
            }
            _ => {
                self.broken |= frame_lost;
                self.verdict_on_base(false)
            }
        }
    }

    fn verdict_on_base(&mut self, keyframe: bool) -> Verdict {
        if keyframe {
            self.broken = false;
        }
        if self.broken {
            Verdict::AwaitKeyframe
        } else {
            Verdict::Write
        }
    }
}

impl PayloadFormat for Vp8Depacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        let first = *payload.first().ok_or(DepacketizeError::Empty)?;
        let extended = first & 0x80 != 0;
        let start_of_partition = first & 0x10 != 0;
        let partition_id = first & 0x0f;
        let mut at = 1;
        let (mut picture, mut tl0, mut tid, mut layer_sync) = (None::<Picture>, None, None, false);
        if extended {
            let ext = *payload.get(at).ok_or(DepacketizeError::Truncated)?;
            at += 1;
            if ext & 0x80 != 0 {
                // Picture ID: one byte, or two when its M bit is set.
                let pid = *payload.get(at).ok_or(DepacketizeError::Truncated)?;
                let (id, id_bits) = if pid & 0x80 != 0 {
                    let low = *payload.get(at + 1).ok_or(DepacketizeError::Truncated)?;
                    (u16::from(pid & 0x7f) << 8 | u16::from(low), 15)
                } else {
                    (u16::from(pid), 7)
                };
                at += usize::from(id_bits / 7);
                picture = Some(Picture {
                    id,
                    id_bits,
                    tl0: None,
                    tid: None,
                    layer_sync: false,
                });
            }
            if ext & 0x40 != 0 {
                tl0 = Some(*payload.get(at).ok_or(DepacketizeError::Truncated)?);
                at += 1;
            }
            if ext & 0x30 != 0 {
                // TID (2 bits) and Y when T is set; KEYIDX when K is.
                let b = *payload.get(at).ok_or(DepacketizeError::Truncated)?;
                if ext & 0x20 != 0 {
                    tid = Some(b >> 6);
                    layer_sync = b & 0x20 != 0;
                }
                at += 1;
            }
        }
        if at > payload.len() {
            return Err(DepacketizeError::Truncated);
        }
        let data = &payload[at..];
        let starts_frame = start_of_partition && partition_id == 0;
        // The frame tag's P bit (bit 0 of its first byte) is 0 on a keyframe (RFC 6386 §9.1).
        let keyframe = starts_frame && data.first().is_some_and(|b| b & 0x01 == 0);
        Ok(PayloadPart {
            data: data.to_vec(),
            starts_frame,
            keyframe,
            picture: picture.map(|p| Picture {
                tl0,
                tid,
                layer_sync,
                ..p
            }),
        })
    }

    /// A keyframe's header: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
    fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
            return None;
        }
        let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
        let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
        Some((u32::from(width), u32::from(height)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_of_every_shape_are_skipped() {
        let mut d = Vp8Depacketizer;
        // X=1, S=1; I=1 with a 15-bit picture id; L=1; T=1.
        let part = d.parse(&[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x00, 0xaa]).unwrap();
        assert_eq!(part.data, vec![0x00, 0xaa]);
        assert!(part.starts_frame && part.keyframe);
        // A 7-bit picture id, not the first partition: not a frame start.
        let part = d.parse(&[0x81, 0x80, 0x05, 0x01]).unwrap();
        assert!(!part.starts_frame && !part.keyframe);
        // An inter frame.
        let part = d.parse(&[0x10, 0x01]).unwrap();
        assert!(part.starts_frame && !part.keyframe);
        assert_eq!(d.parse(&[]), Err(DepacketizeError::Empty));
        assert_eq!(d.parse(&[0x80, 0x80, 0x80]), Err(DepacketizeError::Truncated));
    }

    fn picture(id: u16, tl0: Option<u8>, tid: Option<u8>) -> Option<Picture> {
        Some(Picture {
            id,
            id_bits: 7,
            tl0,
            tid,
            layer_sync: false,
        })
    }

    #[test]
    fn picture_id_and_temporal_layer_are_read() {
        // X=1, S=1; I=1 (15-bit 0x1234), L=1 (TL0PICIDX 7), T=1 (TID 2, Y=1).
        let part = Vp8Depacketizer
            .parse(&[0x90, 0xe0, 0x92, 0x34, 0x07, 0xa0, 0x01])
            .unwrap();
        let p = part.picture.unwrap();
        assert_eq!(
            (p.id, p.id_bits, p.tl0, p.tid, p.layer_sync),
            (0x1234, 15, Some(7), Some(2), true)
        );
        assert_eq!(part.data, vec![0x01]);
        assert_eq!(Vp8Depacketizer.parse(&[0x10, 0x01]).unwrap().picture, None);
    }

    #[test]
    fn consecutive_picture_ids_mean_nothing_lost_mattered() {
        let mut chain = Vp8Chain::default();
        assert_eq!(chain.frame(picture(126, None, None), true, false), Verdict::Write);
        // Packets lost between frames 126 and 127, and 7-bit wrap-around to 0: padding only.
        assert_eq!(chain.frame(picture(127, None, None), false, true), Verdict::Write);
        assert_eq!(chain.frame(picture(0, None, None), false, true), Verdict::Write);
        // Frame 1 went missing: nothing decodes until a keyframe.
        assert_eq!(chain.frame(picture(2, None, None), false, true), Verdict::AwaitKeyframe);
        assert_eq!(
            chain.frame(picture(3, None, None), false, false),
            Verdict::AwaitKeyframe
        );
        assert_eq!(chain.frame(picture(4, None, None), true, false), Verdict::Write);
        assert_eq!(chain.frame(picture(5, None, None), false, false), Verdict::Write);
        // Without picture IDs any loss waits for a keyframe.
        assert_eq!(chain.frame(None, false, false), Verdict::Write);
        assert_eq!(chain.frame(None, false, true), Verdict::AwaitKeyframe);
        assert_eq!(chain.frame(None, true, false), Verdict::Write);
    }

    #[test]
    fn a_lost_upper_layer_frame_costs_its_group_only() {
        let mut chain = Vp8Chain::default();
        // Three layers, pattern 0 2 1 2; frame ids 10.. with TL0PICIDX 0, 1, ...
        assert_eq!(chain.frame(picture(10, Some(0), Some(0)), true, false), Verdict::Write);
        assert_eq!(chain.frame(picture(11, Some(0), Some(2)), false, false), Verdict::Write);
        // 12 (TL1) lost: 13 (TL2) may refer to it.
        assert_eq!(chain.frame(picture(13, Some(0), Some(2)), false, true), Verdict::Skip);
        // The next base frame refers to the previous base frame only.
        assert_eq!(chain.frame(picture(14, Some(1), Some(0)), false, false), Verdict::Write);
        assert_eq!(chain.frame(picture(15, Some(1), Some(2)), false, false), Verdict::Write);
        // A layer-sync frame needs its base frame only.
        let sync = picture(17, Some(1), Some(1)).map(|p| Picture { layer_sync: true, ..p });
        assert_eq!(chain.frame(sync, false, true), Verdict::Write);
        // A base frame lost (TL0PICIDX 2 never came): a keyframe is needed.
        assert_eq!(
            chain.frame(picture(22, Some(3), Some(0)), false, true),
            Verdict::AwaitKeyframe
        );
        assert_eq!(
            chain.frame(picture(23, Some(3), Some(2)), false, false),
            Verdict::AwaitKeyframe
        );
        assert_eq!(chain.frame(picture(24, Some(4), Some(0)), true, false), Verdict::Write);
    }

    #[test]
    fn keyframe_dimensions_are_read() {
        let frame = [0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        assert_eq!(Vp8Depacketizer.dimensions(&frame), Some((640, 480)));
        assert_eq!(Vp8Depacketizer.dimensions(&frame[..8]), None);
    }
}
