//! A plain-RTP session as the store keeps it, so a restarted node re-binds its ports and
//! latches them to the same sender.

use serde::{Deserialize, Serialize};

/// A plain-RTP session as the store keeps it for a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtpSessionRecord {
    pub session_id: String,
    pub media: Vec<RtpMediaRecord>,
}

/// One accepted m-line of a plain-RTP session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtpMediaRecord {
    pub track_id: String,
    /// Encoding name and clock rate as in the offer's `rtpmap`.
    pub codec: String,
    pub clock_rate: u32,
    pub payload_type: u8,
    /// DTMF, comfort noise and RED payload types taken beside the media's.
    #[serde(default)]
    pub aux: AuxPayloads,
    /// The sender answers generic NACKs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nack: bool,
    /// The sender takes keyframe requests as FIR only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fir: bool,
    pub rtp_port: u16,
    /// `None` with rtcp-mux.
    pub rtcp_port: Option<u16>,
    /// The IP the offer allowed to latch the ports, if it named one.
    pub allowed_source: Option<std::net::IpAddr>,
    /// The source address and port the RTP port latched to, once a datagram came.
    pub latched_source: Option<std::net::SocketAddr>,
}

/// What a telephony or SFU sender puts beside the media in the same RTP stream (same SSRC and
/// sequence numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuxPayloads {
    /// RFC 4733 `telephone-event` (DTMF). Answered, so that a gateway sends digits as events
    /// instead of tones in the audio; the events are taken in sequence and dropped: digits are
    /// never written anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephone_event: Option<u8>,
    /// RFC 3389 comfort noise (`CN`): taken in sequence and dropped, silence stays a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comfort_noise: Option<u8>,
    /// RFC 2198 `red` carrying the media's payload type: the primary encoding is recorded and
    /// the redundant ones fill packets that were lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub red: Option<u8>,
}

impl AuxPayloads {
    pub fn payload_types(&self) -> impl Iterator<Item = u8> {
        [self.red, self.telephone_event, self.comfort_noise]
            .into_iter()
            .flatten()
    }
}
