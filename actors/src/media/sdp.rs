//! The SDP of plain-RTP ingest: the sender's offer describes its m-lines; the answer gives each
//! accepted m-line a UDP port and refuses the rest with port 0 (RFC 3264 §6), so a sender learns
//! at once that a codec will not be recorded instead of streaming into nothing.

use std::net::{IpAddr, SocketAddr};

use super::codec::Codec;
pub use crate::domain::AuxPayloads;
use crate::domain::TrackType;

/// More m-lines than any publisher needs; bounds the ports one offer can take.
pub const MAX_MEDIA_SECTIONS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the sdp is empty")]
    Empty,
    #[error("sdp line {line}: {message}")]
    BadLine { line: usize, message: String },
    #[error("the sdp has no m= line")]
    NoMedia,
    #[error("the sdp has {0} m= lines; at most {MAX_MEDIA_SECTIONS} are accepted")]
    TooManyMedia(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaOffer {
    /// `audio`, `video`, `application`, ...
    pub media: String,
    pub port: u16,
    pub protocol: String,
    pub formats: Vec<String>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<(u8, String)>,
    pub rtcp_mux: bool,
    /// `a=rtcp:<port>`: where the sender takes RTCP when not on the RTP port + 1 (RFC 3605).
    pub rtcp_port: Option<u16>,
    /// `a=rtcp-fb:<pt|*> <type> [<parameter>]` lines: the feedback the sender honours.
    pub rtcp_fb: Vec<(String, String)>,
    pub connection: Option<IpAddr>,
    pub mid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOffer {
    pub connection: Option<IpAddr>,
    pub media: Vec<MediaOffer>,
}

/// Why an m-line is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// None of its payload formats is VP8, VP9, H.264, Opus, G.711 (PCMU, PCMA) or G.722.
    UnsupportedCodec,
    /// Not RTP/AVP(F) over UDP.
    UnsupportedProtocol,
    /// Neither audio nor video.
    UnsupportedMedia,
    /// The instance was started with `audio:false` / `video:false`.
    NotRecorded,
    /// A second m-line of a kind already taken (one track per kind per stream).
    Duplicate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnsupportedCodec => "unsupported codec",
            Refusal::UnsupportedProtocol => "unsupported protocol",
            Refusal::UnsupportedMedia => "unsupported media type",
            Refusal::NotRecorded => "not recorded by this instance",
            Refusal::Duplicate => "a second m-line of the same kind",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub codec: Codec,
    pub payload_type: u8,
    /// The sender retransmits what a generic NACK asks for (`a=rtcp-fb:<pt> nack`): lost
    /// packets are asked for again while the jitter buffer waits for them.
    pub nack: bool,
    /// The sender takes keyframe requests as FIR (RFC 5104 §4.3.1) only: its offer has
    /// `a=rtcp-fb:<pt> ccm fir` and no `nack pli` (some SIP video endpoints and MCUs).
    pub fir: bool,
    /// Payload types the m-line also takes besides the media's own (answered, so the sender may
    /// use them, and handled by the receiver: see [`AuxPayloads`]).
    pub aux: AuxPayloads,
}

impl Accepted {
    pub fn new(codec: Codec, payload_type: u8) -> Accepted {
        Accepted {
            codec,
            payload_type,
            nack: false,
            fir: false,
            aux: AuxPayloads::default(),
        }
    }
}

impl MediaOffer {
    /// Where the sender itself receives RTP and RTCP, if the offer says (a port other than the
    /// placeholders 0 and 9, on a known address): what the recorder talks to first for a sender
    /// that learns its peer from the first packet it receives (mediasoup's `comedia`).
    pub fn sender_addresses(&self, session_ip: Option<IpAddr>) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let ip = self.connection.or(session_ip)?;
        if matches!(self.port, 0 | 9) {
            return None;
        }
        let rtcp = if self.rtcp_mux {
            None
        } else {
            let port = self.rtcp_port.or_else(|| self.port.checked_add(1))?;
            Some(SocketAddr::new(ip, port))
        };
        Some((SocketAddr::new(ip, self.port), rtcp))
    }

    pub fn kind(&self) -> Option<TrackType> {
        match self.media.as_str() {
            "audio" => Some(TrackType::Audio),
            "video" => Some(TrackType::Video),
            _ => None,
        }
    }

    /// The first payload format, in the sender's order of preference, that the recorder writes.
    pub fn choose(&self, audio: bool, video: bool) -> Result<Accepted, Refusal> {
        let kind = self.kind().ok_or(Refusal::UnsupportedMedia)?;
        if !matches!(self.protocol.as_str(), "RTP/AVP" | "RTP/AVPF") {
            return Err(Refusal::UnsupportedProtocol);
        }
        if (kind == TrackType::Audio && !audio) || (kind == TrackType::Video && !video) {
            return Err(Refusal::NotRecorded);
        }
        self.first_recordable(kind).ok_or(Refusal::UnsupportedCodec)
    }

    /// What a WebRTC answer's m-line settled on: its first format the recorder writes (a `red`
    /// or `rtx` listed before it is a wrapper, not the media), with the wrappers that carry it.
    pub fn answered(&self) -> Option<Accepted> {
        self.first_recordable(self.kind()?)
    }

    fn first_recordable(&self, kind: TrackType) -> Option<Accepted> {
        for pt in self.payload_types() {
            let codec = match self.rtpmaps.iter().find(|m| m.payload_type == pt) {
                Some(map) => Codec::from_rtpmap(&map.encoding, map.clock_rate),
                // A static payload type needs no rtpmap (RFC 3551: PCMU 0, PCMA 8, G722 9).
                None => Codec::from_static_payload_type(pt),
            };
            let Some(codec) = codec else { continue };
            if codec.kind() != kind {
                continue;
            }
            if codec == Codec::H264 && !self.h264_mode_supported(pt) {
                continue;
            }
            let mut accepted = Accepted::new(codec, pt);
            accepted.nack = self.honours_nack(pt);
            accepted.fir = kind == TrackType::Video && self.asks_fir_only(pt);
            if kind == TrackType::Audio {
                accepted.aux = AuxPayloads {
                    telephone_event: self.named_payload_type("telephone-event", codec.clock_rate()),
                    comfort_noise: self
                        .named_payload_type("CN", 8_000)
                        .or_else(|| self.payload_types().find(|p| *p == 13)),
                    red: self.red_carrying(pt, codec.clock_rate()),
                };
            }
            return Some(accepted);
        }
        None
    }

    /// The H.264 SPS and PPS an offer carries for `pt` (`sprop-parameter-sets`, base64 NAL
    /// units): a sender that sends them only here still gets its track configured.
    pub fn h264_parameter_sets(&self, pt: u8) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let Some((_, fmtp)) = self.fmtps.iter().find(|(p, _)| *p == pt) else {
            return Vec::new();
        };
        fmtp.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| k.trim() == "sprop-parameter-sets")
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
            .filter(|nal| !nal.is_empty() && nal.len() <= 4096)
            .collect()
    }

    /// Whether the offer says the sender answers a generic NACK for `pt` (`nack` alone: `nack
    /// pli` is a keyframe request).
    fn honours_nack(&self, pt: u8) -> bool {
        let pt = pt.to_string();
        self.rtcp_fb
            .iter()
            .any(|(p, feedback)| (*p == pt || p == "*") && feedback.eq_ignore_ascii_case("nack"))
    }

    /// Whether the offer takes keyframe requests for `pt` as FIR and not as PLI.
    fn asks_fir_only(&self, pt: u8) -> bool {
        let pt = pt.to_string();
        let has = |what: &str| {
            self.rtcp_fb.iter().any(|(p, feedback)| {
                (*p == pt || p == "*")
                    && feedback
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .eq_ignore_ascii_case(what)
            })
        };
        has("ccm fir") && !has("nack pli")
    }

    /// The m-line's payload types, in the sender's order.
    fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse::<u8>().ok())
    }

    /// The payload type an `rtpmap` names `encoding` at `clock_rate`, if the m-line lists it.
    fn named_payload_type(&self, encoding: &str, clock_rate: u32) -> Option<u8> {
        self.rtpmaps
            .iter()
            .find(|m| m.encoding.eq_ignore_ascii_case(encoding) && m.clock_rate == clock_rate)
            .map(|m| m.payload_type)
            .filter(|pt| self.payload_types().any(|p| p == *pt))
    }

    /// A `red` payload type whose blocks are all `primary` (`a=fmtp:<red> <primary>/<primary>`).
    fn red_carrying(&self, primary: u8, clock_rate: u32) -> Option<u8> {
        let red = self.named_payload_type("red", clock_rate)?;
        let (_, fmtp) = self.fmtps.iter().find(|(pt, _)| *pt == red)?;
        let blocks: Vec<&str> = fmtp.split('/').map(str::trim).collect();
        let all_primary = !blocks.is_empty() && blocks.iter().all(|b| b.parse::<u8>() == Ok(primary));
        all_primary.then_some(red)
    }

    /// packetization-mode 0 (single NAL units) and 1 (plus STAP-A, FU-A) are depacketized; 2
    /// (interleaved) is not.
    fn h264_mode_supported(&self, pt: u8) -> bool {
        let fmtp = self
            .fmtps
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, f)| f.as_str())
            .unwrap_or("");
        fmtp.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.trim() == "packetization-mode")
            .is_none_or(|(_, v)| matches!(v.trim(), "0" | "1"))
    }
}

