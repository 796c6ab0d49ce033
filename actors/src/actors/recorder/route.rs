//! Pure: where a publisher goes. Each stream of a recorder is linked to its publisher in one of a
//! few ways ([`StreamLink`]); a publisher of (userId, type) continues the stream it is connected
//! to, one it left within the reconnect grace, or one still opening, and otherwise gets a new one.

use std::time::{Duration, Instant};

use crate::domain::StreamType;

/// How a stream is linked to its publisher. One value, so a failed stream cannot also be taken
/// for a connected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamLink {
    /// Created for a publish that has not been answered yet: the next publisher of the same
    /// (userId, type) joins it rather than making a second stream.
    Opening,
    Connected,
    /// Its publisher left at `at` (or it was rebuilt then, waiting for its publisher).
    Disconnected {
        at: Instant,
    },
    /// Its restart budget ran out: it records no more.
    Failed,
}

impl StreamLink {
    /// A session was opened on it; a failed stream stays failed.
    pub(super) fn connected(self) -> Self {
        match self {
            StreamLink::Failed => StreamLink::Failed,
            _ => StreamLink::Connected,
        }
    }

    /// Its publisher is gone as of `at`; a failed stream stays failed.
    pub(super) fn disconnected(self, at: Instant) -> Self {
        match self {
            StreamLink::Failed => StreamLink::Failed,
            _ => StreamLink::Disconnected { at },
        }
    }

    pub(super) fn is_failed(self) -> bool {
        self == StreamLink::Failed
    }

    /// Whether a returning publisher continues this stream at `now`.
    fn takes_publisher(self, now: Instant, grace: Duration) -> bool {
        match self {
            StreamLink::Opening | StreamLink::Connected => true,
            StreamLink::Disconnected { at } => now.saturating_duration_since(at) <= grace,
            StreamLink::Failed => false,
        }
    }
}

/// Where a publisher of (userId, type) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// The stream at this index of the recorder's streams.
    Continue(usize),
    /// A new stream.
    New,
}

/// The newest stream of `user_id`/`kind` that takes the publisher at `now`, else a new one.
pub(super) fn route_publisher<'a>(
    streams: impl DoubleEndedIterator<Item = (&'a str, StreamType, StreamLink)> + ExactSizeIterator,
    user_id: &str,
    kind: StreamType,
    now: Instant,
    grace: Duration,
) -> Route {
    streams
        .enumerate()
        .rev()
        .find(|(_, (user, k, link))| *user == user_id && *k == kind && link.takes_publisher(now, grace))
        .map_or(Route::New, |(at, _)| Route::Continue(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamLink::*;

    /// (streams as (user, type, link), publisher, now) → route
    type Case = (
        Vec<(&'static str, StreamType, StreamLink)>,
        (&'static str, StreamType),
        Instant,
        Route,
    );

    #[test]
    fn a_publisher_is_routed_by_user_type_and_link() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let at = |secs| t0 + Duration::from_secs(secs);
        // (streams as (user, type, link), publisher, now) → route
        let cases: Vec<Case> = vec![
            (vec![], ("a", StreamType::Cam), t0, Route::New),
            (
                vec![("a", StreamType::Cam, Connected)],
                ("a", StreamType::Cam),
                t0,
                Route::Continue(0),
            ),
            (
                vec![("a", StreamType::Cam, Opening)],
                ("a", StreamType::Cam),
                t0,
                Route::Continue(0),
            ),
            // another user, another type
            (
                vec![("b", StreamType::Cam, Connected)],
                ("a", StreamType::Cam),
                t0,
                Route::New,
            ),
            (
                vec![("a", StreamType::Mic, Connected)],
                ("a", StreamType::Cam),
                t0,
                Route::New,
            ),
            // within the grace, at its end, after it
            (
                vec![("a", StreamType::Cam, Disconnected { at: t0 })],
                ("a", StreamType::Cam),
                at(9),
                Route::Continue(0),
            ),
            (
                vec![("a", StreamType::Cam, Disconnected { at: t0 })],
                ("a", StreamType::Cam),
                at(10),
                Route::Continue(0),
            ),
            (
                vec![("a", StreamType::Cam, Disconnected { at: t0 })],
                ("a", StreamType::Cam),
                at(11),
                Route::New,
            ),
            // a failed stream takes no one
            (
                vec![("a", StreamType::Cam, Failed)],
                ("a", StreamType::Cam),
                t0,
                Route::New,
            ),
            // the newest that takes it: an old stream past its grace, then a live one
            (
                vec![
                    ("a", StreamType::Cam, Disconnected { at: t0 }),
                    ("a", StreamType::Cam, Connected),
                ],
                ("a", StreamType::Cam),
                at(60),
                Route::Continue(1),
            ),
            (
                vec![("a", StreamType::Cam, Connected), ("a", StreamType::Cam, Failed)],
                ("a", StreamType::Cam),
                t0,
                Route::Continue(0),
            ),
        ];
        for (streams, (user, kind), now, expected) in cases {
            let route = route_publisher(streams.iter().copied(), user, kind, now, grace);
            assert_eq!(route, expected, "{streams:?} ← {user}/{kind:?} at +{:?}", now - t0);
        }
    }

    #[test]
    fn a_failed_stream_stays_failed_whatever_its_publisher_does() {
        let now = Instant::now();
        assert_eq!(Failed.connected(), Failed);
        assert_eq!(Failed.disconnected(now), Failed);
        assert_eq!(Opening.connected(), Connected);
        assert_eq!(Connected.disconnected(now), Disconnected { at: now });
        assert!(Failed.is_failed() && !Connected.is_failed());
    }
}
