//! How an instance ends, decided without the actor: from the record as the store holds it, what
//! the streams finished with and `now`, [`plan_end`] answers what to commit (the terminal
//! record), which artefacts to queue for upload and what becomes of the conversation's
//! composition. The recorder's finalize carries the plan out in one transaction.

use chrono::{DateTime, Utc};

use crate::domain::{ErrorInfo, IllegalTransition, InstanceRecord, InstanceState, StreamRecord};
use crate::store::ArtefactKind;

/// How a recorder ends: a client's stop, or an abort decided by the recorder itself.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ending {
    Stop,
    /// A stop nobody asked for: the instance reached its maximum duration.
    Expire,
    Abort(ErrorInfo),
}

impl Ending {
    /// The handler that carries this ending out (for supervision and fault scopes).
    pub(super) fn handler(&self) -> &'static str {
        match self {
            Ending::Stop | Ending::Expire => "StopRecorder",
            Ending::Abort(_) => "AbortRecorder",
        }
    }
}

/// What the conversation's composition gets when an instance ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum CompositionPlan {
    /// The application does not compose.
    None,
    /// Queued for the compositor (it runs once every instance of the conversation has ended).
    Queue,
    /// Queued and failed at once: nothing in the conversation recorded media, so there is
    /// nothing to compose (a call that never published costs no composition run).
    QueueFailed(ErrorInfo),
}

/// What ending an instance commits.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum EndPlan {
    /// The instance had already ended (a stop that queued behind another one did the work):
    /// nothing to write; the caller answers the record as it is.
    AlreadyEnded,
    /// Write `record` (terminal, its streams' final records merged), queue `artefacts` for
    /// upload and the composition as `composition` says, in one transaction.
    Commit {
        /// Boxed: a record is large and the other variant is empty.
        record: Box<InstanceRecord>,
        artefacts: Vec<ArtefactKind>,
        composition: CompositionPlan,
    },
}

/// What the inputs of a plan say about the rest of the conversation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct EndContext {
    /// The application composes its conversations.
    pub compose: bool,
    /// Another ended instance of the same composition recorded media.
    pub others_have_media: bool,
}

/// Decides the end of the instance `current` (as the store holds it) whose streams finished as
/// `finished`: `STOPPED` for a stop; for an abort `ABORTED` with the error, through
/// `PENDING_RECOVERY` when it was `ACTIVE` (media of the last stream that could record resumed
/// meanwhile). Every track file not uploaded yet, the transcript, each co-browse session and
/// `recording.json` are queued; stopped and aborted instances alike get a composition (an
/// aborted call's media is worth a composed file too).
pub(super) fn plan_end(
    current: &InstanceRecord,
    finished: &[StreamRecord],
    ending: &Ending,
    context: EndContext,
    now: DateTime<Utc>,
) -> Result<EndPlan, IllegalTransition> {
    if current.state.is_terminal() {
        return Ok(EndPlan::AlreadyEnded);
    }
    let mut record = current.clone();
    for stream in finished {
        merge_stream(&mut record, stream);
    }
    match ending {
        Ending::Stop => record.transition(InstanceState::Stopped, now)?,
        Ending::Expire => {
            record.transition(InstanceState::Stopped, now)?;
            record.stop_reason = Some(crate::domain::STOP_REASON_MAX_DURATION.into());
        }
        Ending::Abort(error) => {
            if record.state != InstanceState::PendingRecovery {
                record.transition(InstanceState::PendingRecovery, now)?;
            }
            record.transition(InstanceState::Aborted, now)?;
            record.error = Some(error.clone());
        }
    }
    let artefacts = terminal_artefacts(&record);
    let composition = if !context.compose {
        CompositionPlan::None
    } else if context.others_have_media || has_media(&record) {
        CompositionPlan::Queue
    } else {
        CompositionPlan::QueueFailed(ErrorInfo::new(
            "COMPOSITION_FAILED",
            "the conversation recorded no media: nothing to compose",
        ))
    };
    Ok(EndPlan::Commit {
        record: Box::new(record),
        artefacts,
        composition,
    })
}

