//! The Recorder API v1.0 contract (`/work/shared/spec/auvious-recorder-api-v1.txt`) transcribed as
//! data, and a validator for response bodies.
//!
//! Types: "string", "boolean", "int32", "int64", "date-time" (RFC 3339 string), "url" (absolute
//! URL string), {"ref": Schema}, {"array": Schema}, {"enum": [values]}.
//!
//! Where the spec types a timestamp as a plain "string" (`started`, `stopped`, `occurred`,
//! `uploaded`, `validUntil`, ...) it is still a point in time; this suite requires RFC 3339 there
//! too (type "timestamp"), since that is what the service promises and what a client parses.

use std::sync::OnceLock;

use serde_json::{json, Value};

/// The 14 operations of the spec, as (method, full path).
pub const OPERATIONS: [(&str, &str); 14] = [
    ("GET", "/auvious.video/rtc-recorder/api/compositions/{conversationId}"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/attachment/cobrowse/{conversationId}/{recorderId}/{instanceId}/{sessionId}/{fileName}"),
    ("POST", "/auvious.video/rtc-recorder/api/recordings/chat/transcript/add"),
    ("POST", "/auvious.video/rtc-recorder/api/recordings/cobrowse/event"),
    ("POST", "/auvious.video/rtc-recorder/api/recordings/start"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/active"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/cobrowse"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/cobrowse/{sessionId}/url/attachment"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/state"),
    ("POST", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/stop"),
    ("GET", "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/storage/info"),
    ("POST", "/auvious.video/rtc-recorder/api/storageproviders/{applicationId}/verify"),
];

/// Properties a response may carry beyond the spec. Keep this short; every entry says why.
const ALLOWED_EXTRA: &[(&str, &[&str])] = &[
    // The service names the refused input of a 400/413 (`event.sequenceId`, ...).
    ("Error", &["field"]),
    // Write throughput of the verify probe, in MiB/s, present when the write check passed: a
    // deliberate extension of the verify report (documented in openapi.json).
    ("StorageVerificationStatusMessage", &["writeThroughputMibPerSec"]),
    // The conversation listing names each recording's instance and state, so a client can go
    // from the listing to the instance's own routes (the spec's listing has no id at all).
    // Backup storage (an addition): which store holds an artefact, when it is the backup one.
    ("UploadDataMessage", &["store"]),
    // ... and when a transcript, shown from its first line on, was last stored.
    ("ChatTranscriptData", &["store", "uploaded"]),
    // Video orientation (an addition): degrees to turn a track's picture upright, when its
    // publisher signalled one (RTP video orientation, what phones send).
    ("TrackDataMessage", &["rotation"]),
    // ... and, with erasure (GDPR, an addition), when an instance was erased.
    ("ConversationRecordingData", &["instanceId", "state", "erasure"]),
    // Pause/resume (an addition for contact centers: card payments): whether the instance is
    // paused, its pauses, and what chat or co-browse a pause discarded.
    // ... and why an instance stopped by itself (its maximum duration).
    (
        "RecordingDataEvent",
        &["paused", "pauseIntervals", "stopReason", "erasure"],
    ),
    (
        "RecordingDataMessage",
        &[
            "paused",
            "pauseIntervals",
            "numDiscardedWhilePaused",
            "stopReason",
            "erasure",
        ],
    ),
    // A publisher's declared role (agent / customer: its channel in the stereo audio).
    ("StreamDataMessage", &["role"]),
];

const STATES: [&str; 6] = [
    "ABORTED",
    "ACTIVE",
    "FAILED",
    "INITIALISED",
    "PENDING_RECOVERY",
    "STOPPED",
];
const PROVIDERS: [&str; 4] = ["AMAZON_S3", "AZURE_BLOB", "GOOGLE_CLOUD", "SFTP_STORAGE"];
const STREAM_TYPES: [&str; 6] = ["CAM", "HOLD", "MIC", "SCREEN", "UNKNOWN", "VIDEO"];
const TRACK_TYPES: [&str; 2] = ["AUDIO", "VIDEO"];
const STREAM_STATES: [&str; 3] = ["FAILED", "RECORDING", "STOPPED"];

/// Schema name -> {"properties": {name: type}, "required": [names]}.
pub fn schemas() -> &'static Value {
    static SCHEMAS: OnceLock<Value> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let r = |name: &str| json!({ "ref": name });
        let a = |name: &str| json!({ "array": name });
        let e = |values: &[&str]| json!({ "enum": values });
        json!({
            "AddChatTranscriptCmd": {"properties": {
                "chatTranscriptList": a("ChatTranscriptEntry"), "conversationId": "string",
                "instanceId": "string", "recorderId": "string"},
                "required": ["chatTranscriptList", "conversationId", "instanceId", "recorderId"]},
            "AddCobrowseEventCmd": {"properties": {
                "conversationId": "string", "event": r("CobrowseEvent"), "instanceId": "string", "recorderId": "string"},
                "required": ["conversationId", "event", "instanceId", "recorderId"]},
            "ChatTranscriptData": {"properties": {"created": "date-time", "id": "string", "location": "string"},
                "required": ["created", "id", "location"]},
            "ChatTranscriptEntry": {"properties": {
                "timeStamp": "date-time", "transcript": "string", "userDisplayName": "string", "userId": "string"},
                "required": ["timeStamp", "transcript", "userId"]},
            "CobrowseEvent": {"properties": {
                "payload": "string", "sequenceId": "int32", "sessionId": "string", "timestamp": "int64"},
                "required": ["payload", "sequenceId", "sessionId", "timestamp"]},
            "CobrowseSessionDataMessage": {"properties": {
                "cobrowseSessionId": "string", "recorderId": "string", "recorderInstanceId": "string", "uploaded": "timestamp"}},
            "ConversationCobrowseSessionDataMessage": {"properties": {
                "cobrowseSessions": a("CobrowseSessionDataMessage"), "conversationId": "string"}},
            "ConversationMessage": {"properties": {
                "applicationId": "string", "chatTranscript": r("ChatTranscriptData"), "conversationId": "string",
                "duration": "string", "provider": e(&PROVIDERS), "recordings": a("ConversationRecordingData")}},
            "ConversationRecordingData": {"properties": {
                "audio": "boolean", "conferenceId": "string", "recorderId": "string", "recovered": "timestamp",
                "started": "timestamp", "stopped": "timestamp", "streams": a("ConversationStreamData"), "video": "boolean"}},
            "ConversationStreamData": {"properties": {
                "started": "timestamp", "stopped": "timestamp", "tracks": a("ConversationTrackData"),
                "type": e(&STREAM_TYPES), "userId": "string"}},
            "ConversationTrackData": {"properties": {
                "started": "timestamp", "stopped": "timestamp", "storage": r("ConversationTrackStorageData"), "type": e(&TRACK_TYPES)}},
            "ConversationTrackStorageData": {"properties": {"location": "string", "size": "string", "uploaded": "timestamp"}},
            "Error": {"properties": {"code": "string", "message": "string", "occurred": "timestamp"}},
            "InputStream": {"properties": {}},
            "LocalFileDataMessage": {"properties": {
                "created": "timestamp", "deleted": "timestamp", "error": r("Error"), "location": "string"}},
            "RecordingDataEvent": {"properties": {
                "conversationId": "string", "error": r("Error"), "instanceId": "string", "recorderId": "string", "state": e(&STATES)}},
            "RecordingDataMessage": {"properties": {
                "audio": "boolean", "chatTranscript": r("ChatTranscriptData"), "conferenceId": "string",
                "conversationId": "string", "error": r("Error"), "instanceId": "string", "organizationId": "string",
                "recorderId": "string", "recovered": "timestamp", "started": "timestamp", "state": e(&STATES),
                "stopped": "timestamp", "storageProfile": r("StorageProfileDataMessage"), "streams": a("StreamDataMessage"),
                "video": "boolean"}},
            "Resource": {"properties": {
                "description": "string", "file": "string", "filename": "string", "inputStream": r("InputStream"),
                "open": "boolean", "readable": "boolean", "uri": "url", "url": "url"}},
            "StartRecording": {"properties": {
                "applicationId": "string", "audio": "boolean", "conferenceId": "string", "conversationId": "string", "video": "boolean"},
                "required": ["applicationId", "conferenceId", "conversationId"]},
            "StorageProfileDataMessage": {"properties": {"applicationId": "string", "provider": e(&PROVIDERS), "url": "string"}},
            "StorageTestResult": {"properties": {"message": "string", "passed": "boolean"}},
            "StorageVerificationStatusMessage": {"properties": {
                "bucketTestResult": r("StorageTestResult"), "deleteTestResult": r("StorageTestResult"),
                "modifyTestResult": r("StorageTestResult"), "readTestResult": r("StorageTestResult"),
                "writeTestResult": r("StorageTestResult")}},
            "StreamDataMessage": {"properties": {
                "id": "string", "state": e(&STREAM_STATES), "tracks": a("TrackDataMessage"), "type": e(&STREAM_TYPES), "userId": "string"}},
            "TrackDataMessage": {"properties": {
                "id": "string", "started": "timestamp", "stopped": "timestamp", "storage": r("TrackStorageDataMessage"),
                "type": e(&TRACK_TYPES), "url": "string"}},
            "TrackStorageDataMessage": {"properties": {
                "localStorage": r("LocalFileDataMessage"), "objectStorage": r("UploadDataMessage")}},
            "URLResourceMessage": {"properties": {"url": "url", "validUntil": "timestamp"}},
            "UploadDataMessage": {"properties": {
                "error": r("Error"), "location": "string", "size": "string", "uploaded": "timestamp"}},
        })
    })
}

