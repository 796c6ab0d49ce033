//! One conversation with live work: holds its one live recorder instance. Media routing by
//! conference and composition triggers hang off this actor as they arrive.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;

use super::recorder::{Recorder, RecorderLinks, StopRecorder};
use super::registry::snapshot_of;
use crate::domain::InstanceRecord;
use crate::messages::{Publish, PublishAnswer, Unpublish};
use crate::snapshot::{ActorSnapshot, Mailbox, Snapshot};
use crate::store::StateStore;
use crate::EngineError;

pub struct Conversation {
    organization_id: String,
    conversation_id: String,
    recorder: Mailbox<Recorder>,
    num_instances: u64,
}

impl Conversation {
    pub fn new(store: Arc<dyn StateStore>, record: &InstanceRecord, links: RecorderLinks) -> Self {
        let recorder = Recorder::new(store, record, links).start();
        Self {
            organization_id: record.organization_id.clone(),
            conversation_id: record.conversation_id.clone(),
            recorder: Mailbox::new(recorder),
            num_instances: 1,
        }
    }
}

impl Actor for Conversation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages only (stop, snapshots): a handful at a time.
        ctx.set_mailbox_capacity(64);
    }
}

/// Stops the live instance; the conversation ends with it.
#[derive(Message)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct StopInstance;

impl Handler<StopInstance> for Conversation {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, _msg: StopInstance, _ctx: &mut Self::Context) -> Self::Result {
        let recorder = self.recorder.clone();
        Box::pin(
            async move { recorder.send(StopRecorder).await? }
                .into_actor(self)
                .map(|result, _act, ctx| {
                    if result.is_ok() {
                        ctx.stop();
                    }
                    result
                }),
        )
    }
}

impl Handler<Publish> for Conversation {
    type Result = ResponseFuture<Result<PublishAnswer, EngineError>>;

    fn handle(&mut self, msg: Publish, _ctx: &mut Self::Context) -> Self::Result {
        let recorder = self.recorder.clone();
        async move { recorder.send(msg).await? }.boxed_local()
    }
}

impl Handler<Unpublish> for Conversation {
    type Result = ResponseFuture<Result<(), EngineError>>;

    fn handle(&mut self, msg: Unpublish, _ctx: &mut Self::Context) -> Self::Result {
        let recorder = self.recorder.clone();
        async move { recorder.send(msg).await? }.boxed_local()
    }
}

impl Handler<Snapshot> for Conversation {
    type Result = ResponseFuture<ActorSnapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let recorder = self.recorder.clone();
        let id = format!("{}/{}", self.organization_id, self.conversation_id);
        let mut counters = BTreeMap::new();
        counters.insert("num_instances", self.num_instances);
        async move {
            let children: Vec<_> = snapshot_of(&recorder).await.into_iter().collect();
            ActorSnapshot {
                kind: "Conversation",
                id,
                state: "LIVE".into(),
                mailbox_depth: 0,
                restarts: 0,
                last_error: None,
                counters,
                children,
            }
        }
        .boxed_local()
    }
}
