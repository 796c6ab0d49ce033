//! The codecs the recorder writes without transcoding, and which container each goes into.

use crate::domain::TrackType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Vp8,
    Vp9,
    /// H.264, packetization-mode 1 (single NAL units, STAP-A, FU-A).
    H264,
    Opus,
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
            "OPUS" => Codec::Opus,
            _ => return None,
        };
        (codec.clock_rate() == clock_rate).then_some(codec)
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::H264 => "H264",
            Codec::Opus => "opus",
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }

    pub fn kind(self) -> TrackType {
        match self {
            Codec::Opus => TrackType::Audio,
            _ => TrackType::Video,
        }
    }

    pub fn is_video(self) -> bool {
        self.kind() == TrackType::Video
    }

    /// WebM holds VP8, VP9 and Opus; H.264 needs Matroska.
    pub fn container(self) -> Container {
        match self {
            Codec::H264 => Container::Matroska,
            _ => Container::WebM,
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
        assert_eq!(Codec::from_rtpmap("PCMU", 8000), None);
        assert_eq!(Codec::H264.container(), Container::Matroska);
        assert_eq!(Codec::Vp9.container().extension(), "webm");
    }
}
