//! H.264 payload format, packetization-mode 1 (RFC 6184 §5.6–5.8): single NAL units, STAP-A and
//! FU-A. NAL units are emitted in Annex B form (start code + NAL), which FFmpeg's Matroska muxer
//! converts to length-prefixed samples with an avcC built from the SPS/PPS it sees.

use super::{DepacketizeError, PayloadFormat, PayloadPart};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_IDR: u8 = 5;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

#[derive(Default)]
pub struct H264Depacketizer;

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
                })
            }
            other => Err(DepacketizeError::Unsupported {
                codec: "H264",
                what: format!("nal type {other} (packetization-mode 1 only)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_stap_a_and_fu_a_become_annex_b() {
        let mut d = H264Depacketizer;
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
    fn bad_payloads_are_errors() {
        let mut d = H264Depacketizer;
        assert_eq!(d.parse(&[]), Err(DepacketizeError::Empty));
        assert_eq!(d.parse(&[0x78, 0, 9, 1]), Err(DepacketizeError::Truncated));
        assert_eq!(d.parse(&[0x78, 0]), Err(DepacketizeError::Truncated));
        assert_eq!(d.parse(&[0x7c]), Err(DepacketizeError::Truncated));
        assert!(matches!(d.parse(&[0x19, 0]), Err(DepacketizeError::Unsupported { .. })));
    }
}
