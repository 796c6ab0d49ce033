//! Depacketizers: RTP payloads in order → whole encoded frames. Each codec's payload format lives
//! in its own file; [`FrameAssembler`] does what they share — collecting the packets of one
//! timestamp and emitting the frame at its marker bit or when the next timestamp starts.
//!
//! Input must be in sequence order with losses signalled ([`FrameAssembler::lost`]): the reorder
//! buffer guarantees that. A frame with a packet missing is dropped, never emitted damaged.

mod audio;
pub mod av1;
mod h264;
pub(crate) use h264::has_parameter_sets;
mod vp8;
mod vp9;

use bytes::Bytes;

use super::codec::Codec;
use super::rtp::RtpPacket;

pub use audio::AudioDepacketizer;
pub use av1::Av1Depacketizer;
pub use h264::H264Depacketizer;
pub use vp8::{Picture, Verdict, Vp8Chain, Vp8Depacketizer};
pub use vp9::Vp9Depacketizer;

/// Largest frame assembled; a sender that never sets the marker bit cannot grow memory past it.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepacketizeError {
    #[error("empty payload")]
    Empty,
    #[error("payload descriptor runs past the end of the packet")]
    Truncated,
    #[error("unsupported {codec} payload: {what}")]
    Unsupported { codec: &'static str, what: String },
}

/// What one packet's payload contributes to a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPart {
    /// Bytes of the encoded frame carried by this packet (descriptor removed, NAL units in
    /// Annex B form for H.264).
    pub data: Vec<u8>,
    /// This packet starts a frame (VP8 S bit on partition 0, VP9 B bit, H.264 single NAL / STAP-A
    /// / FU-A start; always for Opus).
    pub starts_frame: bool,
    /// This packet shows the frame is a keyframe (VP8/VP9: the frame's first packet says so;
    /// H.264: the packet carries an IDR slice).
    pub keyframe: bool,
    /// VP8: the frame's picture ID and temporal layer, on its first packet.
    pub picture: Option<Picture>,
}

/// A codec's payload format: one packet → its part of a frame.
pub trait PayloadFormat: Send {
    fn parse(&mut self, payload: &[u8]) -> Result<PayloadPart, DepacketizeError>;
    /// A frame whose packets all came: whether it can be decoded as it is (`None`: its start
    /// is missing after all, or it lacks what a decoder needs), possibly completed from what
    /// earlier frames carried (H.264's parameter sets).
    fn complete(&mut self, data: Vec<u8>, _keyframe: bool) -> Option<Vec<u8>> {
        Some(data)
    }
    /// Picture size from a keyframe, when the codec's bitstream says it cheaply.
    fn dimensions(&self, _frame: &[u8]) -> Option<(u32, u32)> {
        None
    }
}

/// One encoded frame, ready for the muxer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp of the frame, unwrapped to 64 bits by the caller.
    pub rtp_timestamp: u32,
    pub data: Bytes,
    pub keyframe: bool,
    pub num_packets: u32,
    /// VP8: what its payload descriptor says about the frames it refers to.
    pub picture: Option<Picture>,
}

pub fn payload_format(codec: Codec) -> Box<dyn PayloadFormat> {
    match codec {
        Codec::Vp8 => Box::new(Vp8Depacketizer),
        Codec::Vp9 => Box::new(Vp9Depacketizer::default()),
        Codec::H264 => Box::new(H264Depacketizer::default()),
        Codec::Av1 => Box::new(Av1Depacketizer),
        Codec::Opus | Codec::Pcmu | Codec::Pcma | Codec::G722 => Box::new(AudioDepacketizer),
    }
}

/// Reads a bitstream most significant bit first (codec headers: H.264's SPS, VP9's and AV1's
/// frame and sequence headers); `None` past the end.
pub(super) struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    pub(super) fn bits(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.at / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.at % 8)) & 1);
            self.at += 1;
        }
        Some(v)
    }

    /// Exp-Golomb unsigned; longer than 31 leading zeros is malformed.
    pub(super) fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }

    pub(super) fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Collects packets of one timestamp into a frame.
pub struct FrameAssembler {
    format: Box<dyn PayloadFormat>,
    /// Audio codecs carry one frame per packet: no marker bit needed.
    one_packet_frames: bool,
    current: Option<Partial>,
    num_malformed: u64,
    num_incomplete: u64,
}

struct Partial {
    timestamp: u32,
    data: Vec<u8>,
    keyframe: bool,
    picture: Option<Picture>,
    /// The first packet started the frame and none went missing since.
    complete_so_far: bool,
    num_packets: u32,
}

impl FrameAssembler {
    /// H.264 with parameter sets the offer carried (`sprop-parameter-sets`, Annex B NALs).
    pub fn with_h264_parameter_sets(parameter_sets: Vec<Vec<u8>>) -> Self {
        let mut assembler = Self::new(Codec::H264);
        assembler.format = Box::new(H264Depacketizer::with_parameter_sets(parameter_sets));
        assembler
    }