fn bad(line: usize, message: impl Into<String>) -> SdpError {
    SdpError::BadLine {
        line,
        message: message.into(),
    }
}

fn parse_connection(line: usize, value: &str) -> Result<Option<IpAddr>, SdpError> {
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(_family), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(line, "c= must be \"IN IP4|IP6 <address>\""));
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    match addr.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Ok(None),
        Ok(ip) => Ok(Some(ip)),
        // A host name: accepted, but it does not restrict the source.
        Err(_) => Ok(None),
    }
}

pub fn parse_offer(text: &str) -> Result<SessionOffer, SdpError> {
    if text.trim().is_empty() {
        return Err(SdpError::Empty);
    }
    let mut session = SessionOffer {
        connection: None,
        media: Vec::new(),
    };
    let mut saw_version = false;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(line_no, "not a <type>=<value> line"));
        };
        if key.len() != 1 {
            return Err(bad(line_no, format!("{key:?} is not a one-letter type")));
        }
        if !saw_version {
            if key != "v" || value.trim() != "0" {
                return Err(bad(line_no, "an sdp starts with v=0"));
            }
            saw_version = true;
            continue;
        }
        match key {
            "m" => {
                let mut parts = value.split_whitespace();
                let (Some(media), Some(port), Some(protocol)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(bad(line_no, "m= must be \"<media> <port> <proto> <fmt> ...\""));
                };
                let port = port
                    .split('/')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| bad(line_no, format!("{port:?} is not a port")))?;
                session.media.push(MediaOffer {
                    media: media.to_string(),
                    port,
                    protocol: protocol.to_string(),
                    formats: parts.map(str::to_string).collect(),
                    rtpmaps: Vec::new(),
                    fmtps: Vec::new(),
                    rtcp_mux: false,
                    rtcp_port: None,
                    rtcp_fb: Vec::new(),
                    connection: None,
                    mid: None,
                });
                if session.media.len() > MAX_MEDIA_SECTIONS {
                    return Err(SdpError::TooManyMedia(session.media.len()));
                }
            }
            "c" => {
                let connection = parse_connection(line_no, value)?;
                match session.media.last_mut() {
                    Some(media) => media.connection = connection,
                    None => session.connection = connection,
                }
            }
            "a" => {
                let Some(media) = session.media.last_mut() else {
                    continue;
                };
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                match name {
                    "rtpmap" => {
                        let (pt, rest) = arg
                            .split_once(' ')
                            .ok_or_else(|| bad(line_no, "rtpmap must be \"<pt> <name>/<rate>\""))?;
                        let payload_type = pt
                            .trim()
                            .parse::<u8>()
                            .ok()
                            .filter(|pt| *pt < 128)
                            .ok_or_else(|| bad(line_no, format!("{pt:?} is not a payload type")))?;
                        let mut fields = rest.trim().split('/');
                        let encoding = fields.next().unwrap_or("").to_string();
                        let clock_rate = fields
                            .next()
                            .and_then(|r| r.parse::<u32>().ok())
                            .ok_or_else(|| bad(line_no, "rtpmap without a clock rate"))?;
                        let channels = fields.next().and_then(|c| c.parse::<u8>().ok());
                        media.rtpmaps.push(RtpMap {
                            payload_type,
                            encoding,
                            clock_rate,
                            channels,
                        });
                    }
                    "fmtp" => {
                        if let Some((pt, params)) = arg.split_once(' ') {
                            if let Ok(pt) = pt.trim().parse::<u8>() {
                                media.fmtps.push((pt, params.trim().to_string()));
                            }
                        }
                    }
                    "rtcp-mux" => media.rtcp_mux = true,
                    "rtcp-fb" => {
                        if let Some((pt, feedback)) = arg.split_once(' ') {
                            media.rtcp_fb.push((pt.trim().to_string(), feedback.trim().to_string()));
                        }
                    }
                    "rtcp" => media.rtcp_port = arg.split_whitespace().next().and_then(|p| p.parse().ok()),
                    "mid" => media.mid = Some(arg.trim().to_string()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !saw_version {
        return Err(SdpError::Empty);
    }
    if session.media.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(session)
}

/// What the recorder answers for one m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaAnswer {
    Accepted {
        accepted: Accepted,
        rtp_port: u16,
        rtcp_port: u16,
    },
    Refused(Refusal),
}

/// Builds the answer: same m-lines in the same order (RFC 3264 §6), ports from `answers`.
pub fn build_answer(offer: &SessionOffer, answers: &[MediaAnswer], address: IpAddr, session_id: u64) -> String {
    let family = if address.is_ipv4() { "IP4" } else { "IP6" };
    let mut sdp = format!(
        "v=0\r\no=rtc-recorder {session_id} 1 IN {family} {address}\r\ns=rtc-recorder\r\nc=IN {family} {address}\r\nt=0 0\r\n"
    );
    for (media, answer) in offer.media.iter().zip(answers) {
        match answer {
            MediaAnswer::Accepted {
                accepted,
                rtp_port,
                rtcp_port,
            } => {
                let codec = accepted.codec;
                let pt = accepted.payload_type;
                // The media's payload type and the ones beside it, in the offer's order.
                let taken: Vec<u8> = media
                    .payload_types()
                    .filter(|p| *p == pt || accepted.aux.payload_types().any(|a| a == *p))
                    .collect();
                let list: Vec<String> = taken.iter().map(u8::to_string).collect();
                sdp.push_str(&format!(
                    "m={} {rtp_port} {} {}\r\n",
                    media.media,
                    media.protocol,
                    list.join(" ")
                ));
                for p in taken {
                    if p == pt {
                        let channels = if codec == Codec::Opus { "/2" } else { "" };
                        sdp.push_str(&format!(
                            "a=rtpmap:{pt} {}/{}{channels}\r\n",
                            codec.name(),
                            codec.clock_rate()
                        ));
                    } else if let Some(map) = media.rtpmaps.iter().find(|m| m.payload_type == p) {
                        let channels = map.channels.map(|c| format!("/{c}")).unwrap_or_default();
                        sdp.push_str(&format!(
                            "a=rtpmap:{p} {}/{}{channels}\r\n",
                            map.encoding, map.clock_rate
                        ));
                    }
                    if let Some((_, fmtp)) = media.fmtps.iter().find(|(f, _)| *f == p) {
                        sdp.push_str(&format!("a=fmtp:{p} {fmtp}\r\n"));
                    }
                }
                if media.rtcp_mux {
                    sdp.push_str("a=rtcp-mux\r\n");
                } else {
                    sdp.push_str(&format!("a=rtcp:{rtcp_port}\r\n"));
                }
                if accepted.nack {
                    sdp.push_str(&format!("a=rtcp-fb:{pt} nack\r\n"));
                }
                if codec.is_video() {
                    sdp.push_str(&format!("a=rtcp-fb:{pt} nack pli\r\n"));
                }
                if accepted.fir {
                    sdp.push_str(&format!("a=rtcp-fb:{pt} ccm fir\r\n"));
                }
                sdp.push_str("a=recvonly\r\n");
            }
            MediaAnswer::Refused(_) => {
                let formats = if media.formats.is_empty() {
                    "0".to_string()
                } else {
                    media.formats.join(" ")
                };
                sdp.push_str(&format!("m={} 0 {} {formats}\r\n", media.media, media.protocol));
                sdp.push_str("a=inactive\r\n");
            }
        }
        if let Some(mid) = &media.mid {
            sdp.push_str(&format!("a=mid:{mid}\r\n"));
        }
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=video 5004 RTP/AVP 96 97\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=2\r\n\
        a=rtpmap:97 VP8/90000\r\n\
        m=audio 5006 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n\
        m=audio 5008 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn an_offer_is_parsed_and_codecs_chosen_in_preference_order() {
        let offer = parse_offer(OFFER).unwrap();
        assert_eq!(offer.connection, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(offer.media.len(), 3);
        assert_eq!(
            offer.media[0].choose(true, true),
            Ok(Accepted::new(Codec::Vp8, 97)),
            "H.264 mode 2 skipped"
        );
        assert_eq!(offer.media[1].choose(true, true), Ok(Accepted::new(Codec::Opus, 111)));
        assert!(offer.media[1].rtcp_mux);
        assert_eq!(offer.media[2].choose(true, true), Ok(Accepted::new(Codec::Pcmu, 0)));
        assert_eq!(offer.media[1].choose(false, true), Err(Refusal::NotRecorded));
    }

    #[test]
    fn a_phone_leg_is_taken_by_its_static_payload_types_with_dtmf_and_comfort_noise_beside_it() {
        let offer = parse_offer(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
             m=audio 9 RTP/AVP 0 8 9 13 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
        )
        .unwrap();
        let accepted = offer.media[0].choose(true, true).unwrap();
        assert_eq!(
            (accepted.codec, accepted.payload_type),
            (Codec::Pcmu, 0),
            "no rtpmap needed"
        );
        assert_eq!(accepted.aux.telephone_event, Some(101));
        assert_eq!(accepted.aux.comfort_noise, Some(13));
        assert_eq!(accepted.aux.red, None);
        let answer = build_answer(
            &offer,
            &[MediaAnswer::Accepted {
                accepted,
                rtp_port: 40_000,
                rtcp_port: 40_001,
            }],
            "127.0.0.1".parse().unwrap(),
            1,
        );
        assert!(
            answer.contains(
                "m=audio 40000 RTP/AVP 0 13 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
            ),
            "{answer}"
        );
        // A-law or G.722 first: taken as offered; G.722's RTP clock is 8 kHz.
        let g722 =
            parse_offer("v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 9 RTP/AVP 9 0\r\na=rtpmap:9 G722/8000\r\n").unwrap();
        assert_eq!(g722.media[0].choose(true, true).map(|a| a.codec), Ok(Codec::G722));
        let pcma = parse_offer("v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 9 RTP/AVP 8\r\n").unwrap();
        assert_eq!(pcma.media[0].choose(true, true).map(|a| a.codec), Ok(Codec::Pcma));
        // telephone-event alone is nothing to record.
        let dtmf_only =
            parse_offer("v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 9 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n")
                .unwrap();
        assert_eq!(dtmf_only.media[0].choose(true, true), Err(Refusal::UnsupportedCodec));
    }

    #[test]
    fn nack_and_h264_parameter_sets_are_read_from_the_offer() {
        let offer = parse_offer(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=video 9 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n\
             a=fmtp:97 packetization-mode=1;sprop-parameter-sets=Z0LAH9oB,aM48gA==\r\n\
             a=rtcp-fb:* nack\r\na=rtcp-fb:97 nack pli\r\n",
        )
        .unwrap();
        let accepted = offer.media[0].choose(true, true).unwrap();
        assert!(accepted.nack, "rtcp-fb:* nack");
        assert_eq!(
            offer.media[0].h264_parameter_sets(97),
            vec![vec![0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01], vec![0x68, 0xce, 0x3c, 0x80]]
        );
        // `nack pli` alone is a keyframe request, not retransmission.
        let pli_only = parse_offer(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n",
        )
        .unwrap();
        assert!(!pli_only.media[0].choose(true, true).unwrap().nack);
        assert!(!pli_only.media[0].choose(true, true).unwrap().fir);
        // `ccm fir` without `nack pli`: keyframes are asked for by FIR.
        let fir_only = parse_offer(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 ccm  fir\r\n",
        )
        .unwrap();
        assert!(fir_only.media[0].choose(true, true).unwrap().fir);
        let both = parse_offer(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n\
             a=rtcp-fb:* ccm fir\r\na=rtcp-fb:96 nack pli\r\n",
        )
        .unwrap();
        assert!(!both.media[0].choose(true, true).unwrap().fir, "PLI is taken");
    }

    #[test]
    fn red_audio_is_taken_beside_the_codec_it_carries() {
        let offer = parse_offer(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 9 RTP/AVP 63 111\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
             a=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n",
        )
        .unwrap();
        let accepted = offer.media[0].choose(true, true).unwrap();
        assert_eq!(
            (accepted.codec, accepted.payload_type, accepted.aux.red),
            (Codec::Opus, 111, Some(63))
        );
        let answer = build_answer(
            &offer,
            &[MediaAnswer::Accepted {
                accepted,
                rtp_port: 40_000,
                rtcp_port: 40_000,
            }],
            "127.0.0.1".parse().unwrap(),
            1,
        );
        assert!(
            answer.contains("m=audio 40000 RTP/AVP 63 111\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:111 opus/48000/2\r\n"),
            "{answer}"
        );
        // RED of another codec is not taken.
        let other = parse_offer(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 9 RTP/AVP 111 63\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 0/111\r\n\
             a=rtpmap:111 opus/48000/2\r\n",
        )
        .unwrap();
        assert_eq!(other.media[0].choose(true, true).unwrap().aux.red, None);
    }

    #[test]
    fn the_answer_keeps_every_m_line_and_refuses_with_port_zero() {
        let offer = parse_offer(OFFER).unwrap();
        let answers = vec![
            MediaAnswer::Accepted {
                accepted: Accepted::new(Codec::Vp8, 97),
                rtp_port: 40000,
                rtcp_port: 40001,
            },
            MediaAnswer::Accepted {
                accepted: Accepted::new(Codec::Opus, 111),
                rtp_port: 40002,
                rtcp_port: 40002,
            },
            MediaAnswer::Refused(Refusal::UnsupportedCodec),
        ];
        let answer = build_answer(&offer, &answers, "127.0.0.1".parse().unwrap(), 7);
        assert!(
            answer.contains("m=video 40000 RTP/AVP 97\r\na=rtpmap:97 VP8/90000\r\na=rtcp:40001\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("m=audio 40002 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n"),
            "{answer}"
        );
        assert!(answer.contains("m=audio 0 RTP/AVP 0\r\n"), "{answer}");
        let reparsed = parse_offer(&answer).unwrap();
        assert_eq!(
            reparsed.media.iter().map(|m| m.port).collect::<Vec<_>>(),
            vec![40000, 40002, 0]
        );
    }

    #[test]
    fn malformed_offers_are_errors_naming_the_line() {
        assert_eq!(parse_offer(""), Err(SdpError::Empty));
        assert!(matches!(parse_offer("hello"), Err(SdpError::BadLine { line: 1, .. })));
        assert!(matches!(parse_offer("v=1\r\n"), Err(SdpError::BadLine { line: 1, .. })));
        assert_eq!(parse_offer("v=0\r\ns=x\r\n"), Err(SdpError::NoMedia));
        assert!(matches!(
            parse_offer("v=0\r\nm=video x RTP/AVP 96\r\n"),
            Err(SdpError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            parse_offer("v=0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:300 VP8/90000\r\n"),
            Err(SdpError::BadLine { line: 3, .. })
        ));
        assert!(matches!(
            parse_offer("v=0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8\r\n"),
            Err(SdpError::BadLine { line: 3, .. })
        ));
        assert!(matches!(
            parse_offer("v=0\r\nc=IN\r\n"),
            Err(SdpError::BadLine { line: 2, .. })
        ));
        let many = format!("v=0\r\n{}", "m=video 9 RTP/AVP 96\r\n".repeat(MAX_MEDIA_SECTIONS + 1));
        assert!(matches!(parse_offer(&many), Err(SdpError::TooManyMedia(_))));
        // Arbitrary bytes never panic.
        let mut rng = crate::media::testing::SimRng::new(3);
        for _ in 0..2000 {
            let len = (rng.next_u64() % 200) as usize;
            let text: String = (0..len)
                .map(|_| OFFER.as_bytes()[(rng.next_u64() as usize) % OFFER.len()] as char)
                .collect();
            let _ = parse_offer(&text);
        }
    }
}
