//! A running node: loads everything a node needs, starts the federation and local listeners,
//! keeps the manifest current, and shuts down gracefully.
//!
//! Start-up fails (exit code 2) on anything misconfigured, before a port is opened: config,
//! certificates and keys, token keys, the database, and the manifest.

use crate::audit::entry::HmacKey;
use crate::config::{Config, ConfigError, LocalTransport};
use crate::domain::NodeIdentity;
use crate::federation::{self, PeerClients};
use crate::identity::TlsMaterial;
use crate::jwt::{Jwks, TokenVerifier};
use crate::manifest::{self, AcceptedSerial, Manifest, ManifestError, ManifestHolder, Succession};
use crate::problem;
use crate::storage::{self, Database, StorageError};
use crate::write_path::{
    PublishedError, WritePath, Writer, check_against_published, check_published_writable,
    published_state_path, read_published,
};
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The largest request body either listener reads. Later issues size it per route.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The node's notion of now. Production uses the system clock; tests use a manual clock they
/// can set, so that expiry is shown without waiting.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still at `at` until [`Clock::set`] moves it.
    pub fn manual(at: OffsetDateTime) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// Moves a manual clock; does nothing to the system clock.
    pub fn set(&self, at: OffsetDateTime) {
        if let Some(manual) = &self.manual {
            *manual
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = at;
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            Some(manual) => *manual
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            None => OffsetDateTime::now_utc(),
        }
    }
}

/// Everything request handlers share.
pub struct NodeState {
    pub config: Config,
    pub identity: NodeIdentity,
    pub manifest: ManifestHolder,
    pub db: Database,
    /// The reads of admission, shared across concurrent requests.
    pub lookups: crate::storage::Lookups,
    /// The request bodies being decided at once: peers' batches and local submissions apart,
    /// so that neither side can crowd out the other.
    pub peer_bodies: crate::federation::BodyBudget,
    pub local_bodies: crate::federation::BodyBudget,
    pub tls: TlsMaterial,
    pub tokens: TokenVerifier,
    pub peers: PeerClients,
    pub clock: Clock,
    /// The verifier key of this node's audit signing key, to notice a manifest that disagrees.
    pub audit_verifier_key: crate::signed_note::VerifierKey,
    /// The write path: every audit append goes through it.
    pub audit: WritePath,
    /// Pseudonymises identifiers before they enter the audit log.
    pub hmac: HmacKey,
    /// The compiled v1 schemas every envelope is checked against.
    pub schemas: crate::schema::Schemas,
    /// Serialises binding-code checks on this node, so that two attempts on one consent cannot
    /// both pass the check before either is recorded.
    pub binding: tokio::sync::Mutex<()>,
    /// Wakes the delivery worker when a message is queued.
    pub delivery_wake: tokio::sync::Notify,
    pub delivery_stats: crate::delivery::DeliveryStats,
    /// One circuit breaker per peer, for the delivery worker.
    pub breakers: crate::delivery::Breakers,
    /// The message ids being decided right now (one decision per message at a time).
    pub in_flight: std::sync::Arc<crate::admission::InFlight>,
    /// The peers' verified audit checkpoints: receipts waiting for a proof, and the alarm
    /// counter (the checkpoints themselves are in the database).
    pub peer_logs: crate::peer_logs::PeerLogs,
}

