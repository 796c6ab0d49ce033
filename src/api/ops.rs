//! Ops endpoints: liveness, readiness, Prometheus metrics, the live actor tree.

use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::messages::{CheckReady, CountInstances};
use recorder_actors::snapshot::Snapshot;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::config::Scope;

/// The process is up and answering.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "UP"}))
}

/// The state store answers and every storage profile is reachable.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.registry.send(CheckReady).await? {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({"status": "READY"}))),
        Err(err) => Err(ApiError::Unavailable(format!("not ready: {err}"))),
    }
}

pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.settings.ops.public_metrics {
        state.keys.authorize(&req, Scope::Admin)?;
    }
    let counts = state.registry.send(CountInstances).await??;
    state.metrics.set_instances(&counts);
    let tree = state.registry.send(Snapshot).await?;
    state.metrics.set_media(&tree);
    state.metrics.set_supervision(&tree);
    let restarts: Vec<_> = recorder_actors::actors::supervision::SupervisedKind::ALL
        .iter()
        .map(|kind| (kind.as_str(), recorder_actors::actors::supervision::num_restarts(*kind)))
        .collect();
    state.metrics.set_restarts_total(&restarts);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/debug/actors",
    tag = "Operations",
    operation_id = "debugActors",
    summary = "The live actor tree (admin scope).",
    description = "Every live actor: kind, id, state, mailbox depth (messages it has not answered yet), restarts, last error, counters, children.",
    responses(
        (status = 200, description = "OK", content_type = "application/json"),
        (status = 401, description = "Unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "Forbidden", body = super::error::ErrorBody),
    ),
    security(("apiKey" = ["admin"]))
)]
pub async fn debug_actors(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.keys.authorize(&req, Scope::Admin)?;
    let depth = state.registry.depth();
    let mut tree = state.registry.send(Snapshot).await?;
    tree.mailbox_depth = depth.saturating_sub(1);
    Ok(HttpResponse::Ok().json(tree))
}
