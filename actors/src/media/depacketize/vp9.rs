//! VP9 payload format (RFC 9628 §4.2).

use super::{DepacketizeError, PayloadFormat, PayloadPart};

pub struct Vp9Depacketizer;

impl PayloadFormat for Vp9Depacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        let first = *payload.first().ok_or(DepacketizeError::Empty)?;
        let has_picture_id = first & 0x80 != 0;
        let inter_predicted = first & 0x40 != 0;
        let has_layer_indices = first & 0x20 != 0;
        let flexible = first & 0x10 != 0;
        let begins_frame = first & 0x08 != 0;
        let has_scalability_structure = first & 0x02 != 0;
        let byte = |at: usize| payload.get(at).copied().ok_or(DepacketizeError::Truncated);
        let mut at = 1;
        if has_picture_id {
            at += if byte(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        let mut spatial_id = 0;
        if has_layer_indices {
            spatial_id = (byte(at)? >> 1) & 0x07;
            at += 1;
            if !flexible {
                at += 1; // TL0PICIDX
            }
        }
        if flexible && inter_predicted {
            // Up to three reference indices, each with an N bit saying another follows.
            for _ in 0..3 {
                let p_diff = byte(at)?;
                at += 1;
                if p_diff & 0x01 == 0 {
                    break;
                }
            }
        }
        if has_scalability_structure {
            let ss = byte(at)?;
            at += 1;
            let num_spatial = usize::from(ss >> 5) + 1;
            if ss & 0x10 != 0 {
                at += 4 * num_spatial; // width and height per spatial layer
            }
            if ss & 0x08 != 0 {
                let num_pictures = byte(at)?;
                at += 1;
                for _ in 0..num_pictures {
                    let desc = byte(at)?;
                    at += 1 + usize::from((desc >> 2) & 0x03);
                }
            }
        }
        if at > payload.len() {
            return Err(DepacketizeError::Truncated);
        }
        // Spatial layers of one picture share a timestamp and are stored together as one
        // superframe-like block; only the base layer's start is the frame's start.
        let starts_frame = begins_frame && spatial_id == 0;
        Ok(PayloadPart {
            data: payload[at..].to_vec(),
            starts_frame,
            keyframe: starts_frame && !inter_predicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_skipped_and_keyframes_found() {
        let mut d = Vp9Depacketizer;
        // I=1 (15-bit id), B=1, V=1 with Y=1 (one layer, 4 bytes of size) and G=1 (one picture
        // with one reference).
        let part = d
            .parse(&[0x8a, 0x80, 0x01, 0x18, 0x02, 0x80, 0x01, 0xe0, 0x01, 0x04, 0x01, 0xcc])
            .unwrap();
        assert_eq!(part.data, vec![0xcc]);
        assert!(part.starts_frame && part.keyframe);
        // Flexible mode, inter-predicted, two reference indices.
        let part = d.parse(&[0xd8, 0x05, 0x03, 0x04, 0xdd]).unwrap();
        assert_eq!(part.data, vec![0xdd]);
        assert!(part.starts_frame && !part.keyframe);
        // Continuation packet.
        assert!(!d.parse(&[0x00, 0x01]).unwrap().starts_frame);
        assert_eq!(d.parse(&[0x80]), Err(DepacketizeError::Truncated));
        assert_eq!(d.parse(&[0x02, 0xf8]), Err(DepacketizeError::Truncated));
    }
}
