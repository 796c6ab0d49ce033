//! Cheap, serializable pictures of live actors, for the debug endpoint and for tests.

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
    /// The actor's own counters, typed per kind: the debug endpoint shows them by name and
    /// `/metrics` reads the same fields (see [`Counters`]).
    pub counters: Counters,
    pub children: Vec<ActorSnapshot>,
}

/// Declares a set of named `u64` counters: a struct whose field names are the names the debug
/// tree and `/metrics` show (typed once, here), with `values()` listing them and `add` summing two.
#[macro_export]
macro_rules! counter_set {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: u64,)*
        }

        impl $name {
            /// Every counter with its name, in declaration order.
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }

            /// Sums `other` into `self`, counter by counter.
            pub fn add(&mut self, other: &Self) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

counter_set! {
    /// The registry's node-wide counters (operators only).
    pub struct RegistryCounters {
        num_live_conversations,
        num_started,
        num_stopped,
        num_recovered_on_boot,
    }
}

counter_set! {
    /// What an organization's own key sees of the registry.
    pub struct TenantRegistryCounters {
        num_live_conversations,
    }
}

counter_set! {
    pub struct ConversationCounters {
        num_instances,
    }
}

counter_set! {
    pub struct RecorderCounters {
        num_streams,
        num_publishes,
        num_publishes_refused,
        /// Time in the current state, from the record's history.
        millis_in_state,
    }
}

counter_set! {
    /// One track's media path, from packets to the file; a stream's are the sums over its tracks,
    /// and `/metrics` sums them over the streams of live instances (`recorder_media_live`).
    pub struct MediaCounters {
        num_packets,
        num_bytes,
        num_frames,
        num_lost,
        num_keyframe_requests,
        /// Packets asked for again (generic NACK, plain RTP whose sender retransmits).
        num_nacks,
        /// Packets that came after the jitter buffer had given up on them.
        num_late,
        /// Frames not written because a packet of theirs was lost.
        num_frames_incomplete,
        /// Whole frames not written: the decoder's chain was broken (waiting for a keyframe).
        num_frames_skipped,
        /// Padding-only packets (bandwidth probes): never counted as loss.
        num_padding,
        /// The jitter buffer's wait now (summed over tracks by `/metrics`: read it per track).
        jitter_buffer_ms,
        num_malformed,
        num_refused,
        bitrate_bps,
        num_frames_written,
        num_bytes_written,
        num_frames_dropped,
        num_slow_writes,
        num_flushes,
        writer_queue_depth,
        /// Frames not recorded because recording was paused at their time.
        num_frames_paused,
        /// 1 while the track receives packets and has written no frame for a while (see
        /// `NO_FRAME_GRACE`): its error says why; `/metrics` sums it over live tracks.
        num_tracks_not_writing,
    }
}

counter_set! {
    /// A stream beside its tracks' sums (summed over live streams by `/metrics` too).
    pub struct StreamCounters {
        num_tracks,
        num_sessions,
        /// 1 while a publisher is connected.
        connected,
        /// Writer failures restarted, and rebuilt stream actors.
        num_restarts,
        /// 1 once its restart budget ran out.
        num_failed,
    }
}

counter_set! {
    /// A track beside its media counters: its files and how soon they began.
    pub struct TrackFileCounters {
        num_segments,
        /// The slowest single write or flush of its writers.
        max_write_micros,
        /// Wall time (µs since the Unix epoch, on the engine's clock) the first frame went into a
        /// file; 0 before. Against the publisher's first packet: how soon recording starts.
        first_write_at_micros,
        /// When the first packet of the track arrived (µs since the Unix epoch); 0 before.
        first_packet_at_micros,
    }
}

counter_set! {
    pub struct UploaderCounters {
        num_queued,
        num_running,
        num_uploaded,
        num_bytes,
        num_failures,
        num_parked,
        num_pumps,
    }
}

counter_set! {
    pub struct NotifierCounters {
        /// Events in the outbox, not delivered yet.
        num_pending,
        num_delivered,
        /// Failed delivery attempts (each retried).
        num_failures,
        /// Events of an application without a webhook.
        num_discarded,
    }
}

counter_set! {
    pub struct CompositorCounters {
        num_running,
        num_queued,
        num_composed,
        num_failed,
        num_waiting_for_lease,
        num_leases_held,
    }
}

/// How long a stream's live session has been silent, and when it would end as idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionSilence {
    pub silent_ms: u64,
    pub idle_limit_ms: u64,
}

/// The counters of one actor, by kind. Serialized as one flat object of name → value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Counters {
    #[default]
    None,
    Registry(RegistryCounters),
    TenantRegistry(TenantRegistryCounters),
    Conversation(ConversationCounters),
    Recorder(RecorderCounters),
    Stream {
        media: MediaCounters,
        stream: StreamCounters,
        millis_in_state: u64,
        /// The live plain-RTP session: ms since any of its m-lines received anything (a hold,
        /// a mute), and the idle limit at which it ends by itself (0: no such session).
        session: SessionSilence,
    },
    Track {
        media: MediaCounters,
        track: TrackFileCounters,
    },
    Uploader(UploaderCounters),
    Notifier(NotifierCounters),
    Compositor(CompositorCounters),
}

impl Counters {
    /// Every counter with its name.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        match self {
            Counters::None => Vec::new(),
            Counters::Registry(c) => c.values(),
            Counters::TenantRegistry(c) => c.values(),
            Counters::Conversation(c) => c.values(),
            Counters::Recorder(c) => c.values(),
            Counters::Stream {
                media,
                stream,
                millis_in_state,
                session,
            } => {
                let mut values = media.values();
                values.extend(stream.values());
                values.push(("millis_in_state", *millis_in_state));
                values.push(("session_silent_ms", session.silent_ms));
                values.push(("session_idle_limit_ms", session.idle_limit_ms));
                values
            }
            Counters::Track { media, track } => {
                let mut values = media.values();
                values.extend(track.values());
                values
            }
            Counters::Uploader(c) => c.values(),
            Counters::Notifier(c) => c.values(),
            Counters::Compositor(c) => c.values(),
        }
    }

    /// One counter by name (tests and tools that read the tree generically).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let values = self.values();
        let mut map = serializer.serialize_map(Some(values.len()))?;
        for (name, value) in values {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
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
