//! Node configuration: one TOML file per node, with `BROBYGGER_<SECTION>__<KEY>` environment
//! overrides, parsed once into typed values.
//!
//! Every error names the file, the field and what is wrong, so `serve` and `check` report the
//! same thing. Secrets (the database URL may carry a password) are never printed: `Debug` redacts
//! them. Paths in the file are relative to the file's own directory.

use crate::domain::{FederationName, OrgId};
use crate::signed_note::VerifierKey;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables with this prefix override fields of the file.
pub const ENV_PREFIX: &str = "BROBYGGER_";
/// Variables with these prefixes belong to the test harness and the developer tooling (e.g.
/// `BROBYGGER_UPDATE_OPENAPI`), and are never read as overrides.
const ENV_TOOLING_PREFIXES: [&str; 2] = ["BROBYGGER_TEST_", "BROBYGGER_UPDATE_"];

/// What is wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct ConfigError {
    pub file: PathBuf,
    /// The dotted path of the field, e.g. `federation.listen`, or `(file)` for the whole file.
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(file: &Path, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

// ----- The file as written (serde), closed: unknown fields are errors. -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    org_id: String,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    federation: RawFederation,
    local_api: RawLocalApi,
    #[serde(default)]
    database: RawDatabase,
    audit: RawAudit,
    #[serde(default)]
    server: RawServer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    name: String,
    listen: String,
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    manifest: PathBuf,
    operator_key: String,
    #[serde(default)]
    manifest_poll_interval_ms: Option<u64>,
    #[serde(default)]
    manifest_expiry_warning_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalApi {
    listen: String,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    dangerous_plaintext_local_api: bool,
    jwks: PathBuf,
    issuer: String,
    audience: String,
    #[serde(default)]
    dev_token_key: Option<PathBuf>,
    #[serde(default)]
    dev_token_kid: Option<String>,
    /// `unit` (default) or `organisation`.
    #[serde(default)]
    caseworker_scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    max_connections: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    signing_key: PathBuf,
    hmac_key: PathBuf,
    #[serde(default)]
    hmac_key_version: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    shutdown_timeout_secs: Option<u64>,
    #[serde(default)]
    production: Option<bool>,
}

// ----- The parsed configuration the rest of the code uses. -----

/// A node's configuration, parsed and resolved.
#[derive(Clone)]
pub struct Config {
    /// The file it came from, for error messages.
    pub source: PathBuf,
    pub org: OrgId,
    pub federation_name: FederationName,
    pub data_dir: PathBuf,
    pub federation: FederationConfig,
    pub local_api: LocalApiConfig,
    pub database: DatabaseConfig,
    pub audit: AuditConfig,
    pub server: ServerConfig,
}

#[derive(Debug, Clone)]
pub struct FederationConfig {
    pub listen: SocketAddr,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub manifest: PathBuf,
    /// The operator's verifier key; the manifest must be signed by it.
    pub operator_key: VerifierKey,
    pub manifest_poll_interval: Duration,
    pub manifest_expiry_warning: Duration,
}

#[derive(Debug, Clone)]
pub enum LocalTransport {
    Tls {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Plain HTTP on a loopback address only; named so that nobody turns it on by accident.
    DangerousPlaintext,
}

#[derive(Debug, Clone)]
pub struct LocalApiConfig {
    pub listen: SocketAddr,
    pub transport: LocalTransport,
    pub jwks: PathBuf,
    pub issuer: String,
    pub audience: String,
    /// The development token issuer's private key, used only by `brobygger token`.
    pub dev_token_key: Option<PathBuf>,
    pub dev_token_kid: String,
    /// What a caseworker may read of children's data: what their unit recorded or bound (the
    /// default), or everything of the organisation.
    pub caseworker_scope: CaseworkerScope,
}

/// The reach of a caseworker's reads (inbox, timeline, consents, transparency reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseworkerScope {
    /// Only consents recorded or bound by the caseworker's own unit (the token's `unit`).
    Unit,
    /// Every consent of the organisation (an admin's choice, for small organisations).
    Organisation,
}

#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// A `postgres://` URL; may contain a password, so it is never printed.
    Postgres(String),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            DatabaseUrl::Postgres(_) => f.write_str("Postgres([redacted])"),
        }
    }
}

impl DatabaseUrl {
    pub fn engine(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub signing_key: PathBuf,
    /// The key that pseudonymises identifiers in audit entries (separate from every other key).
    pub hmac_key: PathBuf,
    pub hmac_key_version: u32,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// In production, every `dangerous_*` option is refused.
    pub production: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("source", &self.source)
            .field("org", &self.org)
            .field("federation_name", &self.federation_name)
            .field("data_dir", &self.data_dir)
            .field("federation", &self.federation)
            .field("local_api", &self.local_api)
            .field("database", &self.database)
            .field("server", &self.server)
            .finish()
    }
}

