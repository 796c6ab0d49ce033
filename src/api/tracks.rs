//! Recorder-served, HMAC-signed downloads of track files, for storage profiles whose provider has
//! no signed URLs of its own (local, SFTP). Cloud profiles' tracks carry the provider's URL.

use actix_files::NamedFile;
use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::domain::OrganizationId;
use recorder_actors::messages::{ArtefactSource, ResolveCompositionFile, ResolveTrackFile, TrackFile};

use super::dto::Resource;
use super::error::{ApiError, ErrorBody};
use super::requests::{check_id, path_id};
use super::signed::{
    composition_attachment_path, track_attachment_path, unlinked_file, verify_signature, SignatureQuery,
};
use super::AppState;

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/attachment/track/{conversationId}/{recorderId}/{instanceId}/{streamId}/{trackId}",
    tag = "Recorder Controller",
    operation_id = "getTrackAsAttachment",
    summary = "getTrackAsAttachment",
    description = "Downloads an uploaded track file through the signed `url` that the instance's track carries when its storage profile has no provider-signed URLs (local filesystem, SFTP; for SFTP the recorder fetches the object from the server). The signature is the authority: no API key is needed. Supports `Range` (206 with `Content-Range`; 416 for unsatisfiable ranges). A tampered, expired or foreign signature is 403; a track that is not uploaded (or not in that instance) is 404.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
        ("streamId" = String, Path, description = "streamId"),
        ("trackId" = String, Path, description = "trackId"),
        ("Date" = String, Query, description = "Date"),
        ("Expires" = String, Query, description = "Expires"),
        ("Signature" = String, Query, description = "Signature"),
        ("Range" = Option<String>, Header, description = "Range"),
    ),
    responses(
        (status = 200, description = "OK", body = Resource, content_type = "application/octet-stream"),
        (status = 206, description = "Partial Content"),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 416, description = "Range Not Satisfiable", body = ErrorBody),
    ),
    security(())
)]
pub async fn attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String, String, String)>,
    query: web::Query<SignatureQuery>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, recorder_id, instance_id, stream_id, track_id) = path.into_inner();
    let max = state.settings.limits.max_id_len;
    for (field, value) in [
        ("conversationId", &conversation_id),
        ("recorderId", &recorder_id),
        ("instanceId", &instance_id),
        ("streamId", &stream_id),
        ("trackId", &track_id),
    ] {
        check_id(field, value, max)?;
    }
    let signed_path = track_attachment_path(&conversation_id, &recorder_id, &instance_id, &stream_id, &track_id);
    verify_signature(&state, &signed_path, &query)?;
    let track = state
        .queries
        .track_file(ResolveTrackFile {
            conversation_id,
            recorder_id,
            instance_id,
            stream_id,
            track_id,
        })
        .await?;
    serve_file(&req, track).await
}