/// Names of every schema of the spec.
pub fn schema_names() -> Vec<&'static str> {
    schemas().as_object().unwrap().keys().map(|k| k.as_str()).collect()
}

pub fn allowed_extra(schema: &str) -> &'static [&'static str] {
    ALLOWED_EXTRA
        .iter()
        .find(|(s, _)| *s == schema)
        .map(|(_, extra)| *extra)
        .unwrap_or(&[])
}

/// Every way `value` departs from schema `schema`, each with its JSON path.
pub fn validate(schema: &str, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check_schema(schema, value, "$", &mut errors);
    errors
}

fn check_schema(schema: &str, value: &Value, path: &str, errors: &mut Vec<String>) {
    let def = schemas()
        .get(schema)
        .unwrap_or_else(|| panic!("the spec has no schema {schema}"));
    let Some(obj) = value.as_object() else {
        errors.push(format!("{path}: expected a {schema} object, got {value}"));
        return;
    };
    let props = def["properties"].as_object().unwrap();
    for (name, v) in obj {
        let at = format!("{path}.{name}");
        match props.get(name) {
            Some(ty) => check_type(ty, v, &at, errors),
            None if allowed_extra(schema).contains(&name.as_str()) => {}
            None => errors.push(format!("{at}: property not declared by {schema} in the spec")),
        }
    }
    if let Some(required) = def.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(name) {
                errors.push(format!("{path}: {schema} requires {name}"));
            }
        }
    }
}

