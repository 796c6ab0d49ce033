//! Black-box media tests: the real binary, real independent clients (FFmpeg CLI over plain RTP,
//! aiortc and the project's `whip-publish` over WHIP), files checked with `ffprobe`.

mod harness;

mod janus;
mod network;
mod not_writing;

mod bad_input;
mod cluster;
mod commit;
mod compose;
mod drain;
mod encryption;
mod erasure;
mod pause;
mod plain_rtp;
mod plain_transport;
mod recovery;
mod review;
mod s3_profile;
mod soak;
mod stereo;
mod telephony;
mod track_urls;
mod whip;
