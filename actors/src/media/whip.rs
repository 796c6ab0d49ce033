//! WHIP ingest (RFC 9725) on the `webrtc` crate: placeholder until the WebRTC session lands.

use std::sync::Arc;

use super::codec::Codec;
use super::ingest::{EventSink, TrackCounters, TrackSummary};
use super::receiver::ReceiverConfig;
use super::writer::FrameSink;
use super::MediaError;
use crate::engine::MediaConfig;

pub struct WhipSession {
    ended: Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>>,
}

impl WhipSession {
    pub fn stop(&self) {}

    pub fn stop_and_wait(mut self) -> Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>> {
        self.stop();
        std::mem::take(&mut self.ended)
    }
}

pub struct Negotiated {
    codecs: Vec<Codec>,
}

impl Negotiated {
    pub fn codecs(&self) -> Vec<Codec> {
        self.codecs.clone()
    }

    pub fn start(
        self,
        _session_id: String,
        _tracks: Vec<(Codec, String, FrameSink, Arc<TrackCounters>)>,
        _receiver: ReceiverConfig,
        _events: EventSink,
    ) -> Result<(String, WhipSession), MediaError> {
        Err(MediaError::WebRtc("not implemented".into()))
    }
}

pub async fn negotiate(
    _media: &MediaConfig,
    _offer: &str,
    _audio: bool,
    _video: bool,
    _existing: &[Codec],
) -> Result<Negotiated, MediaError> {
    Err(MediaError::WebRtc("not implemented".into()))
}
