//! Recorder Controller: start, stop, state and listings of recorder instances; chat transcripts.

use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::domain::ChatEntry;
use recorder_actors::domain::{ConversationId, InstanceId, RecorderId};
use recorder_actors::messages::{
    AddTranscript, EraseRecordings, GetActive, SetPaused, StartRecording as StartMessage, StopRecording, TrackUrls,
};

use super::auth::Grant;
use super::body::read_body;
use super::dto::*;
use super::error::{ApiError, ErrorBody};
use super::lookup::{instance_ref, visible_conversation, visible_instance, InstancePath};
use super::requests::{self, check_id};
use super::signed::track_attachment_path;
use super::AppState;
use crate::config::Scope;

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/start",
    tag = "Recorder Controller",
    operation_id = "startRecording",
    summary = "Start a new recorder instance.",
    description = "Creates a recorder instance in state INITIALISED. An applicationId that is not configured for the key's organization is 404; a key not allowed to use the application is 403; a conversation that already has a live instance is 409.",
    request_body = requests::StartRecording,
    responses(
        (status = 200, description = "OK", body = RecordingDataEvent),
        (status = 400, description = "Bad Request: a field is missing or invalid", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found: unknown applicationId", body = ErrorBody),
        (status = 409, description = "Conflict: the conversation already has a live instance", body = ErrorBody),
        (status = 413, description = "Payload Too Large", body = ErrorBody),
        (status = 503, description = "Service Unavailable: this node is at its capacity or draining before it stops (code AT_CAPACITY, `field` the limit or `draining`); Retry-After says when to try again", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn start(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let body = read_body(&req, payload, &state.settings.limits).await?;
    let request: requests::StartRecording = requests::parse(&body)?;
    request.check(&state.settings.limits)?;
    let msg = StartMessage {
        organization_id: grant.organization_id.clone(),
        application_id: request.application_id,
        conversation_id: request.conversation_id,
        conference_id: request.conference_id,
        audio: request.audio.unwrap_or(true),
        video: request.video.unwrap_or(true),
    };
    if state
        .settings
        .application(&grant.organization_id, &msg.application_id)
        .is_some()
        && !grant.may_use_application(&msg.application_id)
    {
        return Err(ApiError::Forbidden(format!(
            "this API key may not use applicationId {}",
            msg.application_id
        )));
    }
    // In a cluster, the conversation and its conference are leased cluster-wide first: a live
    // instance on any node makes this a 409.
    let leases = match &state.cluster {
        Some(cluster) => Some(
            cluster
                .take_start_leases(grant.organization_id.as_str(), &msg.conversation_id, &msg.conference_id)
                .await
                .map_err(ApiError::from)?,
        ),
        None => None,
    };
    let started = match state.registry.send(msg).await {
        Ok(Ok(record)) => Ok(record),
        Ok(Err(err)) => Err(ApiError::from(err)),
        Err(err) => Err(ApiError::from(err)),
    };
    match (started, leases) {
        (Ok(record), Some(leases)) => {
            leases.bind(&record.instance_id).await;
            Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record)))
        }
        (Ok(record), None) => Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record))),
        (Err(err), leases) => {
            if let Some(mut leases) = leases {
                leases.release().await;
            }
            Err(err)
        }
    }
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/stop",
    tag = "Recorder Controller",
    operation_id = "stopRecording",
    summary = "Stop an existing recorder instance.",
    description = "Moves a live instance to STOPPED and queues its artefacts for upload. Stopping an instance that is no longer live is idempotent and returns its state.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 200, description = "OK", body = RecordingDataEvent),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn stop(req: HttpRequest, state: web::Data<AppState>, path: InstancePath) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    visible_instance(&state, &grant, at.clone()).await?;
    let record = state.registry.send(StopRecording(at)).await??;
    if let Some(cluster) = &state.cluster {
        // At once, so a new start of the conversation right after this answer, through any
        // node, finds them free (the catalogue's feed releases them too, a moment later).
        if let Err(err) = cluster.release_ended(&record).await {
            tracing::debug!(error = %err, "cluster: the stop's leases are released later");
        }
    }
    Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record)))
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/pause",
    tag = "Recorder Controller",
    operation_id = "pauseRecording",
    summary = "Addition: pause recording (e.g. while a card payment is taken).",
    description = "From now until the resume nothing of the instance's media is recorded: frames whose time falls inside the pause are dropped at ingest, the track files keep the span as a gap in time and the composition shows a \"recording paused\" slate over it. Chat lines and co-browse events follow the application's `pause_capture` (`keep`, the default, or `drop`). Idempotent (pausing a paused instance changes nothing), durable before answered (a pause survives a crash), 409 for an instance that is no longer live.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 200, description = "OK: the instance, `paused` true, with its `pauseIntervals`", body = RecordingDataEvent),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 409, description = "Conflict: the instance is no longer live (or is stopping)", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn pause(req: HttpRequest, state: web::Data<AppState>, path: InstancePath) -> Result<HttpResponse, ApiError> {
    set_paused(req, state, path, true).await
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/resume",
    tag = "Recorder Controller",
    operation_id = "resumeRecording",
    summary = "Addition: resume a paused recording.",
    description = "Media whose time is after the resume is recorded again (video asks the publisher for a keyframe). Idempotent, durable before answered, 409 for an instance that is no longer live.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 200, description = "OK: the instance, `paused` false", body = RecordingDataEvent),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 409, description = "Conflict: the instance is no longer live (or is stopping)", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn resume(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
) -> Result<HttpResponse, ApiError> {
    set_paused(req, state, path, false).await
}

