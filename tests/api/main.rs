//! Black-box HTTP tests of `rtc-recorder`: each test starts the real binary on a fresh data
//! directory (see `helpers::TestApp`) and checks it against the Recorder API v1.0 contract.

mod helpers;
mod spec;

mod auth;
mod backup;
mod capacity;
mod cluster;
mod deploy;
mod drain;
mod erasure;
mod isolation;
mod limits;
mod openapi;
mod ops;
mod pause;
mod persistence;
mod races;
mod recordings;
mod review;
mod robustness;
mod signed_urls;
mod startup;
mod transcript_cobrowse;
mod validation;
mod webhooks;
