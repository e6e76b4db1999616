//! The file as written: serde types with spans, converted by `validate` into [`crate::Config`].

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Admin API bind host (drove-gateway key).
    pub address: Option<Spanned<String>>,
    /// Admin API port; drove-gateway writes it as a string.
    pub port: Option<Spanned<NumberOrText>>,
    pub loglevel: Option<Spanned<String>>,
    pub xproxy: Option<String>,
    pub proxy_platform: Option<Spanned<String>>,
    pub admin_token: Option<String>,
    pub workers: Option<Spanned<i64>>,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub services: Vec<FileService>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileListener {
    pub address: Spanned<String>,
    #[serde(default)]
    pub tls_certificates: Vec<FileCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileService {
    pub name: Spanned<String>,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub targets: Spanned<Vec<Spanned<FileTarget>>>,
    pub balance: Option<FileBalance>,
    pub connect_timeout: Option<Spanned<NumberOrText>>,
    pub response_header_timeout: Option<Spanned<NumberOrText>>,
    pub idle_timeout: Option<Spanned<NumberOrText>>,
    pub max_body_size: Option<Spanned<NumberOrText>>,
    /// Speak HTTP/2 to the targets (gRPC).
    #[serde(default)]
    pub http2: bool,
    /// Verify `https://` targets' certificates (default true).
    pub tls_verify: Option<bool>,
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileTarget {
    Url(String),
    Table(FileTargetTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTargetTable {
    pub url: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FileBalance {
    RoundRobin,
    LeastRequests,
    IpHash,
}
