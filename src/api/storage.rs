//! Provider Controller and Composition Controller.

use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::messages::{ListConversation, VerifyStorage};

use super::dto::*;
use super::error::{ApiError, ErrorBody};
use super::validate::check_id;
use super::AppState;
use crate::config::Scope;

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/storageproviders/{applicationId}/verify",
    tag = "Provider Controller",
    operation_id = "verifyStorageProvider",
    summary = "Verify the validity of a given storage provider profile.",
    description = "Runs real checks against the application's store: the bucket (container, directory) exists, an object can be written, read back with the same content, overwritten, and deleted. Each check reports `passed` and a message; a check whose precondition failed says it was not run. `writeThroughputMibPerSec` is this project's addition.",
    params(("applicationId" = String, Path, description = "applicationId")),
    responses(
        (status = 200, description = "OK", body = StorageVerificationStatusMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found: unknown applicationId", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let application_id = path.into_inner();
    check_id("applicationId", &application_id, state.settings.limits.max_id_len)?;
    if state
        .settings
        .application(&grant.organization_id, &application_id)
        .is_some()
        && !grant.may_use_application(&application_id)
    {
        return Err(ApiError::Forbidden(format!(
            "this API key may not use applicationId {application_id}"
        )));
    }
    let report = state
        .registry
        .send(VerifyStorage {
            organization_id: grant.organization_id,
            application_id,
        })
        .await??;
    Ok(HttpResponse::Ok().json(StorageVerificationStatusMessage::from(&report)))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/compositions/{conversationId}",
    tag = "Composition Controller",
    operation_id = "getComposition",
    summary = "Get recording information for a given conversationId.",
    description = "Composition is not available in this release: the answer is 404 for every conversation (after authentication).",
    params(("conversationId" = String, Path, description = "conversationId")),
    responses(
        (status = 200, description = "OK", body = RecordingDataMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn composition(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let conversation_id = path.into_inner();
    check_id("conversationId", &conversation_id, state.settings.limits.max_id_len)?;
    // Distinguish nothing: an unknown conversation and a known one without a composition read
    // the same, so the answer leaks nothing across organizations.
    let _ = state
        .registry
        .send(ListConversation {
            organization_id: grant.organization_id,
            conversation_id: conversation_id.clone(),
        })
        .await?;
    Err(ApiError::NotFound(format!(
        "no composition for conversation {conversation_id}"
    )))
}
