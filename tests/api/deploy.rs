//! `deploy/kubernetes/`, as a rolling deploy needs it: every manifest valid against Kubernetes'
//! schemas (`kubernetes-validate --strict`, from PyPI, which `scripts/test-services.sh`
//! installs), the pieces wired to each other (Services, Secret, ConfigMap, volumes), readiness on
//! `/ready`, a grace period that covers the drain, and the ConfigMap's `config.toml` accepted by
//! the recorder itself (`--check-config`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The Kubernetes version the manifests are checked against (the oldest still supported).
const KUBERNETES_VERSION: &str = "1.30.0";

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    [
        "configmap.yaml",
        "secret.yaml",
        "services.yaml",
        "pdb.yaml",
        "statefulset.yaml",
    ]
    .iter()
    .map(|name| dir.join(name))
    .collect()
}

fn tool(name: &str) -> String {
    testkit::services_env()
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing from the services env; run scripts/test-services.sh start"))
}

/// Every document of every manifest, as JSON.
fn documents() -> Vec<Value> {
    let out = Command::new(tool("RTC_K8S_PYTHON"))
        .arg("-c")
        .arg("import sys, yaml, json; print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))")
        .args(manifests())
        .output()
        .expect("the validator's Python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON documents")
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}: {found:#?}");
    found[0]
}

fn config_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)?
            .trim()
            .strip_prefix('=')
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn the_kubernetes_manifests_are_valid_and_hold_what_a_rolling_deploy_needs() {
    let out = Command::new(tool("RTC_KUBERNETES_VALIDATE_BIN"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(manifests())
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let docs = documents();
    let sts = one(&docs, "StatefulSet");
    let config_map = one(&docs, "ConfigMap");
    let secret = one(&docs, "Secret");
    let pdb = one(&docs, "PodDisruptionBudget");
    let services: Vec<_> = docs.iter().filter(|d| d["kind"] == "Service").collect();
    let headless = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert!(
        services.iter().any(|s| s["spec"]["clusterIP"] != "None"),
        "an API Service"
    );
    assert_eq!(sts["spec"]["serviceName"], headless["metadata"]["name"]);
    assert!(
        pdb["spec"]["maxUnavailable"].as_u64().is_some_and(|n| n >= 1),
        "{pdb:#}"
    );

    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].is_string(),
        "a volume per pod"
    );
    let data = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].clone();
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == data),
        "the pod's volume is mounted"
    );
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], secret["metadata"]["name"]);
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == config_map["metadata"]["name"]),
        "the ConfigMap is mounted"
    );
    let env = container["env"].as_array().unwrap();
    let recorder_id = env
        .iter()
        .find(|e| e["name"] == "RECORDER_RECORDER_ID")
        .expect("a stable recorderId");
    assert_eq!(recorder_id["value"], "$(POD_NAME)");

    // The grace period covers the drain plus the final flush.
    let config = config_map["data"]["config.toml"].as_str().expect("a config.toml");
    let drain: u64 = config_value(config, "drain_timeout_secs")
        .and_then(|v| v.parse().ok())
        .expect("ops.drain_timeout_secs set");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("a grace period");
    assert!(grace >= drain + 15, "grace {grace} s for a {drain} s drain");
    assert_eq!(
        config_value(config, "enabled").as_deref(),
        Some("true"),
        "cluster mode on"
    );

    // The recorder takes the ConfigMap's configuration, with the Secret's variables.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config).unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_rtc-recorder"));
    check
        .arg("--check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RECORDER_CONFIG", &file);
    for (name, value) in secret["stringData"].as_object().unwrap() {
        check.env(name, value.as_str().unwrap());
    }
    // The container's own variables, as the kubelet gives them to pod 0 on host 10.0.0.5.
    let mut vars: Vec<(String, String)> = Vec::new();
    for var in env {
        let name = var["name"].as_str().unwrap().to_string();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "rtc-recorder-0".to_string(),
            Some("status.hostIP") => "10.0.0.5".to_string(),
            Some(other) => panic!("no sample value for fieldRef {other}"),
            None => {
                let mut value = var["value"].as_str().unwrap_or_default().to_string();
                for (earlier, v) in &vars {
                    value = value.replace(&format!("$({earlier})"), v);
                }
                value
            }
        };
        vars.push((name, value));
    }
    check.envs(vars.iter().filter(|(n, _)| n != "RECORDER_CONFIG").cloned());
    let out = check.output().expect("the recorder runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("cluster mode on"),
        "--check-config: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
