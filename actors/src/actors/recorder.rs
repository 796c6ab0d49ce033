//! One recorder instance: the state machine `INITIALISED → ACTIVE → STOPPED` (with `FAILED`,
//! `PENDING_RECOVERY`, `ABORTED`). Every transition is committed to the state store before it
//! is answered. Owns the instance's streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;

use super::registry::{enqueue_artefact, rejected, snapshot_of};
use super::stream::Stream;
use super::uploader::Kick;
use crate::domain::{InstanceRecord, InstanceState};
use crate::snapshot::{ActorSnapshot, Mailbox, Snapshot};
use crate::store::{ArtefactKind, StateStore};
use crate::EngineError;

pub struct Recorder {
    store: Arc<dyn StateStore>,
    instance_id: String,
    /// Last committed state, for snapshots; the store holds the truth.
    state: InstanceState,
    streams: Vec<Mailbox<Stream>>,
    uploader: Option<Recipient<Kick>>,
    restarts: u32,
}

impl Recorder {
    pub fn new(store: Arc<dyn StateStore>, record: &InstanceRecord, uploader: Option<Recipient<Kick>>) -> Self {
        Self {
            store,
            instance_id: record.instance_id.clone(),
            state: record.state,
            streams: Vec::new(),
            uploader,
            restarts: 0,
        }
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages only; media never flows through this mailbox.
        ctx.set_mailbox_capacity(64);
    }
}

/// Moves the instance to `STOPPED`, queues its artefacts for upload and ends the actor.
#[derive(Message)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct StopRecorder;

impl Handler<StopRecorder> for Recorder {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, _msg: StopRecorder, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let result = (|| {
            let mut artefacts = Vec::new();
            let record = store.update_instance(&self.instance_id, &mut |r| {
                artefacts.clear();
                if r.state.is_terminal() {
                    // A stop that queued behind another one: the first already did the work.
                    return Ok(());
                }
                r.transition(InstanceState::Stopped, Utc::now()).map_err(rejected)?;
                if r.num_transcript_entries > 0 {
                    artefacts.push(ArtefactKind::ChatTranscript);
                }
                for session_id in r.cobrowse_sessions.keys() {
                    artefacts.push(ArtefactKind::CobrowseSession {
                        session_id: session_id.clone(),
                    });
                }
                // Queued with the others, run after them: the uploader holds a manifest back
                // while any other job of its instance is queued.
                artefacts.push(ArtefactKind::Manifest);
                Ok(())
            })?;
            for artefact in artefacts {
                enqueue_artefact(store.as_ref(), &record, artefact)?;
            }
            Ok::<_, EngineError>(record)
        })();
        let flush = store.flush();
        Box::pin(
            async move {
                let record = result?;
                flush.await?;
                Ok(record)
            }
            .into_actor(self)
            .map(|result: Result<InstanceRecord, EngineError>, act, ctx| {
                if let Ok(record) = &result {
                    act.state = record.state;
                    tracing::info!(instance_id = %record.instance_id, "recorder instance stopped");
                    if let Some(uploader) = &act.uploader {
                        uploader.do_send(Kick);
                    }
                    ctx.stop();
                }
                result
            }),
        )
    }
}

impl Handler<Snapshot> for Recorder {
    type Result = ResponseFuture<ActorSnapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let streams = self.streams.clone();
        let mut snapshot = ActorSnapshot {
            kind: "Recorder",
            id: self.instance_id.clone(),
            state: self.state.as_str().into(),
            mailbox_depth: 0,
            restarts: self.restarts,
            last_error: None,
            counters: BTreeMap::from([("num_streams", self.streams.len() as u64)]),
            children: vec![],
        };
        Box::pin(async move {
            for stream in &streams {
                snapshot.children.extend(snapshot_of(stream).await);
            }
            snapshot
        })
    }
}