/// Adds or refreshes a stream in the instance record, keeping what the record already knows
/// (start times set at first media) where the stream's own copy has nothing newer.
pub(super) fn merge_stream(record: &mut InstanceRecord, stream: &StreamRecord) {
    match record.streams.iter_mut().find(|s| s.id == stream.id) {
        None => record.streams.push(stream.clone()),
        Some(existing) => {
            existing.state = stream.state;
            existing.started = stream.started.or(existing.started);
            existing.stopped = stream.stopped.or(existing.stopped);
            existing.rtp_session = stream.rtp_session.clone();
            existing.role = stream.role.or(existing.role);
            if !stream.silences.is_empty() {
                existing.silences = stream.silences.clone();
            }
            for track in &stream.tracks {
                match existing.tracks.iter_mut().find(|t| t.id == track.id) {
                    None => existing.tracks.push(track.clone()),
                    Some(t) => {
                        t.started = track.started.or(t.started);
                        t.stopped = track.stopped.or(t.stopped);
                        if track.local.location.is_some() {
                            t.local.location = track.local.location.clone();
                        }
                        t.local.created = track.local.created.or(t.local.created);
                        if track.local.error.is_some() {
                            t.local.error = track.local.error.clone();
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn has_media(record: &InstanceRecord) -> bool {
    record
        .streams
        .iter()
        .flat_map(|s| s.tracks.iter())
        .any(|t| t.local.location.is_some())
}

/// What an instance that just ended uploads: every track file not uploaded yet, the transcript,
/// each co-browse session and, last, `recording.json` (the uploader holds a manifest back while
/// any other job of its instance is queued).
pub(super) fn terminal_artefacts(r: &InstanceRecord) -> Vec<ArtefactKind> {
    let mut artefacts = Vec::new();
    for stream in &r.streams {
        for track in &stream.tracks {
            if let (Some(location), None) = (&track.local.location, &track.object.uploaded) {
                artefacts.push(ArtefactKind::TrackFile {
                    stream_id: stream.id.clone(),
                    track_id: track.id.clone(),
                    local_path: location.clone(),
                });
            }
        }
    }
    if r.num_transcript_entries > 0 {
        artefacts.push(ArtefactKind::ChatTranscript);
    }
    for session_id in r.cobrowse_sessions.keys() {
        artefacts.push(ArtefactKind::CobrowseSession {
            session_id: session_id.clone(),
        });
    }
    artefacts.push(ArtefactKind::Manifest);
    artefacts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LocalFileRecord, ObjectRecord, StreamState, StreamType, TrackRecord, TrackType};
    use chrono::TimeZone;

    fn track(id: &str, started: Option<i64>, location: Option<&str>) -> TrackRecord {
        TrackRecord {
            id: id.into(),
            kind: TrackType::Video,
            started: started.and_then(|s| Utc.timestamp_opt(s, 0).single()),
            stopped: None,
            local: LocalFileRecord {
                location: location.map(Into::into),
                ..Default::default()
            },
            object: ObjectRecord::default(),
            rotation: None,
        }
    }

    fn stream(tracks: Vec<TrackRecord>, state: StreamState) -> StreamRecord {
        StreamRecord {
            id: "s".into(),
            user_id: "u".into(),
            kind: StreamType::Cam,
            state,
            started: None,
            stopped: None,
            tracks,
            role: None,
            rtp_session: None,
            silences: Vec::new(),
        }
    }

    fn instance(state: InstanceState) -> InstanceRecord {
        InstanceRecord {
            schema_version: 1,
            instance_id: "i".into(),
            recorder_id: "r".into(),
            organization_id: "o".into(),
            application_id: "a".into(),
            conversation_id: "c".into(),
            conference_id: "f".into(),
            audio: true,
            video: true,
            state,
            created: Utc::now(),
            started: None,
            stopped: None,
            recovered: None,
            error: None,
            provider: crate::domain::Provider::Local,
            storage_url: String::new(),
            streams: vec![],
            transcript: None,
            num_transcript_entries: 0,
            cobrowse_sessions: Default::default(),
            history: vec![],
            stop_requested: None,
            pauses: Vec::new(),
            num_discarded_while_paused: 0,
            stop_reason: None,
            erasure: None,
        }
    }

    #[test]
    fn merging_keeps_what_the_record_knew_and_takes_what_is_new() {
        let mut record = instance(InstanceState::Active);
        // Publish: the stream appears with its track.
        merge_stream(
            &mut record,
            &stream(vec![track("t1", None, None)], StreamState::Recording),
        );
        // First media set the track's start in the record meanwhile.
        record.streams[0].tracks[0].started = Utc.timestamp_opt(100, 0).single();
        // A reconnect adds a track; the stream's copy does not know the start: it stays.
        merge_stream(
            &mut record,
            &stream(
                vec![track("t1", None, None), track("t2", None, None)],
                StreamState::Recording,
            ),
        );
        assert_eq!(record.streams.len(), 1);
        assert_eq!(record.streams[0].tracks.len(), 2);
        assert_eq!(record.streams[0].tracks[0].started, Utc.timestamp_opt(100, 0).single());
        // The finish brings the location, a refined start and the final state.
        merge_stream(
            &mut record,
            &stream(vec![track("t1", Some(99), Some("/f.webm"))], StreamState::Stopped),
        );
        let t1 = &record.streams[0].tracks[0];
        assert_eq!(t1.local.location.as_deref(), Some("/f.webm"));
        assert_eq!(t1.started, Utc.timestamp_opt(99, 0).single());
        assert_eq!(record.streams[0].state, StreamState::Stopped);
        assert_eq!(
            record.streams[0].tracks.len(),
            2,
            "a track the finished copy lacks is kept"
        );
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().unwrap()
    }

    /// An instance that went live at 10 and recorded one track file (`with_file`) or none.
    fn live(state: InstanceState, with_file: bool) -> InstanceRecord {
        let mut record = instance(InstanceState::Initialised);
        record.transition(InstanceState::Active, at(10)).unwrap();
        if state == InstanceState::PendingRecovery {
            record.transition(InstanceState::PendingRecovery, at(20)).unwrap();
        }
        record.streams = vec![stream(vec![track("t1", Some(10), None)], StreamState::Recording)];
        if with_file {
            record.streams[0].tracks[0].local.location = Some("/m/t1.webm".into());
        }
        record
    }

    fn failure() -> ErrorInfo {
        ErrorInfo::new("RECOVERY_WINDOW_EXPIRED", "no media resumed")
    }

    /// One row: the instance's state, whether it has a file, the ending, compose, others' media;
    /// the expected terminal state, the states it passes, and the composition plan's kind.
    #[test]
    fn the_end_of_an_instance_is_planned_from_its_record() {
        use CompositionPlan as C;
        use InstanceState::*;
        type Row = (
            InstanceState,
            bool,
            Ending,
            bool,
            bool,
            InstanceState,
            &'static [InstanceState],
            fn(&CompositionPlan) -> bool,
        );
        let rows: Vec<Row> = vec![
            (Active, true, Ending::Stop, true, false, Stopped, &[Stopped], |c| {
                *c == C::Queue
            }),
            (
                Active,
                false,
                Ending::Stop,
                true,
                false,
                Stopped,
                &[Stopped],
                |c| matches!(c, C::QueueFailed(e) if e.code == "COMPOSITION_FAILED"),
            ),
            (Active, false, Ending::Stop, true, true, Stopped, &[Stopped], |c| {
                *c == C::Queue
            }),
            (Active, true, Ending::Stop, false, false, Stopped, &[Stopped], |c| {
                *c == C::None
            }),
            // The maximum duration: a stop of its own, with its reason.
            (
                Initialised,
                true,
                Ending::Expire,
                true,
                false,
                Stopped,
                &[Stopped],
                |c| *c == C::Queue,
            ),
            (
                PendingRecovery,
                true,
                Ending::Stop,
                true,
                false,
                Stopped,
                &[Stopped],
                |c| *c == C::Queue,
            ),
            (
                PendingRecovery,
                true,
                Ending::Abort(failure()),
                true,
                false,
                Aborted,
                &[Aborted],
                |c| *c == C::Queue,
            ),
            // Aborted while ACTIVE: through PENDING_RECOVERY first.
            (
                Active,
                true,
                Ending::Abort(failure()),
                false,
                false,
                Aborted,
                &[PendingRecovery, Aborted],
                |c| *c == C::None,
            ),
        ];
        for (n, (state, with_file, ending, compose, others_have_media, terminal, passes, composition)) in
            rows.into_iter().enumerate()
        {
            let current = live(state, with_file);
            let before = current.history.len();
            let context = EndContext {
                compose,
                others_have_media,
            };
            let plan = plan_end(&current, &[], &ending, context, at(100)).unwrap();
            let EndPlan::Commit {
                record,
                artefacts,
                composition: planned,
            } = plan
            else {
                panic!("row {n}: {plan:?}");
            };
            assert_eq!(record.state, terminal, "row {n}");
            let passed: Vec<_> = record.history[before..].iter().map(|(s, _)| *s).collect();
            assert_eq!(passed, passes, "row {n}");
            assert!(record.history[before..].iter().all(|(_, t)| *t == at(100)), "row {n}");
            assert_eq!(record.stopped, Some(at(100)), "row {n}");
            match &ending {
                Ending::Abort(error) => {
                    assert_eq!(record.error.as_ref().map(|e| &e.code), Some(&error.code), "row {n}")
                }
                Ending::Stop => {
                    assert!(record.error.is_none() && record.stop_reason.is_none(), "row {n}")
                }
                Ending::Expire => {
                    assert!(record.error.is_none(), "row {n}");
                    assert_eq!(record.stop_reason.as_deref(), Some("MAX_DURATION_REACHED"), "row {n}");
                }
            }
            assert!(composition(&planned), "row {n}: {planned:?}");
            // The manifest is queued last, after every file not uploaded yet.
            let expected_files = usize::from(with_file);
            assert_eq!(artefacts.len(), expected_files + 1, "row {n}: {artefacts:?}");
            assert_eq!(artefacts.last(), Some(&ArtefactKind::Manifest), "row {n}");
        }
    }

    #[test]
    fn an_instance_that_already_ended_plans_nothing() {
        let context = EndContext {
            compose: true,
            others_have_media: false,
        };
        for state in [InstanceState::Stopped, InstanceState::Aborted, InstanceState::Failed] {
            let mut current = live(InstanceState::Active, true);
            current.state = state;
            assert_eq!(
                plan_end(&current, &[], &Ending::Stop, context, at(100)),
                Ok(EndPlan::AlreadyEnded)
            );
        }
    }

    #[test]
    fn the_finished_streams_are_merged_and_their_files_queued_with_the_transcript_and_cobrowse() {
        let mut current = live(InstanceState::Active, false);
        current.num_transcript_entries = 3;
        current.cobrowse_sessions.insert("cb1".into(), Default::default());
        let mut finished = stream(vec![track("t1", Some(9), Some("/m/t1.webm"))], StreamState::Stopped);
        finished.stopped = Some(at(99));
        let mut uploaded = stream(vec![track("t2", Some(11), Some("/m/t2.webm"))], StreamState::Stopped);
        uploaded.id = "s2".into();
        uploaded.tracks[0].object.uploaded = Some(at(50));
        let context = EndContext {
            compose: true,
            others_have_media: false,
        };
        let plan = plan_end(&current, &[finished, uploaded], &Ending::Stop, context, at(100)).unwrap();
        let EndPlan::Commit {
            record,
            artefacts,
            composition,
        } = plan
        else {
            panic!("{plan:?}");
        };
        assert_eq!(record.streams.len(), 2);
        assert_eq!(record.streams[0].state, StreamState::Stopped);
        assert_eq!(
            record.streams[0].tracks[0].started,
            Some(at(9)),
            "the finish's refined start"
        );
        assert_eq!(composition, CompositionPlan::Queue);
        assert_eq!(
            artefacts,
            vec![
                ArtefactKind::TrackFile {
                    stream_id: "s".into(),
                    track_id: "t1".into(),
                    local_path: "/m/t1.webm".into(),
                },
                ArtefactKind::ChatTranscript,
                ArtefactKind::CobrowseSession {
                    session_id: "cb1".into()
                },
                ArtefactKind::Manifest,
            ],
            "an uploaded file is not queued again"
        );
        // The plan is a function of its inputs: the current record is not touched.
        assert_eq!(current.state, InstanceState::Active);
        assert!(current.streams[0].tracks[0].local.location.is_none());
    }

    #[test]
    fn an_instance_that_never_went_live_stops_or_aborts_from_initialised() {
        let current = instance(InstanceState::Initialised);
        let context = EndContext {
            compose: true,
            others_have_media: false,
        };
        let Ok(EndPlan::Commit {
            record, composition, ..
        }) = plan_end(&current, &[], &Ending::Stop, context, at(100))
        else {
            panic!("a stop of an INITIALISED instance commits");
        };
        assert_eq!(record.state, InstanceState::Stopped);
        assert!(
            matches!(composition, CompositionPlan::QueueFailed(_)),
            "{composition:?}"
        );
        let Ok(EndPlan::Commit { record, .. }) = plan_end(&current, &[], &Ending::Abort(failure()), context, at(100))
        else {
            panic!("an abort of an INITIALISED instance commits");
        };
        let passed: Vec<_> = record.history.iter().map(|(s, _)| *s).collect();
        assert_eq!(passed, [InstanceState::PendingRecovery, InstanceState::Aborted]);
    }
}
