//! AV1 payload format (the AOM "RTP Payload Format for AV1", §4): an aggregation header
//! (`Z Y W W N - - -`: the first element continues an OBU of the previous packet, the last one
//! continues in the next, the count of elements, a new coded video sequence), then OBU elements,
//! each but the last prefixed by its LEB128 length when W is 0 or not the last one.
//!
//! The elements of one temporal unit are kept with their boundaries (`parse`) and turned into
//! the low-overhead bitstream format Matroska/WebM stores (§5 of the AV1 spec) once the unit is
//! whole (`complete`): each OBU with its size field, temporal delimiters and padding dropped,
//! as the Matroska AV1 mapping asks.

use super::{Bits, DepacketizeError, PayloadFormat, PayloadPart};

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;

/// Marks an element in the intermediate form: a new OBU, or the next fragment of the last.
const NEW_OBU: u8 = 0;
const FRAGMENT: u8 = 1;

#[derive(Default)]
pub struct Av1Depacketizer;

fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in data.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn put_leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl PayloadFormat for Av1Depacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        let header = *payload.first().ok_or(DepacketizeError::Empty)?;
        let continues = header & 0x80 != 0;
        let count = usize::from((header >> 4) & 0x03);
        let new_sequence = header & 0x08 != 0;
        let mut at = 1;
        let mut data = Vec::with_capacity(payload.len() + 8);
        let mut index = 0;
        while at < payload.len() {
            let last = count != 0 && index + 1 == count;
            let len = if last {
                payload.len() - at
            } else {
                let (len, n) = leb128(&payload[at..]).ok_or(DepacketizeError::Truncated)?;
                at += n;
                usize::try_from(len).map_err(|_| DepacketizeError::Truncated)?
            };
            let element = payload.get(at..at + len).ok_or(DepacketizeError::Truncated)?;
            data.push(if index == 0 && continues { FRAGMENT } else { NEW_OBU });
            data.extend_from_slice(&(len as u32).to_be_bytes());
            data.extend_from_slice(element);
            at += len;
            index += 1;
            if last {
                break;
            }
        }
        if count != 0 && index != count {
            return Err(DepacketizeError::Truncated);
        }
        Ok(PayloadPart {
            data,
            starts_frame: !continues,
            keyframe: new_sequence,
            picture: None,
        })
    }

    /// The temporal unit as Matroska stores it; `None` when an OBU's start is missing or an
    /// OBU does not parse.
    fn complete(&mut self, data: Vec<u8>, _keyframe: bool) -> Option<Vec<u8>> {
        let mut obus: Vec<Vec<u8>> = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let kind = data[at];
            let len = u32::from_be_bytes(data.get(at + 1..at + 5)?.try_into().ok()?) as usize;
            let element = data.get(at + 5..at + 5 + len)?;
            at += 5 + len;
            match (kind, obus.last_mut()) {
                (FRAGMENT, Some(obu)) => obu.extend_from_slice(element),
                (FRAGMENT, None) => return None,
                _ => obus.push(element.to_vec()),
            }
        }
        let mut out = Vec::with_capacity(data.len());
        for obu in obus {
            let header = *obu.first()?;
            let kind = (header >> 3) & 0x0f;
            let extension = header & 0x04 != 0;
            let header_len = 1 + usize::from(extension);
            let mut payload = obu.get(header_len..)?;
            if header & 0x02 != 0 {
                // A sender may keep the size field: trust it only within the element.
                let (size, n) = leb128(payload)?;
                payload = payload.get(n..n + usize::try_from(size).ok()?)?;
            }
            if matches!(kind, OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING) {
                continue;
            }
            out.push(header | 0x02);
            out.extend_from_slice(&obu[1..header_len]);
            put_leb128(&mut out, payload.len());
            out.extend_from_slice(payload);
        }
        (!out.is_empty()).then_some(out)
    }

    fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        sequence_header(frame).and_then(max_frame_size)
    }
}

/// The sequence header OBU (with its header and size field) of a temporal unit in the
/// low-overhead format, if it has one: what the muxer's `av1C` is built from.
pub fn sequence_header(unit: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at < unit.len() {
        let header = unit[at];
        let header_len = 1 + usize::from(header & 0x04 != 0);
        let (size, n) = leb128(unit.get(at + header_len..)?)?;
        let end = at + header_len + n + usize::try_from(size).ok()?;
        if (header >> 3) & 0x0f == OBU_SEQUENCE_HEADER {
            return unit.get(at..end);
        }
        at = end;
    }
    None
}