/// Serves a resolved file as an attachment; `Range` is handled by `NamedFile`.
pub(super) async fn serve_file(req: &HttpRequest, track: TrackFile) -> Result<HttpResponse, ApiError> {
    let named = match track.source {
        ArtefactSource::File(path) => NamedFile::open_async(&path).await,
        // The open file stays readable after its name is gone; nothing is left behind.
        ArtefactSource::Downloaded(path) => {
            let named = NamedFile::open_async(&path).await;
            let _ = tokio::fs::remove_file(&path).await;
            named
        }
        // Fetched from the store (SFTP): served from an unlinked temp file so that Range works
        // exactly as for local files.
        ArtefactSource::Bytes(bytes) => web::block(move || unlinked_file(&bytes))
            .await
            .map_err(|e| ApiError::Unavailable(format!("serving the file: {e}")))?,
    };
    let extension = track.file_name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let named = named
        .map_err(|_| ApiError::NotFound(format!("{} is not available", track.file_name)))?
        .set_content_type(actix_files::file_extension_to_mime(extension))
        .set_content_disposition(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(track.file_name)],
        });
    Ok(named.into_response(req))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/attachment/composition/{organizationId}/{applicationId}/{conversationId}",
    tag = "Composition Controller",
    operation_id = "getCompositionAsAttachment",
    summary = "getCompositionAsAttachment",
    description = "Downloads an uploaded composition (`composition.mp4`) through the signed `url` that the composition's track carries when its storage profile has no provider-signed URLs (local filesystem, SFTP; for SFTP the recorder fetches the object from the server). The signature is the authority: no API key is needed. Supports `Range` (206 with `Content-Range`; 416 for unsatisfiable ranges). A tampered, expired or foreign signature is 403; a composition that is not uploaded is 404.",
    params(
        ("organizationId" = String, Path, description = "organizationId"),
        ("applicationId" = String, Path, description = "applicationId"),
        ("conversationId" = String, Path, description = "conversationId"),
        ("Date" = String, Query, description = "Date"),
        ("Expires" = String, Query, description = "Expires"),
        ("Signature" = String, Query, description = "Signature"),
        ("Range" = Option<String>, Header, description = "Range"),
    ),
    responses(
        (status = 200, description = "OK", body = Resource, content_type = "video/mp4"),
        (status = 206, description = "Partial Content"),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 416, description = "Range Not Satisfiable", body = ErrorBody),
    ),
    security(())
)]
pub async fn composition_attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    query: web::Query<SignatureQuery>,
) -> Result<HttpResponse, ApiError> {
    serve_composition(req, state, path.into_inner(), query.into_inner(), false).await
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/attachment/composition/{organizationId}/{applicationId}/{conversationId}/stereo",
    tag = "Composition Controller",
    operation_id = "getStereoAudioAsAttachment",
    summary = "getStereoAudioAsAttachment",
    description = "Downloads the conversation's uploaded stereo audio (`stereo.opus` or `stereo.m4a`: agents on the left channel, customers on the right) through the signed `url` of the composition's `stereo` track, for storage profiles without provider-signed URLs. No API key; `Range` supported; 403 for a bad signature, 404 while there is none uploaded.",
    params(
        ("organizationId" = String, Path, description = "organizationId"),
        ("applicationId" = String, Path, description = "applicationId"),
        ("conversationId" = String, Path, description = "conversationId"),
        ("Date" = String, Query, description = "Date"),
        ("Expires" = String, Query, description = "Expires"),
        ("Signature" = String, Query, description = "Signature"),
        ("Range" = Option<String>, Header, description = "Range"),
    ),
    responses(
        (status = 200, description = "OK", body = Resource, content_type = "audio/ogg"),
        (status = 206, description = "Partial Content"),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 416, description = "Range Not Satisfiable", body = ErrorBody),
    ),
    security(())
)]
pub async fn stereo_attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    query: web::Query<SignatureQuery>,
) -> Result<HttpResponse, ApiError> {
    serve_composition(req, state, path.into_inner(), query.into_inner(), true).await
}

async fn serve_composition(
    req: HttpRequest,
    state: web::Data<AppState>,
    (organization_id, application_id, conversation_id): (String, String, String),
    query: SignatureQuery,
    stereo: bool,
) -> Result<HttpResponse, ApiError> {
    let max = state.settings.limits.max_id_len;
    let organization_id: OrganizationId = path_id("organizationId", &organization_id, max)?;
    check_id("applicationId", &application_id, max)?;
    check_id("conversationId", &conversation_id, max)?;
    let mut signed_path = composition_attachment_path(&organization_id, &application_id, &conversation_id);
    if stereo {
        signed_path.push_str("/stereo");
    }
    verify_signature(&state, &signed_path, &query)?;
    let file = state
        .queries
        .composition_file(ResolveCompositionFile {
            organization_id,
            application_id,
            conversation_id,
            stereo,
        })
        .await?;
    serve_file(&req, file).await
}