/// Why a node could not start. All of these are configuration problems (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{file}: {source}")]
    Manifest {
        file: String,
        #[source]
        source: ManifestError,
    },
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("audit log: {0}")]
    Audit(#[from] PublishedError),
    #[error("{0}")]
    Schema(#[from] crate::schema::SchemaCompileError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the configured database; a failure is reported against `database.url` in the file.
pub async fn open_database(config: &Config) -> Result<Database, ConfigError> {
    Database::open(&config.database).await.map_err(|e| {
        ConfigError::new(
            &config.source,
            "database.url",
            format!("{} database: {e}", config.database.url.engine()),
        )
    })
}

/// Loads the audit HMAC key: at least 32 bytes, written as hex.
pub fn load_hmac_key(config: &Config) -> Result<HmacKey, ConfigError> {
    let file = config.source.as_path();
    let path = &config.audit.hmac_key;
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            file,
            "audit.hmac_key",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    hex::decode(text.trim())
        .ok()
        .and_then(|material| HmacKey::new(config.audit.hmac_key_version, &material))
        .ok_or_else(|| {
            ConfigError::new(
                file,
                "audit.hmac_key",
                format!("{} must hold at least 32 bytes as hex", path.display()),
            )
        })
}

/// Loads the token verification keys named in the config.
pub fn load_token_verifier(config: &Config) -> Result<TokenVerifier, ConfigError> {
    let file = config.source.as_path();
    let bytes = std::fs::read(&config.local_api.jwks).map_err(|e| {
        ConfigError::new(
            file,
            "local_api.jwks",
            format!("cannot read {}: {e}", config.local_api.jwks.display()),
        )
    })?;
    let jwks = Jwks::from_json(&bytes)
        .map_err(|e| ConfigError::new(file, "local_api.jwks", e.to_string()))?;
    TokenVerifier::new(
        jwks,
        config.local_api.issuer.clone(),
        config.local_api.audience.clone(),
    )
    .map_err(|e| ConfigError::new(file, "local_api", e.to_string()))
}

/// Whether [`load_manifest`] records a newly accepted serial (`serve`) or only checks (`check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    Yes,
    No,
}

/// Reads and verifies the manifest file and applies the succession rule against what the
/// database says was accepted before. With [`Persist::Yes`], records a newer one.
pub async fn load_manifest(
    config: &Config,
    db: &Database,
    now: OffsetDateTime,
    persist: Persist,
) -> Result<Manifest, StartError> {
    let manifest_error = |source| StartError::Manifest {
        file: config.federation.manifest.display().to_string(),
        source,
    };
    let note = std::fs::read_to_string(&config.federation.manifest)
        .map_err(|e| manifest_error(ManifestError::Unreadable(e.to_string())))?;
    let candidate = manifest::open(
        &note,
        &config.federation.operator_key,
        &config.federation_name,
    )
    .map_err(manifest_error)?;
    let accepted = storage::load_accepted_manifest(db).await?;
    match manifest::check_succession(accepted, &candidate, now).map_err(manifest_error)? {
        Succession::Same => {}
        Succession::Newer if persist == Persist::No => {}
        Succession::Newer => {
            storage::store_accepted_manifest(
                db,
                AcceptedSerial {
                    serial: candidate.serial,
                    content_hash: candidate.content_hash,
                },
            )
            .await?;
        }
    }
    Ok(candidate)
}

/// What a manifest reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Replaced { from: u64, to: u64 },
}

impl NodeState {
    /// Re-reads the manifest file; a newer valid manifest replaces the current one, anything
    /// else is kept out and the current manifest stays.
    pub async fn reload_manifest(&self) -> Result<ReloadOutcome, StartError> {
        let current = self.manifest.snapshot();
        let candidate =
            load_manifest(&self.config, &self.db, self.clock.now(), Persist::Yes).await?;
        if let Some(signer_key) = candidate.member(&self.config.org).map(|m| &m.audit_key) {
            if signer_key != &self.audit_verifier_key {
                tracing::warn!(
                    serial = candidate.serial,
                    "the new manifest publishes another audit key for this node; peers will not \
                     verify its receipts and the node will refuse to restart with this manifest"
                );
            }
        } else {
            tracing::warn!(
                serial = candidate.serial,
                "the new manifest does not list this node; peers will refuse it"
            );
        }
        let to = candidate.serial;
        if self.manifest.replace_if_newer(candidate) {
            Ok(ReloadOutcome::Replaced {
                from: current.serial,
                to,
            })
        } else {
            Ok(ReloadOutcome::Unchanged)
        }
    }
}

/// A node with both listeners running.
pub struct RunningNode {
    pub federation_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub state: web::Data<NodeState>,
    federation_server: ServerHandle,
    local_server: ServerHandle,
    server_tasks: Vec<JoinHandle<std::io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    stop_background: watch::Sender<bool>,
    writer: Writer,
}