impl Config {
    /// Reads, overrides from the process environment, and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let overrides: Vec<(String, String)> = std::env::vars()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX)
                    && !ENV_TOOLING_PREFIXES.iter().any(|p| name.starts_with(p))
            })
            .collect();
        Self::load_with_overrides(path, &overrides)
    }

    /// As [`Config::load`], with the environment given explicitly (tests use this).
    pub fn load_with_overrides(
        path: &Path,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read the file: {e}")))?;
        Self::parse(path, &text, overrides)
    }

    /// Parses configuration text; `path` is used for messages and to resolve relative paths.
    pub fn parse(
        path: &Path,
        text: &str,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::new(path, "(file)", format!("not valid TOML: {}", e.message()))
        })?;
        for (name, value) in overrides {
            apply_override(path, &mut table, name, value)?;
        }
        let raw: RawConfig = serde_path_to_error::deserialize(table).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::new(path, field, e.into_inner().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        resolve(path, base, raw)
    }
}

/// Applies one `BROBYGGER_SECTION__KEY=value` override. The value keeps the type of the value it
/// replaces (a string stays a string); a new value is read as TOML if it parses, else as text.
fn apply_override(
    path: &Path,
    table: &mut toml::Table,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let Some(key_path) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(());
    };
    let keys: Vec<String> = key_path.split("__").map(str::to_ascii_lowercase).collect();
    let field = keys.join(".");
    let (last, parents) = keys
        .split_last()
        .ok_or_else(|| ConfigError::new(path, name, "empty override name"))?;
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            ConfigError::new(
                path,
                field.clone(),
                format!("environment variable {name} addresses a value that is not a section"),
            )
        })?;
    }
    let new_value = match current.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_owned()),
        _ => parse_toml_value(value).unwrap_or_else(|| toml::Value::String(value.to_owned())),
    };
    current.insert(last.clone(), new_value);
    Ok(())
}

fn parse_toml_value(value: &str) -> Option<toml::Value> {
    let table: toml::Table = format!("v = {value}").parse().ok()?;
    table.get("v").cloned()
}

