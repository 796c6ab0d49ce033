//! Where things fall on a conversation's composed timeline: its instances one after the other in
//! `started` order, the time between them cut. The compositor places tracks and pauses with this
//! rule, and the review page places chat lines, co-browse sessions, pauses and per-track files
//! with it, so that a chat line's time on the page is its time in `composition.mp4`.

use chrono::{DateTime, Utc};

use crate::domain::{InstanceRecord, InstanceState};

/// The span of an instance on the composed timeline, `None` for one the composition leaves out:
/// ended instances (stopped, aborted, failed) are composed, erased ones never (their media is
/// gone). An aborted instance ended when its recovery window ran out, long after its media: its
/// span ends with its last track, so the composition holds no dead time.
pub fn composed_span(instance: &InstanceRecord) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let ended = matches!(
        instance.state,
        InstanceState::Stopped | InstanceState::Aborted | InstanceState::Failed
    );
    if !ended || instance.erasure.is_some() {
        return None;
    }
    let mut stopped_at = instance.stopped?;
    let started = instance.started.unwrap_or(instance.created);
    if instance.state != InstanceState::Stopped {
        let last_media = instance
            .streams
            .iter()
            .flat_map(|s| s.tracks.iter().filter_map(|t| t.stopped.or(s.stopped)))
            .max();
        if let Some(last) = last_media.filter(|last| *last > started) {
            stopped_at = stopped_at.min(last);
        }
    }
    Some((started, stopped_at))
}

/// How an instance takes part in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Ended and in the composition: its composed span.
    Composed,
    /// Still recording (or waiting for recovery): from its start to now, after every composed
    /// instance that started before it. When it ends it is composed at the same place.
    Live,
    /// Erased, or ended without a span: a point on the timeline, nothing to show.
    Point,
}

/// One instance on the timeline. Times are microseconds from the timeline's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedInstance {
    pub instance_id: String,
    pub placement: Placement,
    /// Wall-clock time at `offset`.
    pub started: DateTime<Utc>,
    pub offset: i64,
    pub length: i64,
}

/// A conversation's instances placed one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timeline {
    pub instances: Vec<PlacedInstance>,
    /// The timeline's length: the composition's duration plus what live instances recorded so far.
    pub total: i64,
}

impl Timeline {
    /// Places `instances` (any order) as the compositor does, with live ones up to `now`.
    pub fn place(instances: &[InstanceRecord], now: DateTime<Utc>) -> Timeline {
        let mut sorted: Vec<&InstanceRecord> = instances.iter().collect();
        sorted.sort_by_key(|i| (i.started.unwrap_or(i.created), i.instance_id.clone()));
        let mut base = 0i64;
        let mut placed = Vec::new();
        for instance in sorted {
            let started = instance.started.unwrap_or(instance.created);
            let (placement, length) = match composed_span(instance) {
                Some((from, to)) => (Placement::Composed, (to - from).num_microseconds().unwrap_or(0).max(0)),
                None if instance.state.is_live() && instance.erasure.is_none() => {
                    (Placement::Live, (now - started).num_microseconds().unwrap_or(0).max(0))
                }
                None => (Placement::Point, 0),
            };
            placed.push(PlacedInstance {
                instance_id: instance.instance_id.clone(),
                placement,
                started,
                offset: base,
                length,
            });
            base += length;
        }
        Timeline {
            instances: placed,
            total: base,
        }
    }

    pub fn instance(&self, instance_id: &str) -> Option<&PlacedInstance> {
        self.instances.iter().find(|i| i.instance_id == instance_id)
    }

