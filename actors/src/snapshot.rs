//! Cheap, serializable pictures of live actors, for the debug endpoint and for tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use serde::Serialize;

use crate::domain::ErrorInfo;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActorSnapshot {
    pub kind: &'static str,
    pub id: String,
    pub state: String,
    /// Messages sent to the actor that it has not answered yet.
    pub mailbox_depth: usize,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorInfo>,
    pub counters: BTreeMap<&'static str, u64>,
    pub children: Vec<ActorSnapshot>,
}

/// Asks an actor for its snapshot.
#[derive(Message)]
#[rtype(result = "ActorSnapshot")]
pub struct Snapshot;

/// An actor's address with a count of the messages it owes an answer to: actix does not expose
/// mailbox lengths, so senders count what they have in flight.
pub struct Mailbox<A: Actor> {
    addr: Addr<A>,
    pending: Arc<AtomicUsize>,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            pending: self.pending.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>) -> Self {
        Self {
            addr,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn depth(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    pub async fn send<M>(&self, msg: M) -> Result<M::Result, actix::MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        struct Pending(Arc<AtomicUsize>);
        impl Drop for Pending {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending(self.pending.clone());
        self.addr.send(msg).await
    }

    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.addr.do_send(msg)
    }
}

/// Snapshot of a child with its mailbox depth filled in; `None` if the child has stopped.
pub async fn snapshot_of<A>(mailbox: &Mailbox<A>) -> Option<ActorSnapshot>
where
    A: Actor + Handler<Snapshot>,
    A::Context: actix::dev::ToEnvelope<A, Snapshot>,
{
    let depth = mailbox.depth();
    let mut snapshot = mailbox.send(Snapshot).await.ok()?;
    snapshot.mailbox_depth = depth;
    Some(snapshot)
}