/// Loads and checks everything, opens the database, and starts both listeners.
pub async fn start(config: Config, clock: Clock) -> Result<RunningNode, StartError> {
    crate::identity::install_default_crypto_provider();
    // A foreign provider would have been installed by our own code only; TokenVerifier::new
    // reports it as a configuration error if it ever happens.
    let _ = crate::jwt::install_crypto_provider();
    let tls = TlsMaterial::load(&config)?;
    let tokens = load_token_verifier(&config)?;
    let signer = load_signing_key(&config)?;
    let hmac = load_hmac_key(&config)?;
    let schemas = crate::schema::Schemas::compile()?;
    let db = open_database(&config).await?;
    let manifest = load_manifest(&config, &db, clock.now(), Persist::Yes).await?;
    check_self_in_manifest(&config, &manifest, &signer)?;
    let published_path = published_state_path(&config.audit.signing_key);
    check_published_writable(&published_path)?;
    let published = read_published(&published_path, &signer)?;
    check_against_published(&db, published.as_ref(), &published_path).await?;
    let audit_verifier_key = signer.verifier_key().clone();
    // On SQLite every change to a consent goes through this node's writer, so consents can be
    // cached (the writer clears what it changed); on PostgreSQL other replicas change them too.
    let consent_cache = matches!(db, Database::Sqlite(_))
        .then(|| Arc::new(crate::storage::ConsentCache::default()));
    let writer = Writer::spawn_clearing(
        db.clone(),
        Arc::new(signer),
        hmac.version(),
        published_path,
        published,
        consent_cache.clone(),
    );
    if matches!(
        config.local_api.transport,
        LocalTransport::DangerousPlaintext
    ) {
        tracing::warn!(
            listen = %config.local_api.listen,
            "DANGEROUS: dangerous_plaintext_local_api = true: the local API speaks plain HTTP \
             (loopback only). Tokens and data cross it unencrypted. Never use this in production."
        );
    }
    let state = web::Data::new(NodeState {
        identity: tls.identity.clone(),
        config,
        manifest: ManifestHolder::new(manifest),
        lookups: crate::storage::Lookups::spawn(db.clone(), consent_cache),
        db,
        tls,
        tokens,
        peers: PeerClients::default(),
        clock,
        audit_verifier_key,
        audit: writer.path.clone(),
        hmac,
        schemas,
        binding: tokio::sync::Mutex::new(()),
        delivery_wake: tokio::sync::Notify::new(),
        delivery_stats: crate::delivery::DeliveryStats::default(),
        breakers: crate::delivery::Breakers::default(),
        in_flight: std::sync::Arc::default(),
        peer_bodies: crate::federation::BodyBudget::default(),
        local_bodies: crate::federation::BodyBudget::default(),
        peer_logs: crate::peer_logs::PeerLogs::default(),
    });
    let config = &state.config;
    let workers = config.server.workers;
    let shutdown_secs = config.server.shutdown_timeout.as_secs();

    let federation_listener =
        std::net::TcpListener::bind(config.federation.listen).map_err(|source| {
            StartError::Bind {
                what: "federation",
                addr: config.federation.listen,
                source,
            }
        })?;
    let federation_addr = local_addr(&federation_listener, config.federation.listen, "federation")?;
    let app_state = state.clone();
    let federation_server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(json_config())
            .app_data(web::PathConfig::default().error_handler(problem::path_error_handler))
            .configure(federation::routes)
    })
    .on_connect(federation::on_connect(state.identity.federation.clone()))
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(shutdown_secs)
    .keep_alive(Duration::from_secs(75))
    .listen_rustls_0_23(federation_listener, (*state.tls.federation_server).clone())
    .map_err(|source| StartError::Bind {
        what: "federation",
        addr: federation_addr,
        source,
    })?
    .run();

    let local_listener =
        std::net::TcpListener::bind(config.local_api.listen).map_err(|source| {
            StartError::Bind {
                what: "local API",
                addr: config.local_api.listen,
                source,
            }
        })?;
    let local_addr_bound = local_addr(&local_listener, config.local_api.listen, "local API")?;
    let app_state = state.clone();
    let local_builder = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(json_config())
            .app_data(web::PathConfig::default().error_handler(problem::path_error_handler))
            .app_data(web::QueryConfig::default().error_handler(problem::query_error_handler))
            .configure(crate::api::routes)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(shutdown_secs);
    let local_builder = match &state.tls.local_server {
        Some(tls) => local_builder.listen_rustls_0_23(local_listener, (**tls).clone()),
        None => local_builder.listen(local_listener),
    }
    .map_err(|source| StartError::Bind {
        what: "local API",
        addr: local_addr_bound,
        source,
    })?;
    let local_server = local_builder.run();

    let federation_handle = federation_server.handle();
    let local_handle = local_server.handle();
    let server_tasks = vec![tokio::spawn(federation_server), tokio::spawn(local_server)];

    let (stop_background, stop_rx) = watch::channel(false);
    let background = vec![
        tokio::spawn(manifest_watcher(state.clone(), stop_rx.clone())),
        tokio::spawn(crate::delivery::run(state.clone(), stop_rx.clone())),
        tokio::spawn(crate::peer_logs::run(state.clone(), stop_rx.clone())),
        tokio::spawn(crate::retention::run(state.clone(), stop_rx)),
    ];

    tracing::info!(
        org = %state.identity.org,
        federation = %federation_addr,
        local_api = %local_addr_bound,
        database = state.db.engine(),
        manifest_serial = state.manifest.snapshot().serial,
        "node started"
    );
    Ok(RunningNode {
        federation_addr,
        local_addr: local_addr_bound,
        state,
        federation_server: federation_handle,
        local_server: local_handle,
        server_tasks,
        background,
        stop_background,
        writer,
    })
}

