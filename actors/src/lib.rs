//! The rtc-recorder engine: the actor tree that owns every recording, the state store that makes
//! it durable, and the storage backends artefacts go to. The HTTP front (the service crate) only
//! sends the messages in [`messages`] to the [`actors::Registry`] and renders the replies.

pub mod actors;
pub mod capacity;
pub mod clock;
pub mod domain;
pub mod engine;
pub mod fault;
pub mod limits;
pub mod media;
pub mod messages;
pub mod queries;
pub mod snapshot;
pub mod storage;
pub mod store;
pub mod timeline;
pub mod work;

pub use engine::{plain_manifest_renderer, ApplicationProfile, EngineConfig, EngineError, ManifestRenderer};
