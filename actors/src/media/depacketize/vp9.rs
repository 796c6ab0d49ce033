//! VP9 payload format (RFC 9628 §4.2).
//!
//! With spatial layers (SVC, K-SVC: what Chrome sends with `scalabilityMode` L2T*/L3T*), a
//! picture is one frame per layer, all with the picture's timestamp. A decoder takes them as one
//! superframe (VP9 bitstream spec, Annex B): the layer frames back to back and an index of their
//! sizes. Each packet's part keeps where a layer frame begins, its spatial id and whether it
//! depends on the layer below (`parse`); the whole picture (`complete`) keeps its top layer and
//! the lower frames that layer depends on, so the file shows one picture per timestamp at the
//! top layer's size: in K-SVC a lower layer is needed only on key pictures, where its keyframe
//! is hidden (`show_frame` 0: for a keyframe one bit, nothing else in its header moves). A lower
//! frame an upper one needs on a delta picture (full SVC) stays shown. When the top layer stops
//! (the sender's bandwidth fell), the lower layer's frames refer to frames not written: the
//! picture is refused, so the track waits for (and asks for) a keyframe.

use super::{Bits, DepacketizeError, PayloadFormat, PayloadPart};

#[derive(Default)]
pub struct Vp9Depacketizer {
    /// The spatial layer the last picture was written up to.
    top: Option<u8>,
}

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
        let mut inter_layer = false;
        if has_layer_indices {
            spatial_id = (byte(at)? >> 1) & 0x07;
            inter_layer = byte(at)? & 0x01 != 0;
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
        let mut part = Vec::with_capacity(data.len() + 5);
        part.push(u8::from(begins_frame) | (spatial_id << 1) | (u8::from(inter_layer) << 4));
        part.extend_from_slice(&(data.len() as u32).to_be_bytes());
        part.extend_from_slice(data);
        Ok(PayloadPart {
            data: part,
            starts_frame,
            keyframe,
            picture: None,
        })
    }

    /// The picture: its one frame as it came, or its top layer (and what that needs) as one
    /// superframe.
    fn complete(&mut self, data: Vec<u8>, keyframe: bool) -> Option<Vec<u8>> {
        // (spatial id, depends on the layer below, bytes) per layer frame.
        let mut layers: Vec<(u8, bool, Vec<u8>)> = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let flags = data[at];
            let len = u32::from_be_bytes(data.get(at + 1..at + 5)?.try_into().ok()?) as usize;
            let bytes = data.get(at + 5..at + 5 + len)?;
            at += 5 + len;
            match layers.last_mut() {
                Some((_, _, frame)) if flags & 0x01 == 0 => frame.extend_from_slice(bytes),
                _ => layers.push(((flags >> 1) & 0x07, flags & 0x10 != 0, bytes.to_vec())),
            }
        }
        layers.retain(|(_, _, f)| !f.is_empty());
        let top = layers.iter().map(|(s, _, _)| *s).max()?;
        if self.top.is_some_and(|was| top < was) && !keyframe {
            return None;
        }
        self.top = Some(top);
        // From the top down, each frame and the one below it when it depends on it.
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut want = Some(top);
        for (sid, depends, frame) in layers.into_iter().rev() {
            if want != Some(sid) {
                continue;
            }
            want = (depends && sid > 0).then(|| sid - 1);
            frames.push(frame);
        }
        frames.reverse();
        let n = frames.len();
        for frame in &mut frames[..n - 1] {
            hide_keyframe(frame);
        }
        match frames.len() {
            0 => None,
            1 => frames.pop(),
            n if n <= 8 => {
                let largest = frames.iter().map(Vec::len).max().unwrap_or(0);
                let mag = (1..=4).find(|m| largest < 1usize << (8 * m))?;
                let marker = 0b1100_0000 | (((mag - 1) as u8) << 3) | (n - 1) as u8;
                let mut out: Vec<u8> = frames.concat();
                out.push(marker);
                for f in &frames {
                    out.extend_from_slice(&(f.len() as u32).to_le_bytes()[..mag]);
                }
                out.push(marker);
                Some(out)
            }
            _ => None,
        }
    }

    /// Picture size: a superframe's top layer's, or a frame's own (VP9 bitstream spec §6.2).
    fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        let frames = superframe(frame);
        frames.iter().rev().find_map(|f| frame_size(f))
    }
}

