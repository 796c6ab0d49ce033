//! Finding what a request names, as the key may see it: the instance of a path (ids checked) and a
//! conversation's instances, another application's exactly as missing ones.

use actix_web::web;
use recorder_actors::domain::{InstanceRecord, OrganizationId};
use recorder_actors::messages::{InstanceRef, ListConversation};

use super::auth::Grant;
use super::error::ApiError;
use super::requests::path_id;
use super::AppState;

/// Path of one instance: `{conversationId}/{recorderId}/{instanceId}`.
pub type InstancePath = web::Path<(String, String, String)>;

/// The instance a path names, its ids parsed (a 400 names the one that is not an id).
pub fn instance_ref(
    state: &AppState,
    organization_id: &OrganizationId,
    path: &(String, String, String),
) -> Result<InstanceRef, ApiError> {
    let max = state.settings.limits.max_id_len;
    Ok(InstanceRef {
        organization_id: organization_id.clone(),
        conversation_id: path_id("conversationId", &path.0, max)?,
        recorder_id: path_id("recorderId", &path.1, max)?,
        instance_id: path_id("instanceId", &path.2, max)?,
    })
}

/// The instance `at` if the key may see it. A key limited to some applications sees another
/// application's instance exactly as a missing one, like another organization's.
pub async fn visible_instance(state: &AppState, grant: &Grant, at: InstanceRef) -> Result<InstanceRecord, ApiError> {
    let record = match (state.queries.instance(&at), &state.cluster) {
        // Another node's instance (its owner down, or the request not forwarded): the
        // catalogue's copy, as the owner last wrote it.
        (Err(err), Some(cluster)) if at.recorder_id.as_str() != cluster.node_id => cluster
            .catalogue_record(
                at.organization_id.as_str(),
                at.conversation_id.as_str(),
                at.instance_id.as_str(),
            )
            .await
            .map_err(ApiError::from)?
            .filter(|r| r.recorder_id == at.recorder_id.as_str())
            .map(|r| cluster.as_seen(r))
            .ok_or_else(|| ApiError::from(err))?,
        (found, _) => found?,
    };
    if !grant.may_use_application(&record.application_id) {
        return Err(ApiError::NotFound(format!(
            "no recorder instance {} in conversation {}",
            at.instance_id, at.conversation_id
        )));
    }
    Ok(record)
}

/// The conversation's instances the key may see; `NotFound` when none.
pub async fn visible_conversation(
    state: &AppState,
    grant: &Grant,
    conversation_id: String,
) -> Result<Vec<InstanceRecord>, ApiError> {
    let msg = ListConversation {
        organization_id: grant.organization_id.clone(),
        conversation_id: conversation_id.clone(),
    };
    let mut instances = match (state.queries.conversation(&msg), &state.cluster) {
        // None here: the other nodes may have some.
        (Err(_), Some(_)) => Vec::new(),
        (found, _) => found?,
    };
    if let Some(cluster) = &state.cluster {
        // The other nodes' instances of the conversation, from the catalogue.
        let others = cluster
            .catalogue_conversation(msg.organization_id.as_str(), &msg.conversation_id)
            .await
            .map_err(ApiError::from)?;
        instances.extend(
            others
                .into_iter()
                .filter(|r| r.recorder_id != cluster.node_id)
                .map(|r| cluster.as_seen(r)),
        );
        instances.sort_by(|a, b| (a.created, &a.instance_id).cmp(&(b.created, &b.instance_id)));
    }
    let instances: Vec<_> = instances
        .into_iter()
        .filter(|r| grant.may_use_application(&r.application_id))
        .collect();
    if instances.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no recordings for conversation {conversation_id}"
        )));
    }
    Ok(instances)
}
