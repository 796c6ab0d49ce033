//! The media path: everything between a publisher's packets and a finished file per track.
//!
//! - Pure media logic, no IO (packets and `now` in, decisions out): [`rtp`], [`depacketize`],
//!   [`reorder`], [`clock`], [`receiver`], [`segment`], [`sdp`].
//! - FFmpeg: [`writer`] (muxing on a dedicated thread per track) and [`join`] (segments → one
//!   file). These are the only modules of the project that call FFmpeg.
//! - Ingest: plain RTP over UDP and WHIP (WebRTC) feed [`receiver::TrackReceiver`]s.

pub mod clock;
pub mod codec;
pub mod compose;
pub mod depacketize;
mod graph;
pub mod join;
mod keyframe;
mod nack;
pub mod pause;
pub mod receiver;
pub mod red;
pub mod reorder;
pub mod rtp;
pub mod sdp;
pub mod segment;
pub mod simulcast;
pub mod stereo;
#[cfg(test)]
pub(crate) mod testing;
pub mod writer;

/// Errors of the media path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("invalid sdp: {0}")]
    Sdp(#[from] sdp::SdpError),
    #[error("ffmpeg: {0}")]
    Ffmpeg(String),
    #[error("media i/o: {0}")]
    Io(String),
    #[error("no free udp port in the configured range {0}")]
    NoPort(String),
    #[error("webrtc: {0}")]
    WebRtc(String),
    #[error("{0}")]
    Refused(String),
}
mod datagram;
#[cfg(test)]
mod fixture_tests;
pub mod ingest;
pub mod plain_rtp;
pub mod receive;
pub mod whip;
mod whip_sdp;
