//! The codecs the recorder writes without transcoding, and which container each goes into.
//!
//! Telephony audio (G.711 μ-law and A-law, G.722: what SIP gateways and SBCs bridge in) is written
//! as it was sent, into Matroska: WebM holds only Opus and Vorbis audio, and a WAV file has no
//! timestamps (a hold would have to be filled with made-up samples, and a WAV header is written
//! whole only at the end, so a crash leaves a file many tools refuse). Matroska keeps each RTP
//! packet's time, so a gap stays a gap, and is flushed cluster by cluster like every other track;
//! FFmpeg, VLC, mpv and GStreamer play it, and `ffmpeg -i track.mkv -c copy track.wav` gives the
//! WAV a speech-analytics tool may want, with no re-encoding.

use crate::domain::TrackType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Vp8,
    Vp9,
    /// H.264, packetization-mode 1 (single NAL units, STAP-A, FU-A).
    H264,
    /// AV1 (the AOM RTP payload format), written to WebM.
    Av1,
    Opus,
    /// G.711 μ-law (static payload type 0).
    Pcmu,
    /// G.711 A-law (static payload type 8).
    Pcma,
    /// G.722 (static payload type 9): sampled at 16 kHz, its RTP clock is 8 kHz (RFC 3551 §4.5.2).
    G722,
}

/// The file format a track is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    WebM,
    Matroska,
}

impl Container {
    /// FFmpeg's muxer name.
    pub fn muxer(self) -> &'static str {
        match self {
            Container::WebM => "webm",
            Container::Matroska => "matroska",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Container::WebM => "webm",
            Container::Matroska => "mkv",
        }
    }
}

impl Codec {
    /// Matches an SDP `rtpmap` encoding name (case-insensitive) and clock rate.
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        let codec = match name.to_ascii_uppercase().as_str() {
            "VP8" => Codec::Vp8,
            "VP9" => Codec::Vp9,
            "H264" => Codec::H264,
            "AV1" => Codec::Av1,
            "OPUS" => Codec::Opus,
            "PCMU" => Codec::Pcmu,
            "PCMA" => Codec::Pcma,
            "G722" => Codec::G722,
            _ => return None,
        };
        (codec.clock_rate() == clock_rate).then_some(codec)
    }

    /// The codec of a static payload type (RFC 3551 table 4), which an offer may use without an
    /// `a=rtpmap` line.
    pub fn from_static_payload_type(payload_type: u8) -> Option<Codec> {
        match payload_type {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::H264 => "H264",
            Codec::Av1 => "AV1",
            Codec::Opus => "opus",
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// The RTP clock rate (for G.722 not its sampling rate: see [`Codec::sample_rate`]).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8_000,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 => 90_000,
        }
    }

    /// Audio samples per second as decoded.
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::G722 => 16_000,
            other => other.clock_rate(),
        }
    }

    pub fn kind(self) -> TrackType {
        match self {
            Codec::Opus | Codec::Pcmu | Codec::Pcma | Codec::G722 => TrackType::Audio,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 => TrackType::Video,
        }
    }

    /// One RTP packet carries any number of whole 8 kHz ticks of audio, one byte per tick
    /// (G.711: one 8-bit sample; G.722 at 64 kbit/s: two 4-bit codes of its 16 kHz samples).
    pub fn is_telephony(self) -> bool {
        matches!(self, Codec::Pcmu | Codec::Pcma | Codec::G722)
    }

    pub fn is_video(self) -> bool {
        self.kind() == TrackType::Video
    }

    /// WebM holds VP8, VP9, AV1 and Opus; H.264 and telephony audio need Matroska.
    pub fn container(self) -> Container {
        match self {
            Codec::H264 | Codec::Pcmu | Codec::Pcma | Codec::G722 => Container::Matroska,
            Codec::Vp8 | Codec::Vp9 | Codec::Av1 | Codec::Opus => Container::WebM,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap_names_match_with_their_clock_rates() {
        assert_eq!(Codec::from_rtpmap("vp8", 90000), Some(Codec::Vp8));
        assert_eq!(Codec::from_rtpmap("OPUS", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 8000), None);
        assert_eq!(Codec::from_rtpmap("PCMU", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("pcma", 8000), Some(Codec::Pcma));
        assert_eq!(
            Codec::from_rtpmap("G722", 8000),
            Some(Codec::G722),
            "G.722's RTP clock is 8 kHz"
        );
        assert_eq!(Codec::from_rtpmap("G722", 16000), None);
        assert_eq!(Codec::from_rtpmap("telephone-event", 8000), None);
        assert_eq!(Codec::from_static_payload_type(9), Some(Codec::G722));
        assert_eq!(Codec::G722.sample_rate(), 16_000);
        assert_eq!(Codec::Pcmu.container(), Container::Matroska);
        assert_eq!(Codec::H264.container(), Container::Matroska);
        assert_eq!(Codec::Vp9.container().extension(), "webm");
    }
}
