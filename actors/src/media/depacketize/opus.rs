//! Opus payload format (RFC 7587): the payload is one Opus packet.

use super::{DepacketizeError, PayloadFormat, PayloadPart};

pub struct OpusDepacketizer;

impl PayloadFormat for OpusDepacketizer {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError> {
        if payload.is_empty() {
            return Err(DepacketizeError::Empty);
        }
        Ok(PayloadPart {
            data: payload.to_vec(),
            starts_frame: true,
            keyframe: true,
        })
    }
}
