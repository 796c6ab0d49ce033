//! H.264 payload format, packetization-mode 1 (RFC 6184 §5.6–5.8): single NAL units, STAP-A and
//! FU-A. NAL units are emitted in Annex B form (start code + NAL), which FFmpeg's Matroska muxer
//! converts to length-prefixed samples with an avcC built from the SPS/PPS it sees.

use super::{Bits, DepacketizeError, PayloadFormat, PayloadPart};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_IDR: u8 = 5;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Keeps the newest SPS and PPS it saw (or the offer's `sprop-parameter-sets`), so an IDR
/// frame sent without them (a sender that puts them in the SDP, or in the frame before) still
/// decodes, and a track never starts without its codec configuration.
#[derive(Default)]
pub struct H264Depacketizer {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

impl H264Depacketizer {
    pub fn with_parameter_sets(parameter_sets: Vec<Vec<u8>>) -> Self {
        let mut d = Self::default();
        for nal in parameter_sets {
            match nal.first().map(|h| h & 0x1f) {
                Some(NAL_SPS) => d.sps = Some(nal),
                Some(NAL_PPS) => d.pps = Some(nal),
                _ => {}
            }
        }
        d
    }
}

/// The NAL units of an Annex B access unit (start codes removed).
fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let mut end = starts.get(n + 1).map_or(data.len(), |next| next - 3);
            while end > start && data[end - 1] == 0 {
                end -= 1;
            }
            &data[start..end]
        })
        .collect()
}

/// `first_mb_in_slice` of a slice NAL unit (H.264 §7.3.3): 0 for the slice that starts a
/// picture.
fn first_mb_in_slice(nal: &[u8]) -> Option<u32> {
    let mut rbsp = Vec::with_capacity(8);
    let mut zeros = 0;
    for &b in nal.iter().skip(1).take(16) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    Bits::new(&rbsp).ue()
}

impl PayloadFormat for H264Depacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        let header = *payload.first().ok_or(DepacketizeError::Empty)?;
        let nal_type = header & 0x1f;
        match nal_type {
            1..=23 => {
                let mut data = START_CODE.to_vec();
                data.extend_from_slice(payload);
                Ok(PayloadPart {
                    data,
                    starts_frame: true,
                    keyframe: nal_type == NAL_IDR,
                    picture: None,
                })
            }
            NAL_STAP_A => {
                let mut data = Vec::with_capacity(payload.len() + 16);
                let mut keyframe = false;
                let mut rest = &payload[1..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(DepacketizeError::Truncated);
                    }
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let nal = rest.get(2..2 + size).ok_or(DepacketizeError::Truncated)?;
                    if let Some(h) = nal.first() {
                        keyframe |= h & 0x1f == NAL_IDR;
                        data.extend_from_slice(&START_CODE);
                        data.extend_from_slice(nal);
                    }
                    rest = &rest[2 + size..];
                }
                Ok(PayloadPart {
                    data,
                    starts_frame: true,
                    keyframe,
                    picture: None,
                })
            }
            NAL_FU_A => {
                let fu_header = *payload.get(1).ok_or(DepacketizeError::Truncated)?;
                let start = fu_header & 0x80 != 0;
                let inner_type = fu_header & 0x1f;
                let mut data = Vec::with_capacity(payload.len() + 4);
                if start {
                    data.extend_from_slice(&START_CODE);
                    data.push((header & 0xe0) | inner_type);
                }
                data.extend_from_slice(&payload[2..]);
                Ok(PayloadPart {
                    data,
                    starts_frame: start,
                    keyframe: start && inner_type == NAL_IDR,
                    picture: None,
                })
            }
            other => Err(DepacketizeError::Unsupported {
                codec: "H264",
                what: format!("nal type {other} (packetization-mode 1 only)"),
            }),
        }
    }

    /// An access unit is decodable when its first slice starts the picture (a frame whose
    /// first slices were lost, with the loss before its first packet, otherwise looks whole),
    /// and an IDR picture when its SPS and PPS are known: from the frame, an earlier one, or
    /// the offer; they are put before the IDR when it came without them.
    fn complete(&mut self, data: Vec<u8>, keyframe: bool) -> Option<Vec<u8>> {
        let nals = nal_units(&data);
        let (mut has_sps, mut has_pps) = (false, false);
        for nal in &nals {
            match nal.first().map(|h| h & 0x1f) {
                Some(NAL_SPS) => {
                    has_sps = true;
                    self.sps = Some(nal.to_vec());
                }
                Some(NAL_PPS) => {
                    has_pps = true;
                    self.pps = Some(nal.to_vec());
                }
                _ => {}
            }
        }
        let first_slice = nals
            .iter()
            .find(|nal| matches!(nal.first().map(|h| h & 0x1f), Some(1..=5)))?;
        if first_mb_in_slice(first_slice) != Some(0) {
            return None;
        }
        if !keyframe || (has_sps && has_pps) {
            return Some(data);
        }
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return None;
        };
        let mut with_sets = Vec::with_capacity(data.len() + sps.len() + pps.len() + 8);
        for nal in [sps, pps] {
            with_sets.extend_from_slice(&START_CODE);
            with_sets.extend_from_slice(nal);
        }
        with_sets.extend_from_slice(&data);
        Some(with_sets)
    }

    /// Picture size from the access unit's SPS.
    fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        let mut at = 0;
        while at + 4 <= frame.len() {
            if frame[at..at + 3] == [0, 0, 1] && frame[at + 3] & 0x1f == 7 {
                return sps_dimensions(&frame[at + 3..]);
            }
            at += 1;
        }
        None
    }
}