/// Marks a keyframe not shown (it is decoded, as the frame above refers to it); any other
/// frame is left as it is.
fn hide_keyframe(frame: &mut [u8]) {
    if header_says_keyframe(frame) != Some(true) {
        return;
    }
    // frame_marker (2), profile (2, and a reserved bit for profile 3), show_existing_frame,
    // frame_type, then show_frame.
    let profile = ((frame[0] >> 5) & 1) | (((frame[0] >> 4) & 1) << 1);
    let bit = if profile == 3 { 7 } else { 6 };
    if let Some(byte) = frame.get_mut(bit / 8) {
        *byte &= !(0x80 >> (bit % 8));
    }
}

/// The frames of a superframe (Annex B), or the one frame it is.
fn superframe(data: &[u8]) -> Vec<&[u8]> {
    let Some(&marker) = data.last() else { return vec![] };
    if marker & 0xe0 == 0xc0 {
        let n = usize::from(marker & 0x07) + 1;
        let mag = usize::from((marker >> 3) & 0x03) + 1;
        let index = 2 + mag * n;
        if data.len() >= index && data[data.len() - index] == marker {
            let mut frames = Vec::with_capacity(n);
            let mut at = 0;
            let sizes = &data[data.len() - index + 1..data.len() - 1];
            for size in sizes.chunks(mag) {
                let len = size.iter().rev().fold(0usize, |v, b| (v << 8) | usize::from(*b));
                let Some(frame) = data.get(at..at + len) else {
                    return vec![data];
                };
                frames.push(frame);
                at += len;
            }
            return frames;
        }
    }
    vec![data]
}

