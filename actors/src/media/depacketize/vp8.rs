//! VP8 payload format (RFC 7741 §4).

use super::{DepacketizeError, PayloadFormat, PayloadPart};

pub struct Vp8Depacketizer;

impl PayloadFormat for Vp8Depacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        let first = *payload.first().ok_or(DepacketizeError::Empty)?;
        let extended = first & 0x80 != 0;
        let start_of_partition = first & 0x10 != 0;
        let partition_id = first & 0x0f;
        let mut at = 1;
        if extended {
            let ext = *payload.get(at).ok_or(DepacketizeError::Truncated)?;
            at += 1;
            if ext & 0x80 != 0 {
                // Picture ID: one byte, or two when its M bit is set.
                let pid = *payload.get(at).ok_or(DepacketizeError::Truncated)?;
                at += if pid & 0x80 != 0 { 2 } else { 1 };
            }
            if ext & 0x40 != 0 {
                at += 1; // TL0PICIDX
            }
            if ext & 0x30 != 0 {
                at += 1; // TID / Y / KEYIDX
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

    #[test]
    fn keyframe_dimensions_are_read() {
        let frame = [0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        assert_eq!(Vp8Depacketizer.dimensions(&frame), Some((640, 480)));
        assert_eq!(Vp8Depacketizer.dimensions(&frame[..8]), None);
    }
}
