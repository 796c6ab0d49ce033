//! What a WHIP answer offers and what it settled on: the codecs the recorder writes (several
//! H.264 profiles, RTX for each video codec, Opus in RED), the header extensions it reads, and
//! the answer read back (which codec each live m-line took, at which payload types).

use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_AV1, MIME_TYPE_G722, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_PCMA, MIME_TYPE_PCMU,
    MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

use super::codec::Codec;
use super::sdp::{parse_offer, Accepted};
use super::MediaError;
use crate::domain::TrackType;

/// Registers the codecs a stream may record, in the answerer's order of preference; returns
/// how many. `existing` are the stream's codecs already recorded (a reconnect keeps them).
pub(super) fn register_codecs(
    engine: &mut MediaEngine,
    audio: bool,
    video: bool,
    existing: &[Codec],
    simulcast: bool,
) -> Result<usize, MediaError> {
    let mut num_codecs = 0;
    // In the answerer's order of preference: Opus before the telephony codecs.
    for codec in [
        Codec::Vp8,
        Codec::Vp9,
        Codec::H264,
        Codec::Av1,
        Codec::Opus,
        Codec::G722,
        Codec::Pcmu,
        Codec::Pcma,
    ] {
        let wanted = match codec.kind() {
            TrackType::Audio => audio,
            TrackType::Video => video,
        };
        let kept = existing.iter().all(|e| e.kind() != codec.kind() || *e == codec);
        if wanted && kept {
            if codec == Codec::Opus {
                // RED first: a browser sends what the answer lists first, and Opus in RED
                // carries each frame twice, so a lost packet is filled from the next one.
                let (red, kind) = red_for_opus();
                engine.register_codec(red, kind).map_err(webrtc_error)?;
            }
            for (params, kind) in codec_variants(codec) {
                let primary = params.payload_type;
                engine.register_codec(params, kind).map_err(webrtc_error)?;
                if codec.is_video() && !simulcast {
                    engine.register_codec(rtx_for(primary), kind).map_err(webrtc_error)?;
                }
            }
            num_codecs += 1;
        }
    }
    Ok(num_codecs)
}

/// The H.264 profiles answered, by `profile-level-id` (profile_idc, constraints; the level is
/// free with `level-asymmetry-allowed=1`, up to 5.1): what Chrome, Safari, Firefox and Android
/// offer. Each gets its own payload type; the answer takes the first the offer has.
const H264_PROFILES: [(&str, u8); 5] = [
    ("42e01f", 102), // Constrained Baseline
    ("42001f", 104), // Baseline
    ("4d001f", 106), // Main
    ("640033", 108), // High (level 5.1)
    ("640c33", 110), // Constrained High
];

/// Every way `codec` is offered to the WebRTC stack (several H.264 profiles, one of the rest).
fn codec_variants(codec: Codec) -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    if codec != Codec::H264 {
        return vec![codec_parameters(codec)];
    }
    H264_PROFILES
        .iter()
        .map(|(profile, pt)| {
            let (mut params, kind) = codec_parameters(codec);
            params.rtp_codec.sdp_fmtp_line =
                format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}");
            params.payload_type = *pt;
            (params, kind)
        })
        .collect()
}

fn codec_parameters(codec: Codec) -> (RTCRtpCodecParameters, RtpCodecKind) {
    let feedback = |t: &str, p: &str| RTCPFeedback {
        typ: t.into(),
        parameter: p.into(),
    };
    let video_feedback = vec![feedback("nack", ""), feedback("nack", "pli"), feedback("ccm", "fir")];
    let (mime, clock_rate, channels, fmtp, pt, kind) = match codec {
        Codec::Vp8 => (MIME_TYPE_VP8, 90_000, 0, "", 96, RtpCodecKind::Video),
        Codec::Vp9 => (MIME_TYPE_VP9, 90_000, 0, "profile-id=0", 98, RtpCodecKind::Video),
        Codec::H264 => (
            MIME_TYPE_H264,
            90_000,
            0,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            102,
            RtpCodecKind::Video,
        ),
        // What Chrome and Firefox offer (profile 0, main tier, level 3.1); payload type 100,
        // its RTX 122.
        Codec::Av1 => (
            MIME_TYPE_AV1,
            90_000,
            0,
            "level-idx=5;profile=0;tier=0",
            100,
            RtpCodecKind::Video,
        ),
        Codec::Opus => (
            MIME_TYPE_OPUS,
            48_000,
            2,
            "minptime=10;useinbandfec=1",
            111,
            RtpCodecKind::Audio,
        ),
        // A softphone's WebRTC leg (SIP over WebSocket clients) may offer only G.711 or G.722.
        Codec::Pcmu => (MIME_TYPE_PCMU, 8_000, 1, "", 0, RtpCodecKind::Audio),
        Codec::Pcma => (MIME_TYPE_PCMA, 8_000, 1, "", 8, RtpCodecKind::Audio),
        Codec::G722 => (MIME_TYPE_G722, 8_000, 1, "", 9, RtpCodecKind::Audio),
    };
    (
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: if codec.is_video() { video_feedback } else { vec![] },
            },
            payload_type: pt,
        },
        kind,
    )
}

/// `video/rtx` repairing `primary` (payload types 120 and up: above every primary's).
fn rtx_for(primary: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_RTX.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: format!("apt={primary}"),
            rtcp_feedback: vec![],
        },
        payload_type: 120 + (primary - 96) / 2,
    }
}

