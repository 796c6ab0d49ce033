//! Pure: which m-lines of a plain-RTP offer a stream records, before any port is bound. One
//! track per kind per stream, the instance's `audio`/`video` choice, and a track keeps its codec
//! across reconnects (one file per track).

use crate::media::codec::Codec;
use crate::media::sdp::{Accepted, Refusal, SessionOffer};
use crate::media::MediaError;

/// The plan for one m-line of the offer, in the offer's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaPlan {
    Record(Accepted),
    Refuse(Refusal),
}

/// Plans the answer to `offer` for a stream that already records `recorded` (one codec per kind).
/// An offer without the sender's address is refused unless `any_source`; an offer of which no
/// m-line can be recorded is refused with every m-line's reason.
pub(super) fn plan_rtp_answer(
    offer: &SessionOffer,
    audio: bool,
    video: bool,
    any_source: bool,
    recorded: &[Codec],
) -> Result<Vec<MediaPlan>, MediaError> {
    if !any_source && offer.media.iter().any(|m| m.connection.or(offer.connection).is_none()) {
        return Err(MediaError::Refused(
            "the offer names no sender address (c=IN IP4|IP6 <address>): without one any datagram could take its ports"
                .into(),
        ));
    }
    let mut plans = Vec::with_capacity(offer.media.len());
    for media in &offer.media {
        let plan = match media.choose(audio, video) {
            Err(refusal) => MediaPlan::Refuse(refusal),
            Ok(accepted) if taken(&plans, accepted.codec) => MediaPlan::Refuse(Refusal::Duplicate),
            // A new codec of a kind already recorded is refused rather than mixed in.
            Ok(accepted)
                if recorded
                    .iter()
                    .any(|c| c.kind() == accepted.codec.kind() && *c != accepted.codec) =>
            {
                MediaPlan::Refuse(Refusal::UnsupportedCodec)
            }
            Ok(accepted) => MediaPlan::Record(accepted),
        };
        plans.push(plan);
    }
    if !plans.iter().any(|p| matches!(p, MediaPlan::Record(_))) {
        let reasons: Vec<&str> = plans
            .iter()
            .filter_map(|p| match p {
                MediaPlan::Refuse(r) => Some(r.as_str()),
                MediaPlan::Record(_) => None,
            })
            .collect();
        return Err(MediaError::Refused(format!(
            "no m-line can be recorded ({})",
            reasons.join(", ")
        )));
    }
    Ok(plans)
}

/// Whether an earlier m-line of the plan already records `codec`'s kind.
fn taken(plans: &[MediaPlan], codec: Codec) -> bool {
    plans
        .iter()
        .any(|p| matches!(p, MediaPlan::Record(a) if a.codec.kind() == codec.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::sdp::parse_offer;
    use MediaPlan::{Record, Refuse};

    fn offer(connection: bool, lines: &[&str]) -> SessionOffer {
        let mut sdp = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        if connection {
            sdp.push_str("c=IN IP4 127.0.0.1\r\n");
        }
        for line in lines {
            sdp.push_str(line);
        }
        parse_offer(&sdp).expect("test offers parse")
    }

    const VP8: &str = "m=video 5004 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    const H264: &str = "m=video 5008 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\na=fmtp:97 packetization-mode=1\r\n";
    const OPUS: &str = "m=audio 5006 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    const PCMU: &str = "m=audio 5010 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    const G729: &str = "m=audio 5012 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";

    fn vp8() -> MediaPlan {
        Record(Accepted::new(Codec::Vp8, 96))
    }
    fn opus() -> MediaPlan {
        Record(Accepted::new(Codec::Opus, 111))
    }
    fn pcmu() -> MediaPlan {
        Record(Accepted::new(Codec::Pcmu, 0))
    }

    /// (m-lines, audio, video, already recorded) → plan
    type Case = (Vec<&'static str>, bool, bool, Vec<Codec>, Vec<MediaPlan>);

    #[test]
    fn offers_are_planned_m_line_by_m_line() {
        // (m-lines, audio, video, already recorded) → plan
        let cases: Vec<Case> = vec![
            (vec![VP8, OPUS], true, true, vec![], vec![vp8(), opus()]),
            (
                vec![VP8, OPUS],
                false,
                true,
                vec![],
                vec![vp8(), Refuse(Refusal::NotRecorded)],
            ),
            (
                vec![VP8, OPUS],
                true,
                false,
                vec![],
                vec![Refuse(Refusal::NotRecorded), opus()],
            ),
            (
                vec![VP8, H264],
                true,
                true,
                vec![],
                vec![vp8(), Refuse(Refusal::Duplicate)],
            ),
            (vec![PCMU, VP8], true, true, vec![], vec![pcmu(), vp8()]),
            (
                vec![G729, VP8],
                true,
                true,
                vec![],
                vec![Refuse(Refusal::UnsupportedCodec), vp8()],
            ),
            // one audio track per stream: the phone leg's second codec is refused
            (
                vec![PCMU, OPUS],
                true,
                true,
                vec![],
                vec![pcmu(), Refuse(Refusal::Duplicate)],
            ),
            // a reconnect keeps the track's codec: H.264 on a VP8 track is refused
            (
                vec![H264, OPUS],
                true,
                true,
                vec![Codec::Vp8],
                vec![Refuse(Refusal::UnsupportedCodec), opus()],
            ),
            (vec![VP8], true, true, vec![Codec::Vp8, Codec::Opus], vec![vp8()]),
        ];
        for (lines, audio, video, recorded, expected) in cases {
            let plan = plan_rtp_answer(&offer(true, &lines), audio, video, false, &recorded).unwrap();
            assert_eq!(
                plan, expected,
                "{lines:?} audio={audio} video={video} recorded={recorded:?}"
            );
        }
    }

    #[test]
    fn an_offer_nothing_of_which_is_recorded_is_refused_with_its_reasons() {
        let err = plan_rtp_answer(&offer(true, &[G729, VP8]), true, false, false, &[]).unwrap_err();
        assert_eq!(
            err,
            MediaError::Refused("no m-line can be recorded (unsupported codec, not recorded by this instance)".into())
        );
    }

    #[test]
    fn an_offer_without_the_senders_address_needs_a_key_trusted_for_any_source() {
        let anonymous = offer(false, &[VP8]);
        assert!(matches!(
            plan_rtp_answer(&anonymous, true, true, false, &[]),
            Err(MediaError::Refused(m)) if m.contains("no sender address")
        ));
        assert_eq!(plan_rtp_answer(&anonymous, true, true, true, &[]).unwrap(), vec![vp8()]);
    }
}