fn resolve(path: &Path, base: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
    let err = |field: &str, problem: String| ConfigError::new(path, field, problem);
    let abs = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let org: OrgId = raw
        .org_id
        .parse()
        .map_err(|e| err("org_id", format!("{e}")))?;
    let federation_name: FederationName = raw
        .federation
        .name
        .parse()
        .map_err(|e| err("federation.name", format!("{e}")))?;
    let data_dir = abs(&raw
        .data_dir
        .unwrap_or_else(|| PathBuf::from("data").join(org.as_str())));

    let federation_listen: SocketAddr = raw.federation.listen.parse().map_err(|_| {
        err(
            "federation.listen",
            format!(
                "`{}` is not an address with a port, such as 127.0.0.1:7101",
                raw.federation.listen
            ),
        )
    })?;
    let operator_key: VerifierKey = raw
        .federation
        .operator_key
        .parse()
        .map_err(|e| err("federation.operator_key", format!("{e}")))?;
    let poll_ms = raw.federation.manifest_poll_interval_ms.unwrap_or(5_000);
    if !(10..=3_600_000).contains(&poll_ms) {
        return Err(err(
            "federation.manifest_poll_interval_ms",
            format!("{poll_ms} is out of range: use 10 to 3600000 milliseconds"),
        ));
    }
    let warning_days = raw.federation.manifest_expiry_warning_days.unwrap_or(14);

    let local_listen: SocketAddr = raw.local_api.listen.parse().map_err(|_| {
        err(
            "local_api.listen",
            format!(
                "`{}` is not an address with a port, such as 127.0.0.1:7201",
                raw.local_api.listen
            ),
        )
    })?;
    let transport = if raw.local_api.dangerous_plaintext_local_api {
        if !local_listen.ip().is_loopback() {
            return Err(err(
                "local_api.dangerous_plaintext_local_api",
                format!(
                    "plain HTTP is only allowed on a loopback address, and {local_listen} is not one"
                ),
            ));
        }
        LocalTransport::DangerousPlaintext
    } else {
        let cert = raw.local_api.cert.as_deref().ok_or_else(|| {
            err(
                "local_api.cert",
                "missing: the local API speaks TLS and needs a certificate (or set \
                 dangerous_plaintext_local_api = true on a loopback address for development)"
                    .into(),
            )
        })?;
        let key = raw
            .local_api
            .key
            .as_deref()
            .ok_or_else(|| err("local_api.key", "missing: the TLS private key".into()))?;
        LocalTransport::Tls {
            cert: abs(cert),
            key: abs(key),
        }
    };
    for (field, value) in [
        ("local_api.issuer", &raw.local_api.issuer),
        ("local_api.audience", &raw.local_api.audience),
    ] {
        if value.trim().is_empty() {
            return Err(err(field, "must not be empty".into()));
        }
    }

    let database_url = match raw.database.url {
        None => DatabaseUrl::Sqlite(data_dir.join("brobygger.db")),
        Some(url) => {
            parse_database_url(&url, base).map_err(|problem| err("database.url", problem))?
        }
    };
    let max_connections = raw.database.max_connections.unwrap_or(8);
    if !(1..=256).contains(&max_connections) {
        return Err(err(
            "database.max_connections",
            format!("{max_connections} is out of range: use 1 to 256"),
        ));
    }

    let workers = raw.server.workers.unwrap_or(2);
    if !(1..=64).contains(&workers) {
        return Err(err(
            "server.workers",
            format!("{workers} is out of range: use 1 to 64"),
        ));
    }
    let production = raw.server.production.unwrap_or(false);
    if production && matches!(transport, LocalTransport::DangerousPlaintext) {
        return Err(err(
            "local_api.dangerous_plaintext_local_api",
            "refused in production (server.production = true): the local API must speak TLS".into(),
        ));
    }
    if production && raw.local_api.dev_token_key.is_some() {
        return Err(err(
            "local_api.dev_token_key",
            "refused in production (server.production = true): tokens come from the organisation's identity provider".into(),
        ));
    }

    let caseworker_scope = match raw.local_api.caseworker_scope.as_deref() {
        None | Some("unit") => CaseworkerScope::Unit,
        Some("organisation") => CaseworkerScope::Organisation,
        Some(other) => {
            return Err(err(
                "local_api.caseworker_scope",
                format!("`{other}` is not one of: unit, organisation"),
            ));
        }
    };

    Ok(Config {
        source: path.to_path_buf(),
        org,
        federation_name,
        data_dir,
        federation: FederationConfig {
            listen: federation_listen,
            ca_cert: abs(&raw.federation.ca_cert),
            cert: abs(&raw.federation.cert),
            key: abs(&raw.federation.key),
            manifest: abs(&raw.federation.manifest),
            operator_key,
            manifest_poll_interval: Duration::from_millis(poll_ms),
            manifest_expiry_warning: Duration::from_secs(u64::from(warning_days) * 86_400),
        },
        local_api: LocalApiConfig {
            listen: local_listen,
            transport,
            jwks: abs(&raw.local_api.jwks),
            issuer: raw.local_api.issuer,
            audience: raw.local_api.audience,
            dev_token_key: raw.local_api.dev_token_key.as_deref().map(abs),
            dev_token_kid: raw
                .local_api
                .dev_token_kid
                .unwrap_or_else(|| "dev-1".into()),
            caseworker_scope,
        },
        database: DatabaseConfig {
            url: database_url,
            max_connections,
        },
        audit: AuditConfig {
            signing_key: abs(&raw.audit.signing_key),
            hmac_key: abs(&raw.audit.hmac_key),
            hmac_key_version: raw.audit.hmac_key_version.unwrap_or(1),
        },
        server: ServerConfig {
            workers,
            shutdown_timeout: Duration::from_secs(raw.server.shutdown_timeout_secs.unwrap_or(10)),
            production,
        },
    })
}

