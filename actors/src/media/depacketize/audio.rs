//! Audio payload formats where one RTP payload is one frame, sent whole: Opus (RFC 7587), G.711
//! μ-law and A-law and G.722 (RFC 3551).

use super::{DepacketizeError, PayloadFormat, PayloadPart};

pub struct AudioDepacketizer;

impl PayloadFormat for AudioDepacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        if payload.is_empty() {
            return Err(DepacketizeError::Empty);
        }
        Ok(PayloadPart {
            data: payload.to_vec(),
            starts_frame: true,
            keyframe: true,
            picture: None,
        })
    }
}
