//! `GET {base}/openapi.json`: an OpenAPI 3 document describing the spec's operations and schemas,
//! and nothing the service does not route.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;
use crate::spec;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The path prefix the document's paths are relative to (from `servers[0].url`), if any.
fn server_prefix(doc: &Value) -> String {
    let Some(url) = doc["servers"].get(0).and_then(|s| s["url"].as_str()) else {
        return String::new();
    };
    let path = match url::Url::parse(url) {
        Ok(u) => u.path().to_string(),
        Err(_) => url.to_string(),
    };
    path.trim_end_matches('/').to_string()
}

/// Every (METHOD, full path) the document lists.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let prefix = server_prefix(doc);
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        let full = if path.starts_with(BASE_PATH) {
            path.clone()
        } else {
            format!("{prefix}{path}")
        };
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), full.clone()));
            }
        }
    }
    ops
}

fn fetch(app: &TestApp) -> Value {
    let resp = app.get("/openapi.json", NO_KEY);
    resp.assert_status(200);
    assert!(
        resp.header("content-type").is_some_and(|c| c.contains("json")),
        "{}",
        resp.describe()
    );
    resp.json()
}

#[test]
fn the_document_is_openapi_3_and_needs_no_key() {
    let app = TestApp::spawn();
    let doc = fetch(&app);
    let version = doc["openapi"]
        .as_str()
        .unwrap_or_else(|| panic!("no `openapi` version: {doc}"));
    assert!(version.starts_with("3."), "openapi = {version}");
    assert!(
        doc["info"]["title"].is_string() && doc["info"]["version"].is_string(),
        "{}",
        doc["info"]
    );
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
}

#[test]
fn the_document_lists_every_spec_operation_exactly() {
    let app = TestApp::spawn();
    let doc = fetch(&app);
    let listed = operations(&doc);
    let missing: Vec<_> = spec::OPERATIONS
        .iter()
        .filter(|(m, p)| !listed.contains(&(m.to_string(), p.to_string())))
        .collect();
    assert!(
        missing.is_empty(),
        "operations of the spec missing from openapi.json: {missing:#?}\nlisted: {listed:#?}"
    );
}

#[test]
fn the_document_declares_the_spec_schemas_with_their_properties() {
    let app = TestApp::spawn();
    let doc = fetch(&app);
    let schemas = doc["components"]["schemas"]
        .as_object()
        .unwrap_or_else(|| panic!("no components.schemas"));
    let mut problems = Vec::new();
    for name in spec::schema_names() {
        let Some(schema) = schemas.get(name) else {
            problems.push(format!("schema {name} is missing"));
            continue;
        };
        let expected: BTreeSet<&str> = spec::schemas()[name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let documented: BTreeSet<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        let missing: Vec<_> = expected.difference(&documented).collect();
        if !missing.is_empty() {
            problems.push(format!("{name} lacks properties {missing:?}"));
        }
        let extra: Vec<_> = documented
            .difference(&expected)
            .filter(|p| !spec::allowed_extra(name).contains(*p))
            .collect();
        if !extra.is_empty() {
            problems.push(format!("{name} has properties the spec does not: {extra:?}"));
        }
    }
    for name in [
        "RecordingDataEvent",
        "RecordingDataMessage",
        "ConversationMessage",
        "StartRecording",
        "AddChatTranscriptCmd",
        "AddCobrowseEventCmd",
        "URLResourceMessage",
        "StorageVerificationStatusMessage",
        "StorageProfileDataMessage",
        "ConversationCobrowseSessionDataMessage",
        "Error",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert!(
        problems.is_empty(),
        "schemas differ from the spec:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_documented_operation_is_routed() {
    let app = TestApp::spawn();
    let doc = fetch(&app);
    let listed = operations(&doc);
    assert!(listed.len() >= 14, "{listed:#?}");
    for (method, path) in &listed {
        let mut concrete = String::new();
        let mut in_param = false;
        for ch in path.chars() {
            match ch {
                '{' => in_param = true,
                '}' => {
                    in_param = false;
                    concrete.push_str("probe");
                }
                _ if !in_param => concrete.push(ch),
                _ => {}
            }
        }
        let body = (method == "POST").then_some(&b"{}"[..]);
        let headers = [
            ("Authorization", KEY_ADMIN),
            ("Content-Type", "application/json"),
            ("referer", "https://agent.example.com/"),
        ];
        let resp = app.request(method, &app.url(&concrete), &headers, body);
        assert_ne!(
            resp.status,
            405,
            "{method} {path} is documented but not routed for that method: {}",
            resp.describe()
        );
        assert!(resp.status < 500, "{method} {path}: {}", resp.describe());
        if resp.status == 404 {
            let body = resp.assert_error(404);
            assert_ne!(
                body["code"],
                "ROUTE_NOT_FOUND",
                "{method} {path} is documented but not routed: {}",
                resp.describe()
            );
        }
    }
}
