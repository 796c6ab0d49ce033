//! Where a video track's writing can start: a keyframe. Which packet begins one (so none is
//! asked for while it is on its way), and the first whole one the settling jitter buffer holds.

use super::codec::Codec;
use super::rtp::RtpPacket;
use super::sdp::AuxPayloads;

/// Whether a media packet begins a keyframe (for H.264 also: carries the SPS an IDR follows).
pub(super) fn starts_keyframe(codec: Codec, payloads: Option<(u8, AuxPayloads)>, packet: &RtpPacket) -> bool {
    codec.is_video()
        && payloads.is_none_or(|(pt, _)| packet.payload_type == pt)
        && super::depacketize::payload_format(codec)
            .parse(&packet.payload)
            .is_ok_and(|part| {
                (part.starts_frame && part.keyframe)
                    || (codec == Codec::H264 && part.data.windows(4).any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 7))
            })
}

/// While the jitter buffer settles: the first packet of the first whole keyframe it holds
/// (its first packet, then every packet of its timestamp up to the marker, no gap). Its
/// start must be certain: for H.264, where every NAL unit starts anew, the packet before it
/// is there with another timestamp, or the access unit carries its SPS and PPS.
pub(super) fn first_whole_keyframe<'a>(
    codec: Codec,
    payloads: Option<(u8, AuxPayloads)>,
    settling: impl Iterator<Item = (i64, &'a RtpPacket)>,
) -> Option<i64> {
    if !codec.is_video() {
        return None;
    }
    let mut format = super::depacketize::payload_format(codec);
    let media = |p: &RtpPacket| payloads.is_none_or(|(pt, _)| p.payload_type == pt);
    struct Candidate {
        first: i64,
        timestamp: u32,
        next: i64,
        keyframe: bool,
        certain_start: bool,
        data: Vec<u8>,
    }
    let mut candidate: Option<Candidate> = None;
    let mut previous: Option<(i64, u32)> = None;
    for (seq, p) in settling {
        let part = media(p).then(|| format.parse(&p.payload).ok()).flatten();
        let continues = candidate
            .as_ref()
            .is_some_and(|c| seq == c.next && p.timestamp == c.timestamp);
        if !continues {
            candidate = match &part {
                Some(part) if part.starts_frame => Some(Candidate {
                    first: seq,
                    timestamp: p.timestamp,
                    next: seq,
                    keyframe: false,
                    certain_start: codec != Codec::H264
                        || previous.is_some_and(|(s, ts)| s + 1 == seq && ts != p.timestamp),
                    data: Vec::new(),
                }),
                _ => None,
            };
        }
        previous = Some((seq, p.timestamp));
        let (Some(c), Some(part)) = (candidate.as_mut(), part) else {
            candidate = None;
            continue;
        };
        c.keyframe |= part.keyframe;
        c.next = seq + 1;
        if codec == Codec::H264 {
            c.data.extend_from_slice(&part.data);
        }
        if p.marker {
            let whole = c.keyframe && (c.certain_start || super::depacketize::has_parameter_sets(&c.data));
            if whole {
                return Some(c.first);
            }
            candidate = None;
        }
    }
    None
}
