//! WHIP ingest (RFC 9725) on the `webrtc` crate (0.21: `PeerConnectionBuilder` and an event
//! handler). ICE, DTLS-SRTP and RTX unwrapping are the crate's; the recorder registers only the
//! codecs it writes (so an offer with nothing recordable is refused in the answer), waits for ICE
//! gathering (no trickle: the answer carries every candidate), and feeds each remote track's RTP
//! into the same [`TrackReceiver`] as plain RTP. That receiver's jitter buffer asks for lost video
//! packets (generic NACK) and keyframes (PLI), sent back as RTCP through the crate; audio is
//! answered as Opus in RED, so a lost packet is filled from the next one.
//!
//! Threads: the crate's connection drivers run on its dedicated reactor pool, the per-track
//! receive loops on the recorder's own small media runtime — never on the actix arbiters.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::whip_sdp::{
    accepted_codecs, extension_id, red_first, register_codecs, register_extensions, rotation_of, VIDEO_ORIENTATION_URI,
};

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport as RtcSenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{nack_pairs_from_sequence_numbers, TransportLayerNack};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
};

use super::codec::Codec;
use super::ingest::{EventSink, SinkSwap, TrackCounters, TrackPump, TrackSummary};
use super::receiver::{ReceiverConfig, TrackReceiver};
use super::rtp::{RtpPacket, SenderReport};
use super::sdp::{parse_offer, Accepted};
use super::writer::FrameSink;
use super::MediaError;
use crate::domain::TrackType;
use crate::engine::MediaConfig;

/// How long ICE gathering may take before the answer goes out with what it has.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Threads of the crate's reactor pool (connection drivers: ICE, DTLS, SRTP).
const REACTOR_THREADS: usize = 2;

/// The recorder's runtime for WebRTC track loops: off the actix arbiters, so a busy media path
/// never delays the HTTP front or the actors.
fn media_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("media-rx")
                .enable_all()
                .build()
                .inspect_err(|e| tracing::error!(error = %e, "cannot start the media runtime"))
                .ok()
        })
        .as_ref()
}

type Ended = tokio::sync::oneshot::Receiver<(String, TrackSummary)>;

/// What `on_track` needs to wire a remote track to its writer; filled in by [`Negotiated::start`]
/// before the answer leaves, so no track can arrive before it.
struct TrackSlot {
    kind: TrackType,
    codec: Codec,
    /// The payload types the answer took for the track: its media's and the RED wrapping it.
    payloads: Accepted,
    /// The answer's id of the video-orientation extension (video tracks).
    orientation: Option<u8>,
    pump: TrackPump,
    ended: tokio::sync::oneshot::Sender<(String, TrackSummary)>,
}

#[derive(Default)]
struct Shared {
    slots: Mutex<Vec<TrackSlot>>,
    gathered: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
    pc: Mutex<Option<Arc<dyn PeerConnection>>>,
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.shared.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(state = %state, "whip connection state");
        if matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
            close(&self.shared);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = match track.kind().await {
            RtpCodecKind::Audio => TrackType::Audio,
            RtpCodecKind::Video => TrackType::Video,
            _ => return,
        };
        let slot = {
            let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.iter().position(|s| s.kind == kind).map(|at| slots.remove(at))
        };
        let Some(slot) = slot else {
            tracing::warn!(
                kind = kind.as_str(),
                "whip track with no writer (not negotiated or a second one): ignored"
            );
            return;
        };
        match media_runtime() {
            Some(runtime) => {
                runtime.spawn(track_loop(track, slot));
            }
            None => tracing::error!("no media runtime: whip track not recorded"),
        }
    }
}

/// Closes the connection once; its tracks end, their loops report.
fn close(shared: &Arc<Shared>) {
    if shared.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    // Unclaimed slots: their tracks never came; dropping the senders ends the waits on them.
    shared.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let pc = shared.pc.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let (Some(pc), Some(runtime)) = (pc, media_runtime()) {
        runtime.spawn(async move {
            if let Err(e) = pc.close().await {
                tracing::warn!(error = %e, "closing a whip connection failed");
            }
        });
    }
}

