//! The actor tree:
//!
//! ```text
//! Registry            root; index of live conversations; rebuilds the tree from the store on boot
//! ├── Conversation    one per conversation with a live instance
//! │   └── Recorder    one per instance; the instance state machine
//! │       └── Stream  one per published stream
//! ├── Uploader        one per storage profile; drains the durable upload queue
//! ├── Notifier        one per application; delivers its events (the outbox) to its webhook
//! └── Compositor      drains the durable composition queue (one MP4 per conversation)
//! ```

mod compositor;
mod conversation;
mod erasure;
mod job;
mod notifier;
mod recorder;
mod registry;
mod stream;
pub mod supervision;
mod uploader;

pub use crate::store::artefacts::{composition_key, queue_track_file};
pub use compositor::{composition_inputs, CompositionQueued, Compositor, FetchedTracks};
pub use conversation::Conversation;
pub use erasure::{erasable, erasure_job_key};
pub use notifier::{signature as webhook_signature, Notifier};
pub use recorder::Recorder;
pub use registry::Registry;
pub use stream::Stream;
pub use uploader::{Kick, Uploader};