/// A frame's size as its uncompressed header says it: a keyframe's and an intra-only frame's
/// always, an inter frame's when it does not take it from a reference (an upper spatial layer
/// does not: its references are smaller).
fn frame_size(frame: &[u8]) -> Option<(u32, u32)> {
    let mut bits = Bits::new(frame);
    if bits.bits(2)? != 2 {
        return None; // frame_marker
    }
    let profile = bits.bits(1)? | (bits.bits(1)? << 1);
    if profile == 3 {
        bits.bits(1)?;
    }
    if bits.bits(1)? == 1 {
        return None; // show_existing_frame
    }
    let inter = bits.bits(1)? == 1;
    let show_frame = bits.bits(1)? == 1;
    let error_resilient = bits.bits(1)? == 1;
    if inter {
        let intra_only = !show_frame && bits.bits(1)? == 1;
        if !error_resilient {
            bits.bits(2)?; // reset_frame_context
        }
        if intra_only {
            if bits.bits(24)? != 0x49_83_42 {
                return None;
            }
            if profile > 0 {
                return None; // color config of a profile seldom sent: not read here
            }
            bits.bits(8)?; // refresh_frame_flags
            return Some((bits.bits(16)? + 1, bits.bits(16)? + 1));
        }
        bits.bits(8)?; // refresh_frame_flags
        bits.bits(12)?; // ref_frame_idx and ref_frame_sign_bias, three times
        for _ in 0..3 {
            if bits.bits(1)? == 1 {
                return None; // found_ref: the size is a reference's
            }
        }
        return Some((bits.bits(16)? + 1, bits.bits(16)? + 1));
    }
    if bits.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    if profile >= 2 {
        bits.bits(1)?; // ten_or_twelve_bit
    }
    let color_space = bits.bits(3)?;
    if color_space != 7 {
        bits.bits(1)?; // color_range
        if profile == 1 || profile == 3 {
            bits.bits(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        bits.bits(1)?;
    }
    let width = bits.bits(16)? + 1;
    let height = bits.bits(16)? + 1;
    Some((width, height))
}

/// Whether an uncompressed frame header (§6.2) is a keyframe's; `None` when unreadable.
fn header_says_keyframe(frame: &[u8]) -> Option<bool> {
    let mut bits = Bits::new(frame);
    if bits.bits(2)? != 2 {
        return None;
    }
    let profile = bits.bits(1)? | (bits.bits(1)? << 1);
    if profile == 3 {
        bits.bits(1)?;
    }
    if bits.bits(1)? == 1 {
        return Some(false); // show_existing_frame
    }
    Some(bits.bits(1)? == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header written as a string of '0' and '1', padded with zeros to whole bytes.
    fn bytes_of(bits: &str) -> Vec<u8> {
        let mut bits = bits.to_string();
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        bits.as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect()
    }

    #[test]
    fn descriptors_are_skipped_and_keyframes_found() {
        let mut d = Vp9Depacketizer::default();
        // I=1 (15-bit id), B=1, V=1 with Y=1 (one layer, 4 bytes of size) and G=1 (one picture
        // with one reference).
        let part = d
            .parse(&[0x8a, 0x80, 0x01, 0x18, 0x02, 0x80, 0x01, 0xe0, 0x01, 0x04, 0x01, 0xcc])
            .unwrap();
        assert_eq!(d.complete(part.data.clone(), true), Some(vec![0xcc]));
        assert!(part.starts_frame && part.keyframe);
        // Flexible mode, inter-predicted, two reference indices.
        let part = d.parse(&[0xd8, 0x05, 0x03, 0x04, 0xdd]).unwrap();
        assert_eq!(d.complete(part.data.clone(), false), Some(vec![0xdd]));
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
        let bytes = bytes_of(&bits);
        assert_eq!(Vp9Depacketizer::default().dimensions(&bytes), Some((320, 240)));
        assert_eq!(Vp9Depacketizer::default().dimensions(&bytes[..5]), None);
        assert_eq!(header_says_keyframe(&bytes), Some(true));
        assert_eq!(header_says_keyframe(&[0x86]), Some(false), "inter frame");
    }

    #[test]
    fn a_pictures_top_layer_and_what_it_needs_become_one_superframe() {
        let mut d = Vp9Depacketizer::default();
        // Non-flexible, L=1: I=0 P=0 L=1 F=0 B E V=0 Z=0, the layer byte (T S U D), TL0PICIDX.
        // A key picture: layer 0 (a keyframe: 0x82) begins in one packet and ends in the next;
        // layer 1 depends on it (D=1).
        let layer0a = d.parse(&[0x28, 0x00, 0x00, 0x82, 0x49]).unwrap();
        let layer0b = d.parse(&[0x24, 0x00, 0x00, 0x33]).unwrap();
        let layer1 = d.parse(&[0x2c, 0x03, 0x00, 0x86, 0x44, 0x55]).unwrap();
        assert!(layer0a.starts_frame && layer0a.keyframe && !layer0b.starts_frame && !layer1.starts_frame);
        let picture = d
            .complete([layer0a.data, layer0b.data, layer1.data].concat(), true)
            .unwrap();
        // Layer 0 hidden (show_frame 0), then layer 1, then the index: marker (mag 1, two
        // frames), sizes, marker.
        assert_eq!(picture, vec![0x80, 0x49, 0x33, 0x86, 0x44, 0x55, 0xc1, 3, 3, 0xc1]);
        assert_eq!(
            superframe(&picture),
            vec![&[0x80, 0x49, 0x33][..], &[0x86, 0x44, 0x55][..]]
        );
        assert_eq!(superframe(&[0x82, 0x49]), vec![&[0x82, 0x49][..]]);
        // A delta picture (K-SVC: layer 1 on its own, D=0): layer 1 alone, as it came.
        let layer0 = d.parse(&[0x6c, 0x00, 0x01, 0x86, 0x01]).unwrap();
        let layer1 = d.parse(&[0x6c, 0x02, 0x01, 0x86, 0x02]).unwrap();
        assert_eq!(
            d.complete([layer0.data, layer1.data].concat(), false),
            Some(vec![0x86, 0x02])
        );
        // The top layer stops: a delta picture of layer 0 alone would refer to frames not
        // written, and is refused until a key picture.
        let alone = d.parse(&[0x6c, 0x00, 0x02, 0x86, 0x03]).unwrap();
        assert_eq!(d.complete(alone.data, false), None);
        let key = d.parse(&[0x2c, 0x00, 0x03, 0x82, 0x04]).unwrap();
        assert_eq!(d.complete(key.data, true), Some(vec![0x82, 0x04]));
    }

    #[test]
    fn an_upper_layers_size_is_read_from_its_inter_frame_header() {
        // Profile 0 inter frame, shown, not error resilient: marker 10, profile 00,
        // show_existing 0, inter 1, show 1, error_res 0, reset_frame_context 00,
        // refresh_frame_flags, three refs (3 + 1 bits each), found_ref 0 0 0, 640x360.
        let mut bits = String::from("10000110");
        bits += "00";
        bits += "00000001";
        bits += "000000010010";
        bits += "000";
        bits += &format!("{:016b}{:016b}", 639, 359);
        let bytes = bytes_of(&bits);
        assert_eq!(frame_size(&bytes), Some((640, 360)));
    }
}