async fn track_loop(track: Arc<dyn TrackRemote>, slot: TrackSlot) {
    let TrackSlot {
        mut pump,
        ended,
        codec,
        payloads,
        orientation,
        ..
    } = slot;
    let mut out = Vec::new();
    // Simulcast: the track's RTP streams are its layers; one is recorded.
    let mut layers = super::simulcast::LayerSelector::default();
    let reason = loop {
        let event = tokio::time::timeout(Duration::from_millis(50), track.poll()).await;
        let now = Instant::now();
        match event {
            Ok(Some(TrackRemoteEvent::OnRtpPacket(packet))) => {
                let pt = packet.header.payload_type;
                if pt != payloads.payload_type && Some(pt) != payloads.aux.red {
                    // RTX the crate could not unwrap (no `ssrc-group:FID` to map it by), a
                    // codec the answer did not settle on: not this track's media, and never
                    // a simulcast layer of its own.
                    pump.receiver.note_malformed();
                    continue;
                }
                let switches = layers.num_switches;
                if codec.is_video() && !layers.take(packet.header.ssrc, packet.payload.len(), now) {
                    continue;
                }
                if layers.num_switches != switches {
                    tracing::info!(track_id = %pump.track_id, ssrc = packet.header.ssrc, "simulcast: recording another layer");
                }
                // Senders put it on a keyframe's last packet and whenever it changes.
                if let Some(byte) = orientation.and_then(|id| packet.header.get_extension(id)) {
                    if let Some(b) = byte.first() {
                        pump.orientation(rotation_of(*b));
                    }
                }
                let rtp = RtpPacket {
                    payload_type: packet.header.payload_type,
                    marker: packet.header.marker,
                    sequence: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    ssrc: packet.header.ssrc,
                    payload: packet.payload.clone(),
                };
                pump.receiver.push_rtp(rtp, now, &mut out);
            }
            Ok(Some(TrackRemoteEvent::OnRtcpPacket(packets))) => {
                for p in &packets {
                    if let Some(sr) = p.as_any().downcast_ref::<RtcSenderReport>() {
                        pump.receiver.push_sender_report(SenderReport {
                            ssrc: sr.ssrc,
                            ntp: sr.ntp_time,
                            rtp_timestamp: sr.rtp_time,
                        });
                    }
                }
            }
            Ok(Some(TrackRemoteEvent::OnEnded)) | Ok(None) => break "ended",
            Ok(Some(_)) | Err(_) => {}
        }
        pump.receiver.poll(now, &mut out);
        pump.outputs().append(&mut out);
        let mut feedback: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::new();
        for ssrc in pump.drain(now) {
            feedback.push(Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            }));
        }
        for (ssrc, sequences) in pump.take_nacks() {
            feedback.push(Box::new(TransportLayerNack {
                sender_ssrc: 0,
                media_ssrc: ssrc,
                nacks: nack_pairs_from_sequence_numbers(&sequences),
            }));
        }
        if !feedback.is_empty() {
            if let Err(e) = track.write_rtcp(feedback).await {
                tracing::debug!(error = %e, "rtcp feedback not sent");
            }
        }
    };
    tracing::info!(track_id = %pump.track_id, codec = codec.name(), reason, "whip track ended");
    let track_id = pump.track_id.clone();
    let summary = pump.end(reason);
    let _ = ended.send((track_id, summary));
}

/// Lets RTCP sender reports through to the application (inbound RTCP stops inside the crate's
/// interceptor chain otherwise): they put a publisher's audio and video on one clock.
struct SenderReportForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SenderReportForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let reports: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| p.as_any().is::<RtcSenderReport>())
                .cloned()
                .collect();
            if reports.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(reports);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for SenderReportForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// A running WHIP publisher connection.
pub struct WhipSession {
    shared: Arc<Shared>,
    ended: Vec<Ended>,
    /// Per track id: where a restarted writer is handed to the running pump.
    swaps: Vec<(String, SinkSwap)>,
}

impl WhipSession {
    pub fn stop(&self) {
        close(&self.shared);
    }

    /// Where a new writer for `track_id` is handed to its running pump.
    pub fn swap_for(&self, track_id: &str) -> Option<SinkSwap> {
        self.swaps
            .iter()
            .find(|(id, _)| id == track_id)
            .map(|(_, swap)| swap.clone())
    }