/// `max_frame_width/height` of a sequence header OBU (AV1 spec §5.5.1), for the streams
/// WebRTC encoders send: no timing or decoder-model info (`None` otherwise).
fn max_frame_size(obu: &[u8]) -> Option<(u32, u32)> {
    let header_len = 1 + usize::from(obu.first()? & 0x04 != 0);
    let (_, n) = leb128(obu.get(header_len..)?)?;
    let mut bits = Bits::new(obu.get(header_len + n..)?);
    let _profile = bits.bits(3)?;
    let _still_picture = bits.bits(1)?;
    let reduced = bits.bits(1)? == 1;
    if reduced {
        bits.bits(5)?; // seq_level_idx[0]
    } else {
        if bits.bits(1)? == 1 {
            return None; // timing_info_present_flag
        }
        let initial_display_delay = bits.bits(1)? == 1;
        let operating_points = bits.bits(5)? + 1;
        for _ in 0..operating_points {
            bits.bits(12)?; // operating_point_idc
            if bits.bits(5)? > 7 {
                bits.bits(1)?; // seq_tier
            }
            if initial_display_delay && bits.bits(1)? == 1 {
                bits.bits(4)?;
            }
        }
    }
    let width_bits = bits.bits(4)? as usize + 1;
    let height_bits = bits.bits(4)? as usize + 1;
    Some((bits.bits(width_bits)? + 1, bits.bits(height_bits)? + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence header of a 640x360 stream (profile 0, one operating point, level 8).
    fn sequence_header_obu() -> Vec<u8> {
        // seq_profile 0, still 0, reduced 0, timing 0, initial_display_delay 0, op count-1 = 0,
        // idc 0 (12 bits), level 8 (5 bits) + tier 0, width bits-1 = 9, height bits-1 = 8,
        // width-1 = 639 (10 bits), height-1 = 359 (9 bits), then padding.
        let fields: [(u32, usize); 15] = [
            (0, 3),
            (0, 1),
            (0, 1),
            (0, 1),
            (0, 1),
            (0, 5),
            (0, 12),
            (8, 5),
            (0, 1),
            (9, 4),
            (8, 4),
            (639, 10),
            (359, 9),
            (0, 7),
            (0, 8),
        ];
        let mut bits = Vec::new();
        for (value, n) in fields {
            for i in (0..n).rev() {
                bits.push(((value >> i) & 1) as u8);
            }
        }
        let payload: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0, |b, bit| (b << 1) | bit) << (8 - c.len()))
            .collect();
        let mut obu = vec![OBU_SEQUENCE_HEADER << 3]; // no size field, as RTP carries it
        obu.extend_from_slice(&payload);
        obu
    }

    #[test]
    fn fragments_join_into_obus_with_size_fields_and_the_size_is_read() {
        let seq = sequence_header_obu();
        let frame: Vec<u8> = std::iter::once(6u8 << 3).chain((0..300).map(|i| i as u8)).collect();
        // Packet 1: N=1, W=2: the sequence header (with its length) then the frame's first 100
        // bytes (the last element, no length), Y=1.
        let mut p1 = vec![0b0110_1000];
        put_leb128(&mut p1, seq.len());
        p1.extend_from_slice(&seq);
        p1.extend_from_slice(&frame[..100]);
        // Packet 2: Z=1, W=1: the rest of the frame.
        let mut p2 = vec![0b1001_0000];
        p2.extend_from_slice(&frame[100..]);
        let mut format = Av1Depacketizer;
        let a = format.parse(&p1).unwrap();
        let b = format.parse(&p2).unwrap();
        assert!(a.starts_frame && a.keyframe && !b.starts_frame && !b.keyframe);
        let unit = format.complete([a.data, b.data].concat(), true).unwrap();
        let header = sequence_header(&unit).expect("a sequence header");
        assert_eq!(header[0], (OBU_SEQUENCE_HEADER << 3) | 0x02);
        assert_eq!(format.dimensions(&unit), Some((640, 360)));
        // The frame OBU follows with its size (300 = 0xac 0x02) and its bytes.
        let rest = &unit[header.len()..];
        assert_eq!(&rest[..3], &[(6 << 3) | 0x02, 0xac, 0x02]);
        assert_eq!(&rest[3..], &frame[1..]);
    }

    #[test]
    fn a_fragment_without_its_start_or_a_short_element_is_refused() {
        let mut format = Av1Depacketizer;
        let tail = format.parse(&[0b1001_0000, 1, 2, 3]).unwrap();
        assert_eq!(format.complete(tail.data, false), None);
        // W=2 but the first element's length runs past the packet.
        assert!(format.parse(&[0b0010_0000, 9, 1, 2]).is_err());
        assert!(format.parse(&[]).is_err());
    }

    #[test]
    fn temporal_delimiters_are_dropped() {
        let mut format = Av1Depacketizer;
        // W=2: a temporal delimiter (empty), then a frame OBU.
        let part = format.parse(&[0b0010_0000, 1, 2 << 3, 6 << 3, 7, 7]).unwrap();
        assert_eq!(format.complete(part.data, false).unwrap(), vec![(6 << 3) | 2, 2, 7, 7]);
    }
}