    /// The timeline time of wall-clock `at` inside instance `instance_id`, clamped to the
    /// instance's span (a chat line sent just before the start or after the stop sits at its
    /// edge); `None` for an instance not on the timeline.
    pub fn at(&self, instance_id: &str, at: DateTime<Utc>) -> Option<i64> {
        let placed = self.instance(instance_id)?;
        let into = (at - placed.started)
            .num_microseconds()
            .unwrap_or(0)
            .clamp(0, placed.length);
        Some(placed.offset + into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErasureRecord;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn instance(id: &str, state: InstanceState, started: i64, stopped: Option<i64>) -> InstanceRecord {
        let mut record: InstanceRecord = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "instance_id": id, "recorder_id": "r", "organization_id": "o",
            "application_id": "a", "conversation_id": "c", "conference_id": "f", "audio": true,
            "video": true, "state": "INITIALISED", "created": t(started), "started": null,
            "stopped": null, "recovered": null, "error": null, "provider": "LOCAL",
            "storage_url": "", "streams": [], "transcript": null, "num_transcript_entries": 0,
            "cobrowse_sessions": {}, "history": []
        }))
        .expect("a minimal instance record");
        record.state = state;
        record.started = Some(t(started));
        record.stopped = stopped.map(t);
        record
    }

    #[test]
    fn instances_follow_each_other_with_the_time_between_them_cut() {
        let now = t(1000);
        let mut erased = instance("erased", InstanceState::Stopped, 50, Some(60));
        erased.erasure = Some(ErasureRecord {
            requested: t(70),
            erased: Some(t(71)),
        });
        let cases = [
            // (instances, expected (id, placement, offset s, length s), total s)
            (
                vec![instance("a", InstanceState::Stopped, 0, Some(10))],
                vec![("a", Placement::Composed, 0, 10)],
                10,
            ),
            (
                vec![
                    instance("b", InstanceState::Stopped, 100, Some(130)),
                    instance("a", InstanceState::Stopped, 0, Some(10)),
                ],
                vec![("a", Placement::Composed, 0, 10), ("b", Placement::Composed, 10, 30)],
                40,
            ),
            (
                vec![
                    instance("a", InstanceState::Stopped, 0, Some(10)),
                    erased.clone(),
                    instance("live", InstanceState::Active, 990, None),
                ],
                vec![
                    ("a", Placement::Composed, 0, 10),
                    ("erased", Placement::Point, 10, 0),
                    ("live", Placement::Live, 10, 10),
                ],
                20,
            ),
            (
                vec![instance("p", InstanceState::PendingRecovery, 995, None)],
                vec![("p", Placement::Live, 0, 5)],
                5,
            ),
        ];
        for (instances, expected, total) in cases {
            let timeline = Timeline::place(&instances, now);
            let got: Vec<_> = timeline
                .instances
                .iter()
                .map(|p| {
                    (
                        p.instance_id.as_str(),
                        p.placement,
                        p.offset / 1_000_000,
                        p.length / 1_000_000,
                    )
                })
                .collect();
            assert_eq!(got, expected);
            assert_eq!(timeline.total / 1_000_000, total);
        }
    }

    #[test]
    fn an_aborted_instance_ends_with_its_last_media() {
        use crate::domain::{StreamRecord, StreamState, StreamType, TrackRecord, TrackType};
        let mut aborted = instance("a", InstanceState::Aborted, 0, Some(300));
        let mut track = TrackRecord::new("t", TrackType::Audio);
        track.started = Some(t(0));
        track.stopped = Some(t(12));
        aborted.streams = vec![StreamRecord {
            id: "s".into(),
            user_id: "u".into(),
            kind: StreamType::Cam,
            state: StreamState::Stopped,
            started: Some(t(0)),
            stopped: None,
            tracks: vec![track],
            role: None,
            rtp_session: None,
            silences: Vec::new(),
        }];
        assert_eq!(composed_span(&aborted), Some((t(0), t(12))));
        let timeline = Timeline::place(&[aborted.clone()], t(1000));
        assert_eq!(timeline.total, 12_000_000, "the recovery window is not on the timeline");
        // Stopped by a client: the instance's own span, whatever its tracks.
        aborted.state = InstanceState::Stopped;
        assert_eq!(composed_span(&aborted), Some((t(0), t(300))));
    }

    #[test]
    fn times_inside_an_instance_map_to_the_timeline_and_are_clamped_to_it() {
        let instances = vec![
            instance("a", InstanceState::Stopped, 0, Some(10)),
            instance("b", InstanceState::Stopped, 100, Some(130)),
        ];
        let timeline = Timeline::place(&instances, t(1000));
        assert_eq!(timeline.at("a", t(4)), Some(4_000_000));
        assert_eq!(timeline.at("b", t(105)), Some(15_000_000));
        assert_eq!(timeline.at("b", t(90)), Some(10_000_000), "before its start: its start");
        assert_eq!(timeline.at("b", t(500)), Some(40_000_000), "after its stop: its end");
        assert_eq!(timeline.at("missing", t(5)), None);
    }
}