    pub fn new(codec: Codec) -> Self {
        Self {
            format: payload_format(codec),
            one_packet_frames: !codec.is_video(),
            current: None,
            num_malformed: 0,
            num_incomplete: 0,
        }
    }

    pub fn num_malformed(&self) -> u64 {
        self.num_malformed
    }

    /// Frames dropped because a packet of theirs was lost or they never started properly.
    pub fn num_incomplete(&self) -> u64 {
        self.num_incomplete
    }

    pub fn dimensions(&self, frame: &[u8]) -> Option<(u32, u32)> {
        self.format.dimensions(frame)
    }

    /// Packets went missing: the frame being assembled cannot be complete.
    pub fn lost(&mut self) {
        if let Some(partial) = &mut self.current {
            partial.complete_so_far = false;
        }
    }

    /// Takes the next packet in sequence order; returns the frames it completed (at most two:
    /// the previous timestamp's frame when this packet starts a new one, and this packet's own
    /// when it carries the marker bit).
    pub fn push(&mut self, packet: &RtpPacket) -> Vec<Frame> {
        let mut out = Vec::new();
        let part = match self.format.parse(&packet.payload) {
            Ok(part) => part,
            Err(_) => {
                self.num_malformed += 1;
                self.lost();
                return out;
            }
        };
        if let Some(partial) = &self.current {
            if partial.timestamp != packet.timestamp {
                // The previous frame never saw its marker bit: emit what it has if it is whole
                // up to here (a lost last packet cannot be told from a missing marker).
                let partial = self.current.take().expect("checked just above");
                out.extend(self.finish(partial));
            }
        }
        match &mut self.current {
            Some(partial) => {
                if partial.data.len() + part.data.len() > MAX_FRAME_BYTES {
                    partial.complete_so_far = false;
                } else {
                    partial.data.extend_from_slice(&part.data);
                }
                partial.keyframe |= part.keyframe;
                partial.num_packets += 1;
            }
            None => {
                self.current = Some(Partial {
                    timestamp: packet.timestamp,
                    data: part.data,
                    keyframe: part.keyframe,
                    picture: part.picture.filter(|_| part.starts_frame),
                    complete_so_far: part.starts_frame,
                    num_packets: 1,
                });
            }
        }
        if packet.marker || self.one_packet_frames {
            let partial = self.current.take().expect("a packet was just added");
            out.extend(self.finish(partial));
        }
        out
    }

    fn finish(&mut self, partial: Partial) -> Option<Frame> {
        if !partial.complete_so_far || partial.data.is_empty() {
            self.num_incomplete += 1;
            return None;
        }
        let Some(data) = self.format.complete(partial.data, partial.keyframe) else {
            self.num_incomplete += 1;
            return None;
        };
        Some(Frame {
            rtp_timestamp: partial.timestamp,
            data: Bytes::from(data),
            keyframe: partial.keyframe,
            num_packets: partial.num_packets,
            picture: partial.picture,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> RtpPacket {
        RtpPacket {
            payload_type: 96,
            marker,
            sequence: seq,
            timestamp: ts,
            ssrc: 1,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn a_frame_is_emitted_at_its_marker_and_a_lost_packet_drops_it() {
        let mut asm = FrameAssembler::new(Codec::Vp8);
        // VP8: descriptor 0x10 = start of partition 0; first payload byte 0x00 = keyframe bit.
        assert!(asm.push(&rtp(1, 100, false, &[0x10, 0x00, 1])).is_empty());
        let frames = asm.push(&rtp(2, 100, true, &[0x00, 2, 3]));
        assert_eq!(frames.len(), 1);
        assert_eq!(&frames[0].data[..], &[0x00, 1, 2, 3]);
        assert!(frames[0].keyframe);
        assert_eq!(frames[0].num_packets, 2);

        asm.push(&rtp(3, 200, false, &[0x10, 0x01, 1]));
        asm.lost();
        assert!(asm.push(&rtp(5, 200, true, &[0x00, 3])).is_empty());
        assert_eq!(asm.num_incomplete(), 1);
        // A frame whose first packet went missing is dropped too.
        assert!(asm.push(&rtp(7, 300, true, &[0x00, 9])).is_empty());
        assert_eq!(asm.num_incomplete(), 2);
    }

    #[test]
    fn a_missing_marker_is_closed_by_the_next_timestamp() {
        let mut asm = FrameAssembler::new(Codec::Vp8);
        asm.push(&rtp(1, 100, false, &[0x10, 0x01, 1]));
        let frames = asm.push(&rtp(2, 200, true, &[0x10, 0x01, 2]));
        assert_eq!(
            frames.iter().map(|f| f.rtp_timestamp).collect::<Vec<_>>(),
            vec![100, 200]
        );
        assert!(!frames[0].keyframe);
    }

    #[test]
    fn audio_packets_are_frames() {
        let mut asm = FrameAssembler::new(Codec::Opus);
        let frames = asm.push(&rtp(1, 960, false, &[0xfc, 1, 2]));
        assert_eq!(frames.len(), 1);
        assert!(asm.push(&rtp(2, 1920, false, &[])).is_empty());
        assert_eq!(asm.num_malformed(), 1);
    }
}