    pub fn stop_and_wait(mut self) -> Vec<Ended> {
        self.stop();
        std::mem::take(&mut self.ended)
    }
}

impl Drop for WhipSession {
    fn drop(&mut self) {
        close(&self.shared);
    }
}

/// An answered offer whose tracks are not wired yet.
pub struct Negotiated {
    shared: Arc<Shared>,
    answer_sdp: String,
    accepted: Vec<Accepted>,
    /// The video-orientation extension's id in the answer, if the offer had it.
    orientation: Option<u8>,
    started: bool,
}

impl Drop for Negotiated {
    /// An answer that is never started (the stream stopped meanwhile) must not leave its
    /// connection open; once started, the `WhipSession` owns the connection (`closed` guards).
    fn drop(&mut self) {
        if !self.started {
            close(&self.shared);
        }
    }
}

impl Negotiated {
    /// The codec of each m-line the answer accepted, one per kind.
    pub fn codecs(&self) -> Vec<Codec> {
        self.accepted.iter().map(|a| a.codec).collect()
    }

    /// Wires each accepted track to its writer and returns the answer to send. `wall_micros`:
    /// the wall time now, the reference media times are mapped to.
    pub fn start(
        mut self,
        session_id: String,
        tracks: Vec<(Codec, String, FrameSink, Arc<TrackCounters>)>,
        receiver: ReceiverConfig,
        events: EventSink,
        wall_micros: i64,
        pause: Arc<super::pause::PauseGate>,
    ) -> Result<(String, WhipSession), MediaError> {
        let now = Instant::now();
        let mut ended = Vec::new();
        let mut swaps = Vec::new();
        {
            let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
            for (codec, track_id, sink, counters) in tracks {
                let Some(payloads) = self.accepted.iter().find(|a| a.codec == codec).copied() else {
                    continue;
                };
                // Video is asked for again what it lost (generic NACK, answered by RTX or on
                // the media's own SSRC) and waited for as long as that takes.
                let rx = TrackReceiver::new(codec, receiver.clone(), now, wall_micros)
                    .with_payloads(payloads.payload_type, payloads.aux)
                    .with_nack(codec.is_video());
                let mut pump = TrackPump::new(session_id.clone(), track_id, rx, sink, counters, events.clone(), now);
                pump.pause = pause.clone();
                swaps.push((pump.track_id.clone(), pump.swap.clone()));
                let (tx, wait) = tokio::sync::oneshot::channel();
                ended.push(wait);
                slots.push(TrackSlot {
                    kind: codec.kind(),
                    codec,
                    payloads,
                    orientation: codec.is_video().then_some(self.orientation).flatten(),
                    pump,
                    ended: tx,
                });
            }
        }
        self.started = true;
        let answer_sdp = std::mem::take(&mut self.answer_sdp);
        Ok((
            answer_sdp,
            WhipSession {
                shared: self.shared.clone(),
                ended,
                swaps,
            },
        ))
    }
}

fn webrtc_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::WebRtc(e.to_string())
}

