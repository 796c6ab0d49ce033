//! The request bodies of the API: one serde struct per body, which both parses it (ids into
//! their types, every error a 400 naming the field as the client wrote it,
//! `chatTranscriptList[2].timeStamp`) and documents it in the OpenAPI document. What serde cannot
//! know (the configured limits) is checked by each struct's `check`.

use chrono::{DateTime, Utc};
use recorder_actors::domain::{
    ApplicationId, ConferenceId, ConversationId, IdError, InstanceId, ParticipantRole, RecorderId, SessionId, UserId,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::config::Limits;

/// Parses a request body as `T`; a failure names the field it happened at (`body` for the
/// body as a whole).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_field("body", "a JSON object is required"));
    }
    // serde reads a struct from an array too; a body is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::bad_field("body", "must be a JSON object"),
            Err(e) => ApiError::bad_field("body", format!("invalid JSON: {e}")),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde_json ends its messages with the position; the field is what the client needs.
        let text = inner.to_string();
        let reason = text.split(" at line ").next().unwrap_or(&text).to_string();
        let at = |field: String| if field == "." { "body".to_string() } else { field };
        match reason.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            Some(missing) => {
                let field = if path == "." {
                    missing.to_string()
                } else {
                    format!("{path}.{missing}")
                };
                ApiError::bad_field(&field, "is required")
            }
            None if inner.is_syntax() || inner.is_eof() => ApiError::bad_field("body", format!("invalid JSON: {text}")),
            None => ApiError::bad_field(&at(path), reason),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_field("body", format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Checks an id (a path or query parameter, or a field) against the configured length; the
/// error names `field`.
pub fn check_id(field: &str, id: &str, max_len: usize) -> Result<(), ApiError> {
    recorder_actors::domain::check_id(id, max_len).map_err(|e| id_error(field, e))
}

fn check_len(field: &str, id: &str, max_len: usize) -> Result<(), ApiError> {
    check_id(field, id, max_len)
}

pub fn id_error(field: &str, err: IdError) -> ApiError {
    ApiError::bad_field(field, err.to_string())
}

/// Parses a path or query id, naming the parameter when it is not one.
pub fn path_id<T>(field: &str, value: &str, max_len: usize) -> Result<T, ApiError>
where
    T: TryFrom<String, Error = IdError>,
{
    check_len(field, value, max_len)?;
    T::try_from(value.to_string()).map_err(|e| id_error(field, e))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartRecording {
    #[schema(value_type = String)]
    pub application_id: ApplicationId,
    /// Record audio tracks (default true).
    pub audio: Option<bool>,
    #[schema(value_type = String)]
    pub conference_id: ConferenceId,
    #[schema(value_type = String)]
    pub conversation_id: ConversationId,
    /// Record video tracks (default true).
    pub video: Option<bool>,
}

impl StartRecording {
    pub fn check(&self, limits: &Limits) -> Result<(), ApiError> {
        check_len("applicationId", &self.application_id, limits.max_id_len)?;
        check_len("conferenceId", &self.conference_id, limits.max_id_len)?;
        check_len("conversationId", &self.conversation_id, limits.max_id_len)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatTranscriptEntry {
    pub time_stamp: DateTime<Utc>,
    pub transcript: String,
    pub user_display_name: Option<String>,
    #[schema(value_type = String)]
    pub user_id: UserId,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddChatTranscriptCmd {
    pub chat_transcript_list: Vec<ChatTranscriptEntry>,
    #[schema(value_type = String)]
    pub conversation_id: ConversationId,
    #[schema(value_type = String)]
    pub instance_id: InstanceId,
    #[schema(value_type = String)]
    pub recorder_id: RecorderId,
}

impl AddChatTranscriptCmd {
    pub fn check(&self, limits: &Limits) -> Result<(), ApiError> {
        check_len("conversationId", &self.conversation_id, limits.max_id_len)?;
        check_len("recorderId", &self.recorder_id, limits.max_id_len)?;
        check_len("instanceId", &self.instance_id, limits.max_id_len)?;
        if self.chat_transcript_list.is_empty() {
            return Err(ApiError::bad_field("chatTranscriptList", "must not be empty"));
        }
        if self.chat_transcript_list.len() > limits.max_transcript_entries {
            return Err(ApiError::bad_field(
                "chatTranscriptList",
                format!("holds more than {} items", limits.max_transcript_entries),
            ));
        }
        for (i, entry) in self.chat_transcript_list.iter().enumerate() {
            let field = |name: &str| format!("chatTranscriptList[{i}].{name}");
            if entry.transcript.len() > limits.max_transcript_len {
                return Err(ApiError::bad_field(
                    &field("transcript"),
                    format!("is longer than {} bytes", limits.max_transcript_len),
                ));
            }
            if entry
                .user_display_name
                .as_ref()
                .is_some_and(|n| n.len() > limits.max_id_len)
            {
                return Err(ApiError::bad_field(
                    &field("userDisplayName"),
                    format!("is longer than {} bytes", limits.max_id_len),
                ));
            }
            check_len(&field("userId"), &entry.user_id, limits.max_id_len)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CobrowseEvent {
    pub payload: String,
    #[schema(format = Int32)]
    pub sequence_id: i32,
    #[schema(value_type = String)]
    pub session_id: SessionId,
    #[schema(format = Int64)]
    pub timestamp: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddCobrowseEventCmd {
    #[schema(value_type = String)]
    pub conversation_id: ConversationId,
    pub event: CobrowseEvent,
    #[schema(value_type = String)]
    pub instance_id: InstanceId,
    #[schema(value_type = String)]
    pub recorder_id: RecorderId,
}

impl AddCobrowseEventCmd {
    pub fn check(&self, limits: &Limits) -> Result<(), ApiError> {
        check_len("conversationId", &self.conversation_id, limits.max_id_len)?;
        check_len("recorderId", &self.recorder_id, limits.max_id_len)?;
        check_len("instanceId", &self.instance_id, limits.max_id_len)?;
        check_len("event.sessionId", &self.event.session_id, limits.max_id_len)?;
        if self.event.payload.len() > limits.max_cobrowse_payload_bytes {
            return Err(ApiError::PayloadTooLarge {
                field: "event.payload".into(),
                message: format!("is larger than {} bytes", limits.max_cobrowse_payload_bytes),
            });
        }
        Ok(())
    }
}

/// The optional body of `publish-token` (an addition to the spec).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishTokenRequest {
    /// Restrict the token to this publisher.
    #[schema(value_type = Option<String>)]
    pub user_id: Option<UserId>,
    /// Lifetime in seconds (default 3600, at most 86400).
    pub ttl_secs: Option<u64>,
    /// The publisher's role, `agent` or `customer`: its channel in the stereo audio. A publish
    /// with this token declaring another role is refused (403).
    #[schema(value_type = Option<String>, example = "agent")]
    pub role: Option<RoleParam>,
}

/// `agent` or `customer` (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleParam(pub ParticipantRole);

impl<'de> Deserialize<'de> for RoleParam {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ParticipantRole::parse(&text)
            .map(RoleParam)
            .ok_or_else(|| serde::de::Error::custom("must be agent or customer"))
    }
}

impl PublishTokenRequest {
    pub fn check(&self, limits: &Limits, max_ttl_secs: u64) -> Result<(), ApiError> {
        if let Some(user) = &self.user_id {
            check_len("userId", user, limits.max_id_len)?;
        }
        if self.ttl_secs.is_some_and(|t| !(1..=max_ttl_secs).contains(&t)) {
            return Err(ApiError::bad_field(
                "ttlSecs",
                format!("must be between 1 and {max_ttl_secs}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_failure_names_the_field_as_the_client_wrote_it() {
        let cases: Vec<(&str, &str)> = vec![
            (
                r#"{"conversationId":"c","recorderId":"r","instanceId":"i","chatTranscriptList":[{"timeStamp":"2024-01-01T10:00:00Z","transcript":"x","userId":"u"},{"transcript":"x","userId":"u"}]}"#,
                "chatTranscriptList[1].timeStamp",
            ),
            (
                r#"{"conversationId":"c","recorderId":"r","instanceId":"i","chatTranscriptList":[{"timeStamp":"yesterday","transcript":"x","userId":"u"}]}"#,
                "chatTranscriptList[0].timeStamp",
            ),
            (
                r#"{"conversationId":"c","recorderId":"r","instanceId":"i","chatTranscriptList":[{"timeStamp":"2024-01-01T10:00:00Z","transcript":"x","userId":"a/b"}]}"#,
                "chatTranscriptList[0].userId",
            ),
            (
                r#"{"conversationId":"c","recorderId":"r","instanceId":"i","chatTranscriptList":[3]}"#,
                "chatTranscriptList[0]",
            ),
            (
                r#"{"recorderId":"r","instanceId":"i","chatTranscriptList":[]}"#,
                "conversationId",
            ),
            (
                r#"{"conversationId":12,"recorderId":"r","instanceId":"i","chatTranscriptList":[]}"#,
                "conversationId",
            ),
            (r#"[1]"#, "body"),
            (r#"{"a":"#, "body"),
            (
                r#"{"conversationId":"c","recorderId":"r","instanceId":"i","chatTranscriptList":[]} {}"#,
                "body",
            ),
            (r#""#, "body"),
        ];
        for (body, field) in cases {
            let err = parse::<AddChatTranscriptCmd>(body.as_bytes()).unwrap_err();
            assert_eq!(field_of(err), field, "{body}");
        }
    }

    #[test]
    fn numbers_are_checked_by_type_and_range() {
        let event = |seq: &str, ts: &str| {
            format!(
                r#"{{"conversationId":"c","recorderId":"r","instanceId":"i","event":{{"payload":"p","sequenceId":{seq},"sessionId":"s","timestamp":{ts}}}}}"#
            )
        };
        assert_eq!(
            field_of(parse::<AddCobrowseEventCmd>(event("2147483648", "1").as_bytes()).unwrap_err()),
            "event.sequenceId"
        );
        assert_eq!(
            field_of(parse::<AddCobrowseEventCmd>(event("1", "1.5").as_bytes()).unwrap_err()),
            "event.timestamp"
        );
        let ok = parse::<AddCobrowseEventCmd>(event("-5", "1700000000000").as_bytes()).unwrap();
        assert_eq!((ok.event.sequence_id, ok.event.session_id.as_str()), (-5, "s"));
    }

    #[test]
    fn null_is_absent_for_optional_fields_and_wrong_for_required_ones() {
        let start: StartRecording =
            parse(br#"{"applicationId":"a","conferenceId":"f","conversationId":"c","audio":null}"#).unwrap();
        assert_eq!((start.audio, start.video), (None, None));
        let err =
            parse::<StartRecording>(br#"{"applicationId":null,"conferenceId":"f","conversationId":"c"}"#).unwrap_err();
        assert_eq!(field_of(err), "applicationId");
        let err =
            parse::<StartRecording>(br#"{"applicationId":"a","conferenceId":"f","conversationId":"c","video":"yes"}"#)
                .unwrap_err();
        assert_eq!(field_of(err), "video");
    }
}