async fn set_paused(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    visible_instance(&state, &grant, at.clone()).await?;
    let record = state.registry.send(SetPaused { instance: at, paused }).await??;
    Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record)))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/state",
    tag = "Recorder Controller",
    operation_id = "getRecorderState",
    summary = "Get status of an existing recorder.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 200, description = "OK", body = RecordingDataEvent),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn instance_state(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    let record = visible_instance(&state, &grant, at).await?;
    Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record)))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}",
    tag = "Recorder Controller",
    operation_id = "getRecorder",
    summary = "Get information of an existing recorder.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 200, description = "OK", body = RecordingDataMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn instance(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    let record = visible_instance(&state, &grant, at.clone()).await?;
    let mut message = RecordingDataMessage::from(&record);
    let any_uploaded = record
        .streams
        .iter()
        .flat_map(|s| &s.tracks)
        .any(|t| t.object.uploaded.is_some());
    // Another node's instance read from the catalogue (its owner down): shown without track
    // URLs, which are made from the owner's own store.
    let ours = state.cluster.as_ref().is_none_or(|c| record.recorder_id == c.node_id);
    if any_uploaded && ours {
        // Each stored track gets the provider's signed URL, valid for signing.url_ttl_secs.
        let ttl = std::time::Duration::from_secs(state.settings.url_ttl_secs);
        for track_url in state.queries.track_urls(TrackUrls { instance: at, ttl }).await? {
            let track = message
                .streams
                .iter_mut()
                .filter(|s| s.id == track_url.stream_id)
                .flat_map(|s| s.tracks.iter_mut())
                .find(|t| t.id == track_url.track_id);
            if let Some(track) = track {
                track.url = Some(track_url.url);
            }
        }
        // Profiles without provider URLs (local, SFTP): the recorder serves the track itself
        // behind its own signed URL.
        let now = chrono::Utc::now();
        for stream in &record.streams {
            for track in stream.tracks.iter().filter(|t| t.object.uploaded.is_some()) {
                let shown = message
                    .streams
                    .iter_mut()
                    .filter(|s| s.id == stream.id)
                    .flat_map(|s| s.tracks.iter_mut())
                    .find(|t| t.id == track.id && t.url.is_none());
                if let Some(shown) = shown {
                    let path = track_attachment_path(
                        &record.conversation_id,
                        &record.recorder_id,
                        &record.instance_id,
                        &stream.id,
                        &track.id,
                    );
                    let signed = state.signer.sign("GET", &path, now);
                    shown.url = Some(format!("{}{path}?{}", state.public_url, signed.to_query()));
                }
            }
        }
    }
    Ok(HttpResponse::Ok().json(message))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/storage/info",
    tag = "Recorder Controller",
    operation_id = "getStorageInfo",
    summary = "Get basic storage profile information of an existing recorder.",
    description = "`provider` is left out for the local-filesystem profile, which the spec's enum does not name; `url` never holds credentials.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 200, description = "OK", body = StorageProfileDataMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn storage_info(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    let record = visible_instance(&state, &grant, at).await?;
    Ok(HttpResponse::Ok().json(StorageProfileDataMessage::from(&record)))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/active",
    tag = "Recorder Controller",
    operation_id = "getActiveRecording",
    summary = "Get an active recording by conversationId",
    description = "The conversation's live instance (INITIALISED, ACTIVE or PENDING_RECOVERY); 404 when it has none.",
    params(("conversationId" = String, Path, description = "conversationId")),
    responses(
        (status = 200, description = "OK", body = RecordingDataEvent),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn active(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    check_id("conversationId", &path, state.settings.limits.max_id_len)?;
    let conversation_id = path.into_inner();
    let msg = GetActive {
        organization_id: grant.organization_id.clone(),
        conversation_id: conversation_id.clone(),
    };
    let record = match (state.registry.send(msg).await?, &state.cluster) {
        // Live on another node: the catalogue knows.
        (Err(err), Some(cluster)) => cluster
            .catalogue_conversation(grant.organization_id.as_str(), &conversation_id)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|r| r.recorder_id != cluster.node_id)
            .map(|r| cluster.as_seen(r))
            .rfind(|r| r.state.is_live())
            .ok_or_else(|| ApiError::from(err))?,
        (found, _) => found?,
    };
    if !grant.may_use_application(&record.application_id) {
        return Err(ApiError::NotFound(format!(
            "conversation {conversation_id} has no live recorder instance"
        )));
    }
    Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record)))
}