/// Reads width and height from an SPS NAL unit (H.264 §7.3.2.1.1), cropping applied.
pub fn sps_dimensions(nal: &[u8]) -> Option<(u32, u32)> {
    // Remove emulation prevention bytes (00 00 03) first.
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.iter().skip(1) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits::new(&rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bits(1)?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            let num_lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..num_lists {
                if r.bits(1)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
                // Every value read from the packet is the sender's: the arithmetic below is checked, so a
                // hostile SPS is refused (`None`) instead of wrapping into a plausible size or panicking.
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        left = r.ue()?;
        right = r.ue()?;
        top = r.ue()?;
        bottom = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let (crop_x, crop_y): (u32, u32) = if chroma_format_idc == 0 {
        (1, 2 - frame_mbs_only)
    } else {
        (sub_w, sub_h * (2 - frame_mbs_only))
    };
    let width = width_mbs
        .checked_mul(16)?
        .checked_sub(crop_x.checked_mul(left.checked_add(right)?)?)?;
    let height = (2 - frame_mbs_only)
        .checked_mul(height_units)?
        .checked_mul(16)?
        .checked_sub(crop_y.checked_mul(top.checked_add(bottom)?)?)?;
    (width > 0 && height > 0 && width <= 16384 && height <= 16384).then_some((width, height))
}

/// Whether an H.264 access unit (Annex B) carries an SPS and a PPS.
pub(crate) fn has_parameter_sets(access_unit: &[u8]) -> bool {
    let (mut sps, mut pps) = (false, false);
    for w in access_unit.windows(4) {
        if w[..3] == [0, 0, 1] {
            match w[3] & 0x1f {
                7 => sps = true,
                8 => pps = true,
                _ => {}
            }
        }
    }
    sps && pps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits MSB first.
    struct BitWriter {
        bytes: Vec<u8>,
        num_bits: usize,
    }

    impl BitWriter {
        fn put(&mut self, value: u64, n: usize) {
            for i in (0..n).rev() {
                if self.num_bits % 8 == 0 {
                    self.bytes.push(0);
                }
                if (value >> i) & 1 == 1 {
                    *self.bytes.last_mut().unwrap() |= 0x80 >> (self.num_bits % 8);
                }
                self.num_bits += 1;
            }
        }

        /// Exp-Golomb ue(v).
        fn ue(&mut self, value: u64) {
            let code = value + 1;
            let len = 64 - code.leading_zeros() as usize;
            self.put(0, len - 1);
            self.put(code, len);
        }
    }

    /// A baseline SPS with these macroblock counts and frame cropping offsets.
    fn sps(width_mbs_minus1: u64, height_minus1: u64, crop: Option<[u64; 4]>) -> Vec<u8> {
        let mut w = BitWriter {
            bytes: vec![],
            num_bits: 0,
        };
        w.put(66, 8); // profile_idc: baseline
        w.put(0, 16); // constraints, level
        w.ue(0); // seq_parameter_set_id
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(2); // pic_order_cnt_type
        w.ue(1); // max_num_ref_frames
        w.put(0, 1); // gaps
        w.ue(width_mbs_minus1);
        w.ue(height_minus1);
        w.put(1, 1); // frame_mbs_only
        w.put(1, 1); // direct_8x8
        match crop {
            Some(c) => {
                w.put(1, 1);
                for v in c {
                    w.ue(v);
                }
            }
            None => w.put(0, 1),
        }
        w.put(0, 1); // vui
        w.put(1, 1); // stop bit
        let mut nal = vec![0x67];
        nal.extend(w.bytes);
        nal
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(nal);
        }
        out
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    /// first_mb_in_slice = 0 (ue "1"), then anything.
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x21];
    const P_START: &[u8] = &[0x41, 0x9a, 0x02, 0x03];
    /// first_mb_in_slice = 5 (ue "00110"): a slice from the middle of a picture.
    const P_MIDDLE: &[u8] = &[0x41, 0x30, 0x02, 0x03];

    #[test]
    fn a_picture_whose_first_slices_are_missing_is_not_decodable() {
        let mut d = H264Depacketizer::default();
        assert!(d.complete(annex_b(&[P_START]), false).is_some());
        assert!(d.complete(annex_b(&[P_MIDDLE]), false).is_none());
        assert!(d.complete(annex_b(&[PPS]), false).is_none(), "no slice at all");
    }

    #[test]
    fn an_idr_needs_its_parameter_sets_from_itself_an_earlier_frame_or_the_offer() {
        let mut d = H264Depacketizer::default();
        assert!(d.complete(annex_b(&[IDR]), true).is_none(), "no SPS/PPS known: no avcC");
        let whole = annex_b(&[SPS, PPS, IDR]);
        assert_eq!(d.complete(whole.clone(), true), Some(whole.clone()));
        // Learnt from the frame before: put back in front of a bare IDR.
        assert_eq!(d.complete(annex_b(&[IDR]), true), Some(whole.clone()));
        // From the offer's sprop-parameter-sets.
        let mut from_offer = H264Depacketizer::with_parameter_sets(vec![SPS.to_vec(), PPS.to_vec()]);
        assert_eq!(from_offer.complete(annex_b(&[IDR]), true), Some(whole));
    }

    #[test]
    fn sps_sizes_are_read_and_hostile_ones_refused_without_overflow() {
        assert_eq!(sps_dimensions(&sps(39, 29, None)), Some((640, 480)));
        // 1920x1080: 120x68 macroblocks, 8 rows cropped (4 in 4:2:0 units).
        assert_eq!(sps_dimensions(&sps(119, 67, Some([0, 0, 0, 4]))), Some((1920, 1080)));
        // Values chosen to overflow u32 arithmetic: refused, never wrapped into a small size.
        let huge = (1u64 << 32) - 2;
        assert_eq!(sps_dimensions(&sps(huge, 29, None)), None);
        assert_eq!(sps_dimensions(&sps(39, huge, None)), None);
        assert_eq!(sps_dimensions(&sps(0x1000_0000, 29, None)), None);
        assert_eq!(sps_dimensions(&sps(39, 29, Some([huge, huge, 0, 0]))), None);
        assert_eq!(
            sps_dimensions(&sps(39, 29, Some([0x8000_0000, 0x8000_0000, 0, 0]))),
            None
        );
    }

    #[test]
    fn single_stap_a_and_fu_a_become_annex_b() {
        let mut d = H264Depacketizer::default();
        let single = d.parse(&[0x41, 1, 2]).unwrap();
        assert_eq!(single.data, vec![0, 0, 0, 1, 0x41, 1, 2]);
        assert!(single.starts_frame && !single.keyframe);

        // STAP-A with an SPS (2 bytes) and a PPS (1 byte).
        let stap = d.parse(&[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68]).unwrap();
        assert_eq!(stap.data, vec![0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68]);
        assert!(!stap.keyframe);

        // An IDR slice in three FU-A fragments.
        let start = d.parse(&[0x7c, 0x85, 0xaa]).unwrap();
        assert_eq!(start.data, vec![0, 0, 0, 1, 0x65, 0xaa]);
        assert!(start.starts_frame && start.keyframe);
        let middle = d.parse(&[0x7c, 0x05, 0xbb]).unwrap();
        assert_eq!(middle.data, vec![0xbb]);
        assert!(!middle.starts_frame);
        let end = d.parse(&[0x7c, 0x45, 0xcc]).unwrap();
        assert_eq!(end.data, vec![0xcc]);
    }

    #[test]
    fn sps_dimensions_are_read() {
        // x264 baseline 320x240: 67 42 c0 0d d9 01 41 fb 01 10 00 00 03 00 10 00 00 03 03 c0 f1 42 a4 80
        let sps = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0, 0, 3, 0, 0x10, 0, 0, 3, 3, 0xc0, 0xf1, 0x42,
            0xa4, 0x80,
        ];
        assert_eq!(sps_dimensions(&sps), Some((320, 240)));
        assert_eq!(sps_dimensions(&sps[..6]), None);
        assert_eq!(sps_dimensions(&[0x67]), None);
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut d = H264Depacketizer::default();
        assert_eq!(d.parse(&[]), Err(DepacketizeError::Empty));
        assert_eq!(d.parse(&[0x78, 0, 9, 1]), Err(DepacketizeError::Truncated));
        assert_eq!(d.parse(&[0x78, 0]), Err(DepacketizeError::Truncated));
        assert_eq!(d.parse(&[0x7c]), Err(DepacketizeError::Truncated));
        assert!(matches!(d.parse(&[0x19, 0]), Err(DepacketizeError::Unsupported { .. })));
    }
}
