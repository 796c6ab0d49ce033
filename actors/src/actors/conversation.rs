//! One conversation with live work: holds its one live recorder instance. Media routing by
//! conference and composition triggers hang off this actor as they arrive. Supervises the
//! recorder: a recorder whose handler failed is rebuilt from the instance record.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::FutureExt;

use super::recorder::{
    retire_streams, AbortRecorder, InstanceEnded, PauseRecorder, Recorder, RecorderCrashed, RecorderLinks,
    ShutdownRecorder, StopRecorder,
};
use super::supervision::{self, SupervisedKind};
use super::uploader::Kick;
use crate::domain::{ErrorInfo, InstanceRecord, InstanceState};
use crate::messages::{Publish, PublishAnswer, Unpublish};
use crate::snapshot::snapshot_of;
use crate::snapshot::{ActorSnapshot, ConversationCounters, Counters, Mailbox, Snapshot};
use crate::store::StateStore;
use crate::EngineError;

pub struct Conversation {
    organization_id: String,
    conversation_id: String,
    recorder: Mailbox<Recorder>,
    num_instances: u64,
    store: Arc<dyn StateStore>,
    /// What a rebuilt recorder is connected to (without this conversation: an actor holding its
    /// own address would never stop; see [`Conversation::links_for`]).
    links: RecorderLinks,
    /// Recorder rebuilds, and when, for the restart budget.
    restarts: u32,
    restart_times: VecDeque<Instant>,
    last_error: Option<ErrorInfo>,
}

impl Conversation {
    /// Builds the conversation and starts its recorder, which reports a failed handler here.
    pub fn new(
        store: Arc<dyn StateStore>,
        record: &InstanceRecord,
        mut links: RecorderLinks,
        ctx: &mut Context<Self>,
    ) -> Self {
        links.crashed = None;
        let recorder = Recorder::new(store.clone(), record, Self::links_for(&links, ctx)).start();
        Self {
            organization_id: record.organization_id.clone(),
            conversation_id: record.conversation_id.clone(),
            recorder: Mailbox::new(recorder),
            num_instances: 1,
            store,
            links,
            restarts: 0,
            restart_times: VecDeque::new(),
            last_error: None,
        }
    }

    /// A recorder's links: it reports a failed handler to this conversation.
    fn links_for(links: &RecorderLinks, ctx: &mut Context<Self>) -> RecorderLinks {
        RecorderLinks {
            crashed: Some(ctx.address().recipient()),
            ..links.clone()
        }
    }

    /// Rebuilds the recorder of `instance_id` from its record, after the failed one's streams
    /// are retired (ports released, files complete): `ACTIVE` becomes `PENDING_RECOVERY`, and
    /// the new recorder restores the streams that were recording, as on boot. Beyond the
    /// restart budget the rebuilt recorder aborts the instance.
    fn restart_recorder(&mut self, instance_id: &str, error: ErrorInfo, ctx: &mut Context<Self>) {
        let admitted = supervision::admit_restart(
            &mut self.restart_times,
            self.links.media.clock.now(),
            &self.links.recovery,
        );
        self.last_error = Some(error.clone());
        let clock = self.links.media.clock.clone();
        let updated = self.store.update_instance(instance_id, &mut |r| {
            if r.state == InstanceState::Active {
                r.transition(InstanceState::PendingRecovery, clock.utc())?;
            }
            Ok(())
        });
        let record = match updated {
            Ok(record) if !record.state.is_terminal() => record,
            Ok(record) => {
                // It ended before it failed (a stop had committed, and the failure came after,
                // before the recorder told anyone): nothing left to run but what it did not do.
                if let Some(uploader) = &self.links.uploader {
                    uploader.do_send(Kick);
                }
                if let Some(ended) = &self.links.ended {
                    ended.do_send(InstanceEnded {
                        organization_id: record.organization_id.clone(),
                        conversation_id: record.conversation_id.clone(),
                        instance_id: record.instance_id.clone(),
                    });
                }
                ctx.stop();
                return;
            }
            Err(e) => {
                tracing::error!(instance_id, error = %e, "cannot rebuild a failed recorder");
                ctx.stop();
                return;
            }
        };
        if admitted {
            self.restarts += 1;
            supervision::count_restart(SupervisedKind::Recorder);
        }
        let recorder = Recorder::new(self.store.clone(), &record, Self::links_for(&self.links, ctx))
            .after_restart(self.restarts, error.clone())
            .start();
        tracing::warn!(
            instance_id,
            num_restarts = self.restarts,
            admitted,
            "recorder rebuilt from its record"
        );
        if !admitted {
            let exhausted = ErrorInfo::new(
                "RESTART_BUDGET_EXHAUSTED",
                format!(
                    "recorder failed {} times within {} s; the instance is aborted (last: {})",
                    self.restart_times.len(),
                    self.links.recovery.restart_window.as_secs(),
                    error.message
                ),
            );
            let aborting = recorder.clone();
            actix::spawn(async move {
                if let Ok(Err(e)) = aborting.send(AbortRecorder(exhausted)).await {
                    tracing::error!(error = %e, "abort after an exhausted recorder budget failed");
                }
            });
        }
        self.recorder = Mailbox::new(recorder);
        let flush = self.store.flush();
        actix::spawn(async move {
            let _ = flush.await;
        });
    }
}

impl Actor for Conversation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages only (stop, snapshots): a handful at a time.
        ctx.set_mailbox_capacity(64);
    }
}

impl Handler<RecorderCrashed> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: RecorderCrashed, ctx: &mut Self::Context) {
        let RecorderCrashed {
            instance_id,
            error,
            streams,
        } = msg;
        // Nothing reaches the conversation until the new recorder is in place.
        ctx.wait(
            retire_streams(streams)
                .into_actor(self)
                .map(move |(), act, ctx| act.restart_recorder(&instance_id, error, ctx)),
        );
    }
}

/// The node is going down: the recorder completes its files and ends without committing
/// anything (see [`crate::messages::ShutdownNode`]), and the conversation ends with it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownConversation;

impl Handler<ShutdownConversation> for Conversation {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: ShutdownConversation, _ctx: &mut Self::Context) -> Self::Result {
        let recorder = self.recorder.clone();
        Box::pin(
            async move {
                // A recorder already gone (its instance just stopped) has nothing to complete.
                let _ = recorder.send(ShutdownRecorder).await;
            }
            .into_actor(self)
            .map(|(), _act, ctx| ctx.stop()),
        )
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

impl Handler<PauseRecorder> for Conversation {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: PauseRecorder, _ctx: &mut Self::Context) -> Self::Result {
        let recorder = self.recorder.clone();
        async move { recorder.send(msg).await? }.boxed_local()
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
        let counters = Counters::Conversation(ConversationCounters {
            num_instances: self.num_instances,
        });
        let (restarts, last_error) = (self.restarts, self.last_error.clone());
        async move {
            let children: Vec<_> = snapshot_of(&recorder).await.into_iter().collect();
            ActorSnapshot {
                kind: "Conversation",
                id,
                state: "LIVE".into(),
                mailbox_depth: 0,
                restarts,
                last_error,
                counters,
                children,
            }
        }
        .boxed_local()
    }
}