/// Addition: the instances an erasure was asked for.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureAccepted {
    pub conversation_id: String,
    /// Each instance, with its `erasure`.
    pub instances: Vec<RecordingDataEvent>,
}

#[utoipa::path(
    delete,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}",
    tag = "Recorder Controller",
    operation_id = "eraseConversationRecordings",
    summary = "Addition: erase every recording of a conversation (GDPR).",
    description = "Deletes every artefact of each ended instance the key may see — track files, transcript, co-browse sessions, `recording.json`, the conversation's composition — from the storage profile and from this node, and its captured chat and co-browse entries. Durable before answered and run as a job (resumed after a crash); `erasure.erased` is set when done, and an `erasure.done` event goes to the webhook. Each instance stays listed as a tombstone: ids, states and times with `erasure`, never media. 409 while an instance of the conversation is live.",
    params(("conversationId" = String, Path, description = "conversationId")),
    responses(
        (status = 202, description = "Accepted: the instances, `erasure.requested` set", body = ErasureAccepted),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 409, description = "Conflict: an instance of the conversation is live", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn erase_conversation(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let conversation_id = requests::path_id("conversationId", &path, state.settings.limits.max_id_len)?;
    erase(&state, &grant, conversation_id, None).await
}

#[utoipa::path(
    delete,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}",
    tag = "Recorder Controller",
    operation_id = "eraseRecording",
    summary = "Addition: erase one recording (GDPR).",
    description = "As the conversation's erasure, for one ended instance (the conversation's composition, which holds its media, goes too). 409 while the instance is live.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    responses(
        (status = 202, description = "Accepted: the instance, `erasure.requested` set", body = ErasureAccepted),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 409, description = "Conflict: the instance is live", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn erase_instance(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    visible_instance(&state, &grant, at.clone()).await?;
    erase(
        &state,
        &grant,
        at.conversation_id,
        Some((at.recorder_id, at.instance_id)),
    )
    .await
}

async fn erase(
    state: &AppState,
    grant: &Grant,
    conversation_id: ConversationId,
    instance_opt: Option<(RecorderId, InstanceId)>,
) -> Result<HttpResponse, ApiError> {
    let records = state
        .registry
        .send(EraseRecordings {
            organization_id: grant.organization_id.clone(),
            conversation_id: conversation_id.clone(),
            instance_opt,
            applications: grant.applications().clone(),
        })
        .await??;
    Ok(HttpResponse::Accepted().json(ErasureAccepted {
        conversation_id: conversation_id.into_string(),
        instances: records.iter().map(RecordingDataEvent::from).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}",
    tag = "Recorder Controller",
    operation_id = "getConversationRecordings",
    summary = "Get a list of recordings for a given conversationId.",
    description = "Every instance of the conversation, oldest first. `duration` is the total recorded time as an ISO 8601 duration (e.g. `PT75.250S`); `chatTranscript` is the newest transcript written.",
    params(("conversationId" = String, Path, description = "conversationId")),
    responses(
        (status = 200, description = "OK", body = ConversationMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn conversation(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    check_id("conversationId", &path, state.settings.limits.max_id_len)?;
    let instances = visible_conversation(&state, &grant, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(ConversationMessage::new(&instances, chrono::Utc::now())))
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/chat/transcript/add",
    tag = "Recorder Controller",
    operation_id = "addChatTranscript",
    summary = "Upload a conversation chat transcript to an existing recorder instance.",
    description = "Appends the entries in order. Accepted while the instance is live and after it stopped; the transcript is written to storage as `chat/transcript.json` on stop and again on every later add.",
    request_body = requests::AddChatTranscriptCmd,
    responses(
        (status = 200, description = "OK", body = RecordingDataEvent),
        (status = 400, description = "Bad Request: a field is missing or invalid", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 413, description = "Payload Too Large", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn add_transcript(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let body = read_body(&req, payload, &state.settings.limits).await?;
    let request: requests::AddChatTranscriptCmd = requests::parse(&body)?;
    request.check(&state.settings.limits)?;
    let path = (
        request.conversation_id.into_string(),
        request.recorder_id.into_string(),
        request.instance_id.into_string(),
    );
    let entries = request
        .chat_transcript_list
        .into_iter()
        .map(|entry| ChatEntry {
            time_stamp: entry.time_stamp,
            transcript: entry.transcript,
            user_display_name: entry.user_display_name,
            user_id: entry.user_id.into_string(),
        })
        .collect();
    let instance = instance_ref(&state, &grant.organization_id, &path)?;
    visible_instance(&state, &grant, instance.clone()).await?;
    let record = state.registry.send(AddTranscript { instance, entries }).await??;
    Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&record)))
}
