//! Ops endpoints: liveness, readiness, Prometheus metrics, the live actor tree.

use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::messages::{CheckReady, DebugTree};
use recorder_actors::snapshot::Snapshot;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::config::Scope;

/// The process is up and answering.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "UP"}))
}

/// The state store answers and every storage profile was reachable at its last background
/// check. Unauthenticated, so the answer names no profile, host, bucket or path: only counts.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = state.registry.send(CheckReady).await??;
    let mut body = json!({
        "status": if report.is_ready() { "READY" } else { "NOT_READY" },
        "store": if report.store_ok { "UP" } else { "DOWN" },
        "draining": report.draining,
        "storageProfiles": {
            "total": report.num_profiles,
            "reachable": report.num_reachable,
            "unreachable": report.num_unreachable,
            "unchecked": report.num_profiles - report.num_reachable - report.num_unreachable,
        },
    });
    // Said, not required: a node at its budget still serves what it holds (downloads, WHIP
    // PATCH/DELETE of its sessions), so it stays READY; a balancer or autoscaler reads
    // `accepting` to send new recordings elsewhere.
    let usage = state.queries.capacity();
    let refused_by = state.queries.start_refused_by(&usage);
    body["capacity"] = json!({
        "accepting": refused_by.is_none(),
        "refusedBy": refused_by,
        "budgetUnits": usage.budget,
        "availableLiveUnits": usage.available_live(),
        "cpuPercent": usage.cpu_permille as f64 / 10.0,
    });
    if let Some(cluster) = &state.cluster {
        // Said, not required: a node without NATS still records what it has.
        body["cluster"] = json!({
            "connected": cluster.is_connected(),
            "nodes": cluster.alive_nodes().len(),
        });
    }
    if report.is_ready() {
        return Ok(HttpResponse::Ok().json(body));
    }
    let mut message = Vec::new();
    if report.draining {
        message.push("the node is draining before it stops".to_string());
    }
    if !report.store_ok {
        message.push("the state store does not answer".to_string());
    }
    if report.num_unreachable > 0 {
        message.push(format!("{} storage profile(s) unreachable", report.num_unreachable));
    }
    if report.num_profiles > report.num_reachable + report.num_unreachable {
        message.push("storage profiles not checked yet".to_string());
    }
    Err(ApiError::Unavailable(format!("not ready: {}", message.join("; "))))
}

pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.settings.ops.public_metrics {
        state.keys.authorize(&req, Scope::Admin)?;
    }
    let counts = state.queries.instance_counts();
    state.metrics.set_instances(&counts);
    state.metrics.set_capacity(&state.queries.capacity());
    let tree = state.registry.send(Snapshot).await?;
    state.metrics.set_media(&tree);
    state.metrics.set_supervision(&tree);
    use recorder_actors::actors::supervision::{totals, SupervisedKind};
    let totals: Vec<_> = SupervisedKind::ALL
        .iter()
        .map(|kind| (kind.as_str(), totals(*kind)))
        .collect();
    state.metrics.set_supervision_totals(&totals);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/debug/actors",
    tag = "Operations",
    operation_id = "debugActors",
    summary = "The live actor tree (admin or ops scope).",
    description = "Every live actor: kind, id, state, mailbox depth (messages it has not answered yet), restarts, last error, counters, children. A key with the admin scope sees its own organization's conversations and uploaders; a key with the ops scope (the node's operators) sees the whole node, the compositor and node-wide counters included.",
    responses(
        (status = 200, description = "OK", content_type = "application/json"),
        (status = 401, description = "Unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "Forbidden", body = super::error::ErrorBody),
    ),
    security(("apiKey" = ["admin"]), ("apiKey" = ["ops"]))
)]
pub async fn debug_actors(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // The operators' scope sees the whole node; an organization's admin key only its own part.
    let grant = match state.keys.authorize(&req, Scope::Ops) {
        Ok(grant) => grant,
        Err(_) => state.keys.authorize(&req, Scope::Admin)?,
    };
    let organization_id_opt = (!grant.has_scope(Scope::Ops)).then(|| grant.organization_id.clone());
    let depth = state.registry.depth();
    let mut tree = state.registry.send(DebugTree { organization_id_opt }).await?;
    tree.mailbox_depth = depth.saturating_sub(1);
    Ok(HttpResponse::Ok().json(tree))
}
