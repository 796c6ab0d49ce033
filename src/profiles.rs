//! Turns each application's checked storage configuration into a storage backend: reads the
//! credentials the configuration names (environment variables or files) and hands them to the
//! engine's backend constructors. Credentials exist only in memory from here on.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use recorder_actors::storage::{
    AzureBackend, AzureCredentials, AzureSettings, GcsBackend, GcsSettings, LocalBackend, S3Backend, S3Settings,
    SftpBackend, SftpSettings, StorageBackend,
};

use crate::config::{Application, StorageConfig};

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Builds the backend of one application. Errors name the configuration key at fault.
pub async fn build_backend(app: &Application, data_dir: &Path) -> anyhow::Result<Arc<dyn StorageBackend>> {
    let at = format!(
        "organizations.{}.applications.{}.storage",
        app.organization_id, app.application_id
    );
    let backend: Arc<dyn StorageBackend> = match &app.storage {
        StorageConfig::Local { path } => {
            let root = if path.is_empty() {
                data_dir.join("storage")
            } else {
                path.into()
            };
            Arc::new(LocalBackend::new(&root).with_context(|| format!("{at}.path: cannot create {}", root.display()))?)
        }
        StorageConfig::S3(c) => Arc::new(S3Backend::new(S3Settings {
            bucket: c.bucket.clone(),
            region: c.region.clone(),
            endpoint: non_empty(&c.endpoint),
            path_style: c.path_style,
            key_prefix: c.key_prefix.clone(),
            access_key_id: c.access_key_id.resolve(&format!("{at}.access_key_id"))?,
            secret_access_key: c.secret_access_key.resolve(&format!("{at}.secret_access_key"))?,
            session_token: match &c.session_token {
                Some(token) => Some(token.resolve(&format!("{at}.session_token"))?),
                None => None,
            },
        })),
        StorageConfig::Azure(c) => {
            let credentials = if let Some(key) = &c.access_key {
                AzureCredentials::SharedKey {
                    account: c.account.clone(),
                    key: key.resolve(&format!("{at}.access_key"))?,
                }
            } else if let Some(token) = &c.sas_token {
                AzureCredentials::Sas {
                    account: c.account.clone(),
                    token: token.resolve(&format!("{at}.sas_token"))?,
                }
            } else {
                let text = c
                    .connection_string
                    .as_ref()
                    .context("checked: one Azure credential is configured")?;
                AzureCredentials::ConnectionString(text.resolve(&format!("{at}.connection_string"))?)
            };
            Arc::new(
                AzureBackend::new(AzureSettings {
                    container: c.container.clone(),
                    endpoint: non_empty(&c.endpoint),
                    key_prefix: c.key_prefix.clone(),
                    credentials,
                })
                .with_context(|| format!("{at}: invalid Azure credentials"))?,
            )
        }
        StorageConfig::Gcs(c) => Arc::new(
            GcsBackend::new(GcsSettings {
                bucket: c.bucket.clone(),
                endpoint: non_empty(&c.endpoint),
                key_prefix: c.key_prefix.clone(),
                service_account: match &c.service_account {
                    Some(secret) => Some(secret.resolve(&format!("{at}.service_account"))?),
                    None => None,
                },
                anonymous: c.anonymous,
            })
            .await
            .with_context(|| format!("{at}: cannot set up Google Cloud Storage"))?,
        ),
        StorageConfig::Sftp(c) => Arc::new(
            SftpBackend::new(SftpSettings {
                host: c.host.clone(),
                port: c.port,
                username: c.username.clone(),
                private_key: c.private_key.resolve(&format!("{at}.private_key"))?,
                private_key_passphrase: match &c.private_key_passphrase {
                    Some(p) => Some(p.resolve(&format!("{at}.private_key_passphrase"))?),
                    None => None,
                },
                host_key: c.host_key.clone(),
                root: c.root.clone(),
                key_prefix: c.key_prefix.clone(),
            })
            .with_context(|| format!("{at}: invalid SFTP settings"))?,
        ),
    };
    Ok(backend)
}
