//! The review page's data: the conversation on the composed timeline (seconds from its start),
//! with the URLs the page loads, each carrying the link's signature.

use chrono::{DateTime, Utc};
use recorder_actors::domain::{InstanceRecord, TrackType};
use recorder_actors::queries::ReviewView;
use recorder_actors::store::CompositionState;
use recorder_actors::timeline::Placement;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ReviewLink, LIVE_REFRESH_SECS};
use crate::api::error::timestamp;
use crate::api::{AppState, BASE_PATH};

/// Everything the page shows, on the composed timeline (seconds from its start).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewData {
    conversation_id: String,
    organization_id: String,
    application_id: String,
    generated: String,
    /// An instance is still recording: the page asks again every `refreshSecs`.
    live: bool,
    refresh_secs: u64,
    /// The timeline's length: the composition's plus what live instances recorded so far.
    duration: f64,
    /// The application encrypts its recordings to the customer's key: no media, chat or
    /// co-browse content is shown (the recorder cannot read what it stored).
    encrypted: bool,
    /// At least one instance recorded video.
    has_video: bool,
    composition: Option<ReviewComposition>,
    instances: Vec<ReviewInstance>,
    /// Wall-clock time cut out of the timeline between two instances.
    gaps: Vec<ReviewGap>,
    chat: Vec<ReviewChatLine>,
    cobrowse: Vec<ReviewCobrowse>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewComposition {
    /// queued, composing, done, failed.
    state: String,
    /// Where to play it from, once uploaded.
    url: Option<String>,
    has_video: bool,
    /// The stereo agent/customer audio, once uploaded.
    stereo_url: Option<String>,
    problems: Vec<String>,
    /// Why it failed (`ERASED` once an instance of it was erased).
    error: Option<ReviewError>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewInstance {
    instance_id: String,
    recorder_id: String,
    state: String,
    /// composed (in the composition), live (recording now), point (erased or empty).
    placement: String,
    offset: f64,
    length: f64,
    started: String,
    stopped: Option<String>,
    /// Recovered after the recorder restarted (a crash or a deploy).
    recovered: Option<String>,
    error: Option<ReviewError>,
    stop_reason: Option<String>,
    /// When an erasure was asked for, and when it completed.
    erasure_requested: Option<String>,
    erased: Option<String>,
    paused: bool,
    pauses: Vec<ReviewSpan>,
    /// Spans a connected publisher sent nothing (a hold, a mute): gaps in its tracks.
    silences: Vec<ReviewSilence>,
    tracks: Vec<ReviewTrack>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewSilence {
    user_id: String,
    stream_type: String,
    start: f64,
    end: f64,
}

#[derive(Debug, Serialize, ToSchema)]
struct ReviewError {
    code: String,
    message: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct ReviewSpan {
    start: f64,
    end: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewGap {
    at: f64,
    seconds: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewTrack {
    stream_id: String,
    track_id: String,
    user_id: String,
    stream_type: String,
    /// AUDIO or VIDEO.
    kind: String,
    role: Option<String>,
    start: f64,
    end: f64,
    /// Where to play it from, once uploaded.
    url: Option<String>,
    /// Video: degrees to turn it clockwise to show it upright (the file does not say it).
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<u16>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewChatLine {
    /// Seconds on the timeline.
    t: f64,
    time: String,
    instance_id: String,
    user_id: String,
    user_display_name: Option<String>,
    text: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReviewCobrowse {
    instance_id: String,
    session_id: String,
    start: f64,
    end: f64,
    /// The first event's `timestamp` (ms since the epoch): event times are placed from it.
    first_timestamp: Option<i64>,
    num_events: u64,
    /// Every event is an rrweb event: the page replays the session in sync with the video.
    rrweb: bool,
    events_url: String,
}

fn secs(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

pub(super) fn review_data(state: &AppState, link: &ReviewLink, view: ReviewView, now: DateTime<Utc>) -> ReviewData {
    let base = format!("{}{BASE_PATH}/review/{}", state.public_url, link.conversation_id);
    let signed = |sub: &str| format!("{base}/{sub}?{}", link.query);
    let timeline = &view.timeline;
    let mut instances = Vec::new();
    let mut gaps = Vec::new();
    let mut previous_end: Option<(DateTime<Utc>, i64)> = None;
    for record in &view.instances {
        let Some(placed) = timeline.instance(&record.instance_id) else {
            continue;
        };
        if placed.placement != Placement::Point {
            if let Some((end, at)) = previous_end {
                let cut = (placed.started - end).num_milliseconds();
                if cut > 500 {
                    gaps.push(ReviewGap {
                        at: secs(at),
                        seconds: cut as f64 / 1000.0,
                    });
                }
            }
            previous_end = Some((
                placed.started + chrono::Duration::microseconds(placed.length),
                placed.offset + placed.length,
            ));
        }
        let at = |t: DateTime<Utc>| secs(timeline.at(&record.instance_id, t).unwrap_or(placed.offset));
        let instance_end = placed.started + chrono::Duration::microseconds(placed.length);
        let pauses = record
            .pauses
            .iter()
            .map(|p| ReviewSpan {
                start: at(p.paused),
                end: at(p.resumed.unwrap_or(now.min(instance_end))),
            })
            .filter(|s| s.end > s.start)
            .collect();
        let silences = record
            .streams
            .iter()
            .filter(|_| record.erasure.is_none())
            .flat_map(|stream| {
                stream.silences.iter().map(move |span| ReviewSilence {
                    user_id: stream.user_id.clone(),
                    stream_type: stream.kind.as_str().into(),
                    start: at(span.from),
                    end: at(span.to.unwrap_or(now.min(instance_end))),
                })
            })
            .filter(|s| s.end > s.start)
            .collect();
        let tracks = if view.encrypted || record.erasure.is_some() {
            vec![]
        } else {
            review_tracks(&view, record, &signed, &at, instance_end)
        };
        instances.push(ReviewInstance {
            instance_id: record.instance_id.clone(),
            recorder_id: record.recorder_id.clone(),
            state: record.state.as_str().to_string(),
            placement: match placed.placement {
                Placement::Composed => "composed",
                Placement::Live => "live",
                Placement::Point => "point",
            }
            .into(),
            offset: secs(placed.offset),
            length: secs(placed.length),
            started: timestamp(placed.started),
            stopped: record.stopped.map(timestamp),
            recovered: record.recovered.map(timestamp),
            error: record.error.as_ref().map(|e| ReviewError {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            stop_reason: record.stop_reason.clone(),
            erasure_requested: record.erasure.map(|e| timestamp(e.requested)),
            erased: record.erasure.and_then(|e| e.erased).map(timestamp),
            paused: record.pauses.last().is_some_and(|p| p.resumed.is_none()),
            pauses,
            silences,
            tracks,
        });
    }
    let chat = view
        .chat
        .iter()
        .map(|(instance_id, entry)| ReviewChatLine {
            t: secs(timeline.at(instance_id, entry.time_stamp).unwrap_or(0)),
            time: timestamp(entry.time_stamp),
            instance_id: instance_id.clone(),
            user_id: entry.user_id.clone(),
            user_display_name: entry.user_display_name.clone(),
            text: entry.transcript.clone(),
        })
        .collect();
    let cobrowse = view
        .cobrowse
        .iter()
        .map(|c| {
            let at = |ms: Option<i64>| {
                let t = ms.and_then(DateTime::<Utc>::from_timestamp_millis).unwrap_or(now);
                secs(timeline.at(&c.instance_id, t).unwrap_or(0))
            };
            ReviewCobrowse {
                instance_id: c.instance_id.clone(),
                session_id: c.session_id.clone(),
                start: at(c.first),
                end: at(c.last),
                first_timestamp: c.first,
                num_events: c.num_events,
                rrweb: c.rrweb,
                events_url: signed(&format!("cobrowse/{}/{}", c.instance_id, c.session_id)),
            }
        })
        .collect();
    let has_video = view.instances.iter().any(|i| {
        i.streams
            .iter()
            .any(|s| s.tracks.iter().any(|t| t.kind == TrackType::Video))
    });
    let composition = view.composition.as_ref().map(|c| {
        let record = &c.composition;
        let uploaded = record.uploaded.is_some();
        ReviewComposition {
            state: match record.state {
                CompositionState::Queued => "queued",
                CompositionState::Composing => "composing",
                CompositionState::Done => "done",
                CompositionState::Failed => "failed",
            }
            .into(),
            url: c.url.clone().or_else(|| uploaded.then(|| signed("composition"))),
            has_video: record.has_video,
            stereo_url: c.stereo_url.clone().or_else(|| {
                record
                    .stereo
                    .as_ref()
                    .filter(|s| s.uploaded.is_some())
                    .map(|_| signed("stereo"))
            }),
            problems: record.problems.clone(),
            error: record.error.as_ref().map(|e| ReviewError {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
        }
    });
    ReviewData {
        conversation_id: link.conversation_id.clone(),
        organization_id: link.organization_id.to_string(),
        application_id: link.application_id.clone(),
        generated: timestamp(now),
        live: view.instances.iter().any(|i| i.state.is_live()),
        refresh_secs: LIVE_REFRESH_SECS,
        duration: secs(timeline.total),
        encrypted: view.encrypted,
        has_video,
        composition,
        instances,
        gaps,
        chat,
        cobrowse,
    }
}

fn review_tracks(
    view: &ReviewView,
    record: &InstanceRecord,
    signed: &dyn Fn(&str) -> String,
    at: &dyn Fn(DateTime<Utc>) -> f64,
    instance_end: DateTime<Utc>,
) -> Vec<ReviewTrack> {
    let mut tracks = Vec::new();
    for stream in &record.streams {
        for track in &stream.tracks {
            let Some(started) = track.started.or(stream.started) else {
                continue;
            };
            let provider = view
                .track_urls
                .iter()
                .find(|(i, u)| *i == record.instance_id && u.stream_id == stream.id && u.track_id == track.id)
                .map(|(_, u)| u.url.clone());
            let url = provider.or_else(|| {
                track.object.uploaded.map(|_| {
                    signed(&format!(
                        "track/{}/{}/{}/{}",
                        record.recorder_id, record.instance_id, stream.id, track.id
                    ))
                })
            });
            tracks.push(ReviewTrack {
                stream_id: stream.id.clone(),
                track_id: track.id.clone(),
                user_id: stream.user_id.clone(),
                stream_type: stream.kind.as_str().to_string(),
                kind: match track.kind {
                    TrackType::Audio => "AUDIO",
                    TrackType::Video => "VIDEO",
                }
                .into(),
                role: stream.role.map(|r| r.as_str().to_string()),
                start: at(started),
                end: at(track.stopped.or(stream.stopped).unwrap_or(instance_end)),
                url,
                rotation: track.rotation.filter(|r| *r != 0),
            });
        }
    }
    tracks
}
