//! One published stream (CAM, MIC, SCREEN, ...) of one user within a recorder instance. Media
//! ingest attaches its track writers here; the actor reports what they have written.

use std::collections::BTreeMap;

use actix::prelude::*;

use crate::domain::StreamRecord;
use crate::snapshot::{ActorSnapshot, Snapshot};

pub struct Stream {
    record: StreamRecord,
    num_packets: u64,
    num_bytes: u64,
}

impl Stream {
    pub fn new(record: StreamRecord) -> Self {
        Self {
            record,
            num_packets: 0,
            num_bytes: 0,
        }
    }
}

impl Actor for Stream {
    type Context = Context<Self>;
}

impl Handler<Snapshot> for Stream {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(ActorSnapshot {
            kind: "Stream",
            id: self.record.id.clone(),
            state: self.record.state.as_str().into(),
            mailbox_depth: 0,
            restarts: 0,
            last_error: None,
            counters: BTreeMap::from([
                ("num_packets", self.num_packets),
                ("num_bytes", self.num_bytes),
                ("num_tracks", self.record.tracks.len() as u64),
            ]),
            children: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{StreamState, StreamType};

    #[actix::test]
    async fn a_stream_reports_its_state() {
        let stream = Stream::new(StreamRecord {
            id: "s1".into(),
            user_id: "agent".into(),
            kind: StreamType::Cam,
            state: StreamState::Recording,
            started: None,
            stopped: None,
            tracks: vec![],
        })
        .start();
        let snapshot = stream.send(Snapshot).await.unwrap();
        assert_eq!(
            (snapshot.kind, snapshot.id.as_str(), snapshot.state.as_str()),
            ("Stream", "s1", "RECORDING")
        );
    }
}