/// Answers a WHIP offer: the connection is up (ICE gathered) when this returns, tracks are wired
/// by [`Negotiated::start`]. `existing` are codecs the stream already records; a reconnect must
/// keep them (one file per track).
pub async fn negotiate(
    media: &MediaConfig,
    offer_sdp: &str,
    audio: bool,
    video: bool,
    existing: &[Codec],
) -> Result<Negotiated, MediaError> {
    if media_runtime().is_none() {
        return Err(MediaError::WebRtc("the media runtime could not start".into()));
    }
    // The crate's own parser is lenient with garbage; refuse what is not an SDP offer first.
    let offer = parse_offer(offer_sdp)?;
    let offered_kinds: Vec<TrackType> = offer.media.iter().filter_map(|m| m.kind()).collect();
    if offered_kinds.is_empty() {
        return Err(MediaError::Refused("the offer has no audio or video m-line".into()));
    }
    for kind in [TrackType::Audio, TrackType::Video] {
        if offered_kinds.iter().filter(|k| **k == kind).count() > 1 {
            // One file per track and kind per stream: a second one would not be recorded, and
            // is refused rather than dropped silently. Publish each stream (CAM, SCREEN) apart.
            return Err(MediaError::Refused(format!(
                "the offer has more than one {} m-line; publish each stream in its own session",
                kind.as_str().to_ascii_lowercase()
            )));
        }
    }
    // RTX (RFC 4588) lets a publisher retransmit on a stream of its own; the crate unwraps it
    // by `a=ssrc-group:FID`, which a simulcast offer (rid-based, no SSRCs) lacks: there the
    // publisher retransmits on the layer's own SSRC.
    let simulcast = offer_sdp.lines().any(|l| l.starts_with("a=simulcast:"));
    let mut engine = MediaEngine::default();
    let num_codecs = register_codecs(&mut engine, audio, video, existing, simulcast)?;
    if num_codecs == 0 {
        return Err(MediaError::Refused(
            "this instance records neither audio nor video".into(),
        ));
    }
    // The crate's defaults without its NACK generator: the track's own jitter buffer asks for
    // what it lacks (media/nack.rs) and sees retransmissions after RTX is unwrapped, which the
    // crate's generator (before the unwrap) never does, asking again for packets already here.
    configure_simulcast_extension_headers(&mut engine).map_err(webrtc_error)?;
    register_extensions(&mut engine)?;
    let registry = configure_twcc_receiver_only(Registry::new(), &mut engine).map_err(webrtc_error)?;
    let registry = configure_rtcp_reports(registry);
    let registry = registry.with(
        Slot::from(14_000),
        SenderReportForwarder {
            read: VecDeque::new(),
            write: VecDeque::new(),
        },
    );
    let mut settings = SettingEngineBuilder::new()
        .with_include_loopback_candidate(media.webrtc_bind_ip.is_loopback())
        .with_ice_timeouts(
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(2)),
        )
        // DTLS server (`a=setup:passive`): the publisher, as client, sends the first Finished
        // and completes only after ours, so our SRTP keys are in place before its first media
        // packet. As client (the library's default for an answer) we finished last, and under
        // load a publisher's first packets, its first keyframe among them, came before our keys
        // and were dropped ("remote_srtp_context is not set yet"): a GOP lost per stream with
        // 150 publishers (BENCHMARKS.md, WHIP at scale).
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Server);
    if !media.mdns {
        settings = settings.with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
    }
    if !media.announce_ip.is_unspecified() && media.announce_ip != media.webrtc_bind_ip {
        settings = settings.with_nat_1to1_ips(
            vec![media.announce_ip.to_string()],
            rtc::peer_connection::transport::RTCIceCandidateType::Host,
        );
    }
    let shared = Arc::new(Shared::default());
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(settings.build())
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { shared: shared.clone() }) as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec![format!("{}:0", media.webrtc_bind_ip)])
        .with_dedicated_reactor_pool_size(REACTOR_THREADS)
        .build()
        .await
        .map_err(webrtc_error)?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    *shared.pc.lock().unwrap_or_else(|p| p.into_inner()) = Some(pc.clone());
    let result = async {
        let offer = RTCSessionDescription::offer(offer_sdp.to_string()).map_err(webrtc_error)?;
        pc.set_remote_description(offer).await.map_err(webrtc_error)?;
        let answer = pc.create_answer(None).await.map_err(webrtc_error)?;
        let gathered = shared.gathered.notified();
        pc.set_local_description(answer).await.map_err(webrtc_error)?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered).await;
        pc.local_description()
            .await
            .ok_or_else(|| MediaError::WebRtc("no local description".into()))
    }
    .await;
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => {
            close(&shared);
            return Err(e);
        }
    };
    let answer_sdp = red_first(&answer.sdp);
    let accepted = accepted_codecs(&answer_sdp);
    if accepted.is_empty() {
        close(&shared);
        return Err(MediaError::Refused(
            "no m-line of the offer can be recorded (codecs: VP8, VP9, H264, AV1, opus, PCMU, PCMA, G722)".into(),
        ));
    }
    let orientation = extension_id(&answer_sdp, VIDEO_ORIENTATION_URI);
    Ok(Negotiated {
        shared,
        answer_sdp,
        accepted,
        orientation,
        started: false,
    })
}