/// RFC 2198 `red` whose blocks are all Opus (payload type 111).
fn red_for_opus() -> (RTCRtpCodecParameters, RtpCodecKind) {
    (
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "audio/red".to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "111/111".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: 63,
        },
        RtpCodecKind::Audio,
    )
}

/// The video-orientation extension (3GPP TS 26.114 §7.4.5, "CVO"): what iOS and Android
/// senders, and SFUs forwarding them, use to say the picture is turned.
pub(super) const VIDEO_ORIENTATION_URI: &str = "urn:3gpp:video-orientation";

/// The header extensions the recorder reads beyond the crate's (MID, RID, TWCC).
pub(super) fn register_extensions(engine: &mut MediaEngine) -> Result<(), MediaError> {
    engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: VIDEO_ORIENTATION_URI.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )
        .map_err(webrtc_error)
}

/// The id an SDP gives the extension `uri` (`a=extmap:<id>[/<direction>] <uri>`).
pub(super) fn extension_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("a=extmap:")?;
        let (id, tail) = rest.split_once(' ')?;
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        (tail.split_whitespace().next()? == uri && (1..=14).contains(&id)).then_some(id)
    })
}

/// Degrees to turn a picture clockwise to show it upright, from the extension's byte
/// (`0 0 0 0 C F R1 R0`; the camera and flip bits say how it was taken, not how to show it).
pub(super) fn rotation_of(byte: u8) -> u16 {
    u16::from(byte & 0b11) * 90
}

fn webrtc_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::WebRtc(e.to_string())
}

/// The codec of each accepted (non-zero port, not inactive) m-line of an answer, one per kind.
pub(super) fn accepted_codecs(answer: &str) -> Vec<Accepted> {
    let Ok(parsed) = parse_offer(answer) else { return vec![] };
    let mut accepted: Vec<Accepted> = Vec::new();
    for media in &parsed.media {
        if media.port == 0 || !answer_section_receives(answer, media.mid.as_deref()) {
            continue;
        }
        if let Some(a) = media.answered() {
            if !accepted.iter().any(|c| c.codec.kind() == a.codec.kind()) {
                accepted.push(a);
            }
        }
    }
    accepted
}

/// The answer with each audio m-line's `red` moved first when it wraps the line's first codec
/// (`a=fmtp:<red> <first>/<first>`): the crate answers in the offer's order, and a browser sends
/// what the answer lists first, so this is how the answer asks for Opus in RED.
pub(super) fn red_first(answer: &str) -> String {
    let Ok(parsed) = parse_offer(answer) else {
        return answer.to_string();
    };
    let mut out = answer.to_string();
    for media in parsed.media.iter().filter(|m| m.media == "audio") {
        let Some(a) = media.answered() else { continue };
        let (Some(red), Some(first)) = (a.aux.red, media.formats.first()) else {
            continue;
        };
        if *first != a.payload_type.to_string() {
            continue;
        }
        let old = format!("m=audio {} {} {}", media.port, media.protocol, media.formats.join(" "));
        let mut formats = vec![red.to_string()];
        formats.extend(media.formats.iter().filter(|f| **f != red.to_string()).cloned());
        let new = format!("m=audio {} {} {}", media.port, media.protocol, formats.join(" "));
        out = out.replacen(&old, &new, 1);
    }
    out
}

/// Whether the answer's section with this mid receives media (not `inactive`/`sendonly`).
fn answer_section_receives(answer: &str, mid: Option<&str>) -> bool {
    let Some(mid) = mid else { return true };
    let sections: Vec<&str> = answer.split("\nm=").skip(1).collect();
    sections
        .iter()
        .find(|s| s.lines().any(|l| l.trim_end() == format!("a=mid:{mid}")))
        .is_none_or(|s| !s.lines().any(|l| matches!(l.trim_end(), "a=inactive" | "a=sendonly")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_codecs_come_from_live_sections_of_the_answer() {
        let answer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\na=recvonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=inactive\r\n\
            m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:2\r\n";
        let accepted: Vec<Codec> = accepted_codecs(answer).iter().map(|a| a.codec).collect();
        assert_eq!(accepted, vec![Codec::Vp8]);
    }

    #[test]
    fn the_answer_asks_for_opus_in_red_when_the_offer_has_it() {
        let answer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
            a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:0 PCMU/8000\r\na=recvonly\r\n";
        let munged = red_first(answer);
        assert!(munged.contains("m=audio 9 UDP/TLS/RTP/SAVPF 63 111 0\r\n"), "{munged}");
        let accepted = accepted_codecs(&munged);
        assert_eq!(
            (accepted[0].codec, accepted[0].payload_type, accepted[0].aux.red),
            (Codec::Opus, 111, Some(63))
        );
        // RED wrapping something else, or no RED: the answer stays as it was.
        let other = answer.replace("a=fmtp:63 111/111", "a=fmtp:63 0/0");
        assert_eq!(red_first(&other), other);
        let plain = answer.replace(" 111 63 0", " 111 0");
        assert_eq!(red_first(&plain), plain);
    }

    #[test]
    fn the_orientation_extension_is_found_and_read() {
        let sdp = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
            a=extmap:13/recvonly urn:3gpp:video-orientation\r\n";
        assert_eq!(extension_id(sdp, VIDEO_ORIENTATION_URI), Some(13));
        assert_eq!(
            extension_id(
                "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
                VIDEO_ORIENTATION_URI
            ),
            None
        );
        // Rotation bits only: a mirrored back-camera picture turned 270.
        assert_eq!([0, 1, 2, 3, 0b1111].map(rotation_of), [0, 90, 180, 270, 270]);
    }
}
