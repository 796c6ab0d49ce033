//! What a composition composes, decided from the instance records alone (no I/O): every ended
//! instance's tracks placed on the conversation's timeline (instances one after the other, the
//! time between them cut, as [`crate::timeline`] places them), the paused spans, and each audio
//! track's stereo channel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::{InstanceRecord, ParticipantRole, StreamType, TrackType};
use crate::media::compose::{self, ComposeInput, ComposeMedia, ComposeRole, InstanceSpan};
use crate::media::stereo::Side;
use crate::timeline::composed_span;

/// (instanceId, streamId, trackId) → a readable copy of a track whose local file was deleted.
pub type FetchedTracks = HashMap<(String, String, String), PathBuf>;

/// The conversation's ended instances (stopped, aborted, failed) as composition inputs: instances in time order, each
/// track placed by its `started` time, the time between instances cut. A track deleted locally
/// is read from `fetched` when it is there.
pub fn composition_inputs(instances: &[InstanceRecord], fetched: &FetchedTracks) -> ComposeJob {
    let mut problems = Vec::new();
    let mut spans = Vec::new();
    // Aborted (and failed) instances are composed too: what they recorded before the crash is
    // finalized and uploaded like any stopped instance's media.
    let mut stopped: Vec<&InstanceRecord> = instances.iter().filter(|i| composed_span(i).is_some()).collect();
    stopped.sort_by_key(|i| i.started.unwrap_or(i.created));
    let first_speaker = first_speaker(&stopped);
    let mut sides = Vec::new();
    for instance in stopped {
        let (started, stopped_at) = composed_span(instance).expect("filtered on composed_span above");
        let mut tracks = Vec::new();
        for stream in &instance.streams {
            for track in &stream.tracks {
                let Some(location) = &track.local.location else {
                    continue;
                };
                let mut path = PathBuf::from(location);
                if track.local.deleted.is_some() {
                    let id = (instance.instance_id.clone(), stream.id.clone(), track.id.clone());
                    match fetched.get(&id) {
                        Some(copy) => path = copy.clone(),
                        None => {
                            problems.push(format!("{location}: deleted locally and not readable from storage"));
                            continue;
                        }
                    }
                }
                let input = ComposeInput {
                    path,
                    media: match track.kind {
                        TrackType::Audio => ComposeMedia::Audio,
                        TrackType::Video => ComposeMedia::Video,
                    },
                    role: match stream.kind {
                        StreamType::Screen => ComposeRole::Screen,
                        _ => ComposeRole::Camera,
                    },
                    participant: stream.user_id.clone(),
                    start: Duration::ZERO,
                    end: Duration::ZERO,
                    rotation: track.rotation.unwrap_or(0),
                };
                sides.push(stereo_side(stream.role, &stream.user_id, first_speaker.as_deref()));
                tracks.push((
                    input,
                    track.started.or(stream.started).map(|t| t.timestamp_micros()),
                    track.stopped.or(stream.stopped).map(|t| t.timestamp_micros()),
                ));
            }
        }
        let pauses = instance
            .pauses
            .iter()
            .map(|p| {
                (
                    p.paused.timestamp_micros(),
                    p.resumed.unwrap_or(stopped_at).timestamp_micros(),
                )
            })
            .collect();
        spans.push(InstanceSpan {
            started_micros: started.timestamp_micros(),
            stopped_micros: stopped_at.timestamp_micros(),
            pauses,
            tracks,
        });
    }
    let (placed, total) = compose::place_instances(&spans);
    let inputs: Vec<ComposeInput> = placed
        .into_iter()
        .map(|(mut input, start, end)| {
            input.start = start;
            input.end = end;
            input
        })
        .collect();
    // place_instances keeps the tracks in the order they were given, as `sides` is.
    let stereo = inputs
        .iter()
        .zip(sides)
        .filter(|(input, _)| input.media == ComposeMedia::Audio)
        .map(|(input, side)| (input.clone(), side))
        .collect();
    ComposeJob {
        inputs,
        total,
        slates: compose::place_pauses(&spans),
        stereo,
        problems,
    }
}

/// The userId of the conversation's first publisher with audio (earliest audio track start):
/// the left channel of the stereo audio when publishers declare no role.
fn first_speaker(instances: &[&InstanceRecord]) -> Option<String> {
    instances
        .iter()
        .flat_map(|i| &i.streams)
        .flat_map(|s| {
            s.tracks
                .iter()
                .filter(|t| t.kind == TrackType::Audio)
                .filter_map(move |t| t.started.or(s.started).map(|at| (at, &s.user_id)))
        })
        .min_by_key(|(at, _)| *at)
        .map(|(_, user)| user.clone())
}

/// A publisher's stereo channel: agents left, customers right; without a role, the
/// conversation's first speaker left and everyone else right.
pub fn stereo_side(role: Option<ParticipantRole>, user_id: &str, first_speaker: Option<&str>) -> Side {
    match role {
        Some(ParticipantRole::Agent) => Side::Left,
        Some(ParticipantRole::Customer) => Side::Right,
        None if first_speaker == Some(user_id) => Side::Left,
        None => Side::Right,
    }
}

/// What a composition composes: its inputs placed on the timeline, its length, the paused spans
/// (a slate over each), and the tracks left out and why.
#[derive(Debug)]
pub struct ComposeJob {
    pub inputs: Vec<ComposeInput>,
    pub total: Duration,
    pub slates: Vec<(Duration, Duration)>,
    /// The audio inputs (placed as in `inputs`) with their stereo channel.
    pub stereo: Vec<(ComposeInput, Side)>,
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_pick_the_stereo_channel_and_without_one_the_first_speaker_is_left() {
        use ParticipantRole::{Agent, Customer};
        let table = [
            (Some(Agent), "a", Some("c"), Side::Left),
            (Some(Customer), "c", Some("c"), Side::Right),
            (None, "c", Some("c"), Side::Left),
            (None, "b", Some("c"), Side::Right),
            (None, "b", None, Side::Right),
        ];
        for (role, user, first, side) in table {
            assert_eq!(stereo_side(role, user, first), side, "{role:?} {user} {first:?}");
        }
    }
}