fn parse_database_url(url: &str, base: &Path) -> Result<DatabaseUrl, String> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let file = rest.split('?').next().unwrap_or(rest);
        if file.is_empty() || file == ":memory:" {
            return Err("a SQLite database must be a file path, e.g. sqlite://data/node.db".into());
        }
        let file = Path::new(file);
        return Ok(DatabaseUrl::Sqlite(if file.is_absolute() {
            file.to_path_buf()
        } else {
            base.join(file)
        }));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseUrl::Postgres(url.to_owned()));
    }
    Err("unsupported database URL: use sqlite://PATH or postgres://...".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str =
        "brobygger.test/operator+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    fn sample() -> String {
        format!(
            r#"
org_id = "red-barnet"
[federation]
name = "brobygger.test"
listen = "127.0.0.1:7103"
ca_cert = "ca.pem"
cert = "red-barnet/node.pem"
key = "red-barnet/node.key"
manifest = "manifest.note"
operator_key = "{}"
[local_api]
listen = "127.0.0.1:7203"
cert = "red-barnet/local.pem"
key = "red-barnet/local.key"
jwks = "red-barnet/jwks.json"
issuer = "https://idp.red-barnet.brobygger.test"
audience = "brobygger:red-barnet"
[audit]
signing_key = "red-barnet/audit.key"
hmac_key = "red-barnet/audit-hmac.key"
"#,
            OPERATOR.replace("c74f20a3", "00000000")
        )
    }

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(Path::new("/etc/brobygger/node.toml"), text, &env)
    }

    #[test]
    fn a_bad_operator_key_hash_is_named() {
        let e = parse(&sample(), &[]).unwrap_err();
        assert_eq!(e.field, "federation.operator_key");
    }

    #[test]
    fn valid_sample_parses_and_resolves_paths() {
        let text = sample()
            .replace("00000000", "c74f20a3")
            .replace("brobygger.test/operator+c74f20a3", "PeterNeumann+c74f20a3");
        let c = parse(&text, &[]).unwrap();
        assert_eq!(c.org.as_str(), "red-barnet");
        assert_eq!(c.federation.ca_cert, Path::new("/etc/brobygger/ca.pem"));
        assert_eq!(
            c.database.url,
            DatabaseUrl::Sqlite(PathBuf::from("/etc/brobygger/data/red-barnet/brobygger.db"))
        );
        let c = parse(
            &text,
            &[
                ("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0"),
                (
                    "BROBYGGER_DATABASE__URL",
                    "postgres://u:secret@127.0.0.1/db",
                ),
                ("BROBYGGER_SERVER__WORKERS", "1"),
            ],
        )
        .unwrap();
        assert_eq!(c.federation.listen.port(), 0);
        assert_eq!(c.server.workers, 1);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn errors_name_the_field() {
        let text = sample()
            .replace("00000000", "c74f20a3")
            .replace("brobygger.test/operator+c74f20a3", "PeterNeumann+c74f20a3");
        let e = parse(&text.replace("listen = \"127.0.0.1:7103\"\n", ""), &[]).unwrap_err();
        assert_eq!(e.field, "federation");
        assert!(e.problem.contains("listen"), "{e}");
        let e = parse(&text.replace("127.0.0.1:7103", "localhost"), &[]).unwrap_err();
        assert_eq!(e.field, "federation.listen");
        let e = parse(&format!("{text}\n[extra]\nx = 1\n"), &[]).unwrap_err();
        assert!(e.problem.contains("extra"), "{e}");
        let e = parse(&text, &[("BROBYGGER_SERVER__WORKERS", "0")]).unwrap_err();
        assert_eq!(e.field, "server.workers");
        let e = parse(&text.replace("red-barnet\"", "Red Barnet\""), &[]).unwrap_err();
        assert_eq!(e.field, "org_id");
        assert!(
            e.to_string()
                .starts_with("/etc/brobygger/node.toml: org_id: ")
        );
    }

    /// The example files in `config/` are documentation; they must also stay valid.
    #[test]
    fn the_example_configs_parse() {
        for (name, text) in [
            (
                "herning-kommune",
                include_str!("../config/herning-kommune.toml"),
            ),
            (
                "fredericia-kommune",
                include_str!("../config/fredericia-kommune.toml"),
            ),
            ("red-barnet", include_str!("../config/red-barnet.toml")),
        ] {
            let path = PathBuf::from(format!("/srv/brobygger/config/{name}.toml"));
            let config = Config::parse(&path, text, &[]).unwrap();
            assert_eq!(config.org.as_str(), name);
            assert_eq!(
                config.federation.ca_cert,
                Path::new("/srv/brobygger/config/../certs/dev/federation/ca.pem")
            );
        }
    }

    #[test]
    fn plaintext_local_api_is_loopback_only_and_never_in_production() {
        let text = sample()
            .replace("00000000", "c74f20a3")
            .replace("brobygger.test/operator+c74f20a3", "PeterNeumann+c74f20a3");
        let plain = text.replace(
            "[local_api]\n",
            "[local_api]\ndangerous_plaintext_local_api = true\n",
        );
        assert!(matches!(
            parse(&plain, &[]).unwrap().local_api.transport,
            LocalTransport::DangerousPlaintext
        ));
        let e = parse(&plain.replace("127.0.0.1:7203", "0.0.0.0:7203"), &[]).unwrap_err();
        assert_eq!(e.field, "local_api.dangerous_plaintext_local_api");
        let e = parse(&plain, &[("BROBYGGER_SERVER__PRODUCTION", "true")]).unwrap_err();
        assert_eq!(e.field, "local_api.dangerous_plaintext_local_api");
    }
}