fn local_addr(
    listener: &std::net::TcpListener,
    wanted: SocketAddr,
    what: &'static str,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: wanted,
        source,
    })
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(problem::json_error_handler)
}

/// Polls the manifest file and applies a newer valid one. A refused file is logged once (not on
/// every poll) and the current manifest stays.
async fn manifest_watcher(state: web::Data<NodeState>, mut stop: watch::Receiver<bool>) {
    let interval = state.config.federation.manifest_poll_interval;
    // Start from nothing, so that a file changed between start-up and the first poll is still
    // read; re-reading the accepted file is a cheap `Unchanged`.
    let mut last_seen: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let Ok(bytes) = std::fs::read(&state.config.federation.manifest) else {
            continue;
        };
        if last_seen.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        match state.reload_manifest().await {
            Ok(outcome) => {
                if let ReloadOutcome::Replaced { from, to } = outcome {
                    tracing::info!(from, to, "federation manifest reloaded");
                }
                last_seen = Some(bytes);
            }
            Err(e @ StartError::Manifest { .. }) => {
                // The file itself is refused: say so once, until it changes.
                tracing::warn!(
                    reason = %e,
                    "a new manifest file was kept out; the current manifest stays in force"
                );
                last_seen = Some(bytes);
            }
            // A passing failure (e.g. the database): try the same file again at the next poll.
            Err(e) => tracing::warn!(reason = %e, "manifest reload failed; retrying"),
        }
    }
}

impl RunningNode {
    /// Graceful stop: listeners stop accepting, in-flight requests finish within the configured
    /// bound, background tasks end, and the database is closed cleanly.
    pub async fn stop(self) {
        let _ = self.stop_background.send(true);
        tokio::join!(
            self.federation_server.stop(true),
            self.local_server.stop(true)
        );
        for task in self.server_tasks {
            let _ = task.await;
        }
        for task in self.background {
            let _ = task.await;
        }
        // The listeners are closed, so nothing new arrives: the writer commits what is queued
        // and publishes its last checkpoint before the database closes.
        self.writer.stop().await;
        self.state.db.close().await;
        tracing::info!(org = %self.state.identity.org, "node stopped");
    }
}

/// Checks a signing key file is usable; used by start and `check`.
pub fn load_signing_key(config: &Config) -> Result<crate::signed_note::NoteSigner, ConfigError> {
    let file = config.source.as_path();
    let path = &config.audit.signing_key;
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            file,
            "audit.signing_key",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    crate::signed_note::NoteSigner::from_pkcs8_pem(&audit_origin(config), &bytes).map_err(|e| {
        ConfigError::new(
            file,
            "audit.signing_key",
            format!("{}: {e}", path.display()),
        )
    })
}

/// The audit log origin (and checkpoint key name) of this node.
pub fn audit_origin(config: &Config) -> String {
    format!("{}/{}/audit", config.federation_name, config.org)
}

/// The node must be a member of its own manifest, and the audit key the manifest publishes for
/// it must be the one it signs with; otherwise no peer could verify its receipts.
pub fn check_self_in_manifest(
    config: &Config,
    manifest: &Manifest,
    signer: &crate::signed_note::NoteSigner,
) -> Result<(), ConfigError> {
    let file = config.source.as_path();
    let member = manifest.member(&config.org).ok_or_else(|| {
        ConfigError::new(
            file,
            "org_id",
            format!(
                "`{}` is not a member in manifest serial {}",
                config.org, manifest.serial
            ),
        )
    })?;
    if &member.audit_key != signer.verifier_key() {
        return Err(ConfigError::new(
            file,
            "audit.signing_key",
            "this key does not match the audit verifier key the manifest publishes for this node",
        ));
    }
    Ok(())
}