fn check_type(ty: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        errors.push(format!("{path}: null (absent properties must be omitted)"));
        return;
    }
    match ty {
        Value::String(t) => {
            let ok = match t.as_str() {
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "int32" => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                "int64" => value.is_i64(),
                "date-time" | "timestamp" => value
                    .as_str()
                    .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
                "url" => value.as_str().is_some_and(|s| url::Url::parse(s).is_ok()),
                other => panic!("unknown type {other} in the transcribed spec"),
            };
            if !ok {
                errors.push(format!("{path}: expected {t}, got {value}"));
            }
        }
        Value::Object(o) => {
            if let Some(name) = o.get("ref").and_then(Value::as_str) {
                check_schema(name, value, path, errors);
            } else if let Some(name) = o.get("array").and_then(Value::as_str) {
                match value.as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            check_schema(name, item, &format!("{path}[{i}]"), errors);
                        }
                    }
                    None => errors.push(format!("{path}: expected an array of {name}, got {value}")),
                }
            } else if let Some(values) = o.get("enum").and_then(Value::as_array) {
                if !values.contains(value) {
                    errors.push(format!(
                        "{path}: {value} is not one of {}",
                        Value::Array(values.clone())
                    ));
                }
            } else {
                panic!("bad type {ty} in the transcribed spec");
            }
        }
        other => panic!("bad type {other} in the transcribed spec"),
    }
}

/// Panics, listing every departure, unless `value` is a valid `schema`.
pub fn assert_valid(schema: &str, value: &Value) {
    let errors = validate(schema, value);
    assert!(
        errors.is_empty(),
        "response does not match the spec's {schema}:\n  {}\nbody: {value:#}",
        errors.join("\n  ")
    );
}

// The validator itself must be able to fail.
#[test]
fn validator_rejects_what_the_spec_does_not_allow() {
    let good = json!({"conversationId": "c", "instanceId": "i", "recorderId": "r", "state": "STOPPED",
        "error": {"code": "X", "message": "m", "occurred": "2024-01-01T00:00:00Z"}});
    assert!(
        validate("RecordingDataEvent", &good).is_empty(),
        "{:?}",
        validate("RecordingDataEvent", &good)
    );
    let cases = [
        json!({"state": "RUNNING"}),
        json!({"state": "STOPPED", "extra": 1}),
        json!({"conversationId": 5}),
        json!({"conversationId": null}),
        json!({"error": {"code": "X", "message": "m", "occurred": "yesterday"}}),
        json!([]),
    ];
    for bad in cases {
        assert!(!validate("RecordingDataEvent", &bad).is_empty(), "accepted {bad}");
    }
    assert!(!validate("RecordingDataMessage", &json!({"streams": [{"type": "FLOPPY"}]})).is_empty());
    assert!(!validate(
        "RecordingDataMessage",
        &json!({"storageProfile": {"provider": "LOCAL"}})
    )
    .is_empty());
    assert!(
        !validate("ChatTranscriptData", &json!({"id": "x", "location": "y"})).is_empty(),
        "created is required"
    );
    assert!(validate(
        "Error",
        &json!({"code": "c", "message": "m", "occurred": "2024-01-01T00:00:00Z", "field": "f"})
    )
    .is_empty());
    assert!(!validate("URLResourceMessage", &json!({"url": "not a url"})).is_empty());
    assert_eq!(OPERATIONS.len(), 14);
}
