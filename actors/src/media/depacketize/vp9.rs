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
        let data = &payload[at..];
        // The P bit alone is not trusted (FFmpeg's packetizer never sets it): the frame's own
        // header decides when it can be read.
        let keyframe = starts_frame && !inter_predicted && header_says_keyframe(data).unwrap_or(true);
        Ok(PayloadPart {
            data: data.to_vec(),
            starts_frame,
            keyframe,
            picture: None,
        })
    }

    /// Frame size from a keyframe's uncompressed header (VP9 bitstream spec §6.2).
    fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        let mut bits = BitReader { data: frame, at: 0 };
        if bits.read(2)? != 2 {
            return None; // frame_marker
        }
        let profile = bits.read(1)? | (bits.read(1)? << 1);
        if profile == 3 {
            bits.read(1)?;
        }
        if bits.read(1)? == 1 {
            return None; // show_existing_frame
        }
        if bits.read(1)? != 0 {
            return None; // not a keyframe
        }
        bits.read(2)?; // show_frame, error_resilient_mode
        if bits.read(24)? != 0x49_83_42 {
            return None; // frame_sync_code
        }
        if profile >= 2 {
            bits.read(1)?; // ten_or_twelve_bit
        }
        let color_space = bits.read(3)?;
        if color_space != 7 {
            bits.read(1)?; // color_range
            if profile == 1 || profile == 3 {
                bits.read(3)?; // subsampling_x, subsampling_y, reserved_zero
            }
        } else if profile == 1 || profile == 3 {
            bits.read(1)?;
        }
        let width = bits.read(16)? + 1;
        let height = bits.read(16)? + 1;
        Some((width, height))
    }
}

/// Whether an uncompressed frame header (§6.2) is a keyframe's; `None` when unreadable.
fn header_says_keyframe(frame: &[u8]) -> Option<bool> {
    let mut bits = BitReader { data: frame, at: 0 };
    if bits.read(2)? != 2 {
        return None;
    }
    let profile = bits.read(1)? | (bits.read(1)? << 1);
    if profile == 3 {
        bits.read(1)?;
    }
    if bits.read(1)? == 1 {
        return Some(false); // show_existing_frame
    }
    Some(bits.read(1)? == 0)
}

struct BitReader<'a> {
    data: &'a [u8],
    at: usize,
}

impl BitReader<'_> {
    fn read(&mut self, n: usize) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.at / 8)?;
            value = (value << 1) | u32::from((byte >> (7 - self.at % 8)) & 1);
            self.at += 1;
        }
        Some(value)
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

    #[test]
    fn keyframe_dimensions_are_read_from_the_uncompressed_header() {
        // Profile 0 keyframe, 320x240: marker 10, profile 00, show_existing 0, key 0, show 1,
        // error_res 0, sync code, color space 2 (3 bits) + range 0, width-1 = 319, height-1 = 239.
        let mut bits = String::from("10000010");
        bits += "010010011000001101000010";
        bits += "0100";
        bits += &format!("{:016b}{:016b}", 319, 239);
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let bytes: Vec<u8> = bits
            .as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect();
        assert_eq!(Vp9Depacketizer.dimensions(&bytes), Some((320, 240)));
        assert_eq!(Vp9Depacketizer.dimensions(&bytes[..5]), None);
        assert_eq!(header_says_keyframe(&bytes), Some(true));
        assert_eq!(header_says_keyframe(&[0x86]), Some(false), "inter frame");
    }
}
