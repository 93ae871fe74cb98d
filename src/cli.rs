//! The `brobygger` command line: argument parsing and the commands' output.
//!
//! Exit codes: 0 ok; 1 a check failed (e.g. tampering found); 2 usage or configuration error.
//! `anyhow` is allowed here and in `main`, nowhere else.

use crate::config::Config;
use crate::domain::FederationName;
use crate::jwt::{DevIssuer, Role};
use crate::node::{self, Clock};
use crate::pki::{self, InitOptions, OrgSpec};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use time::OffsetDateTime;

pub const EXIT_OK: u8 = 0;
pub const EXIT_CHECK_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "brobygger",
    version,
    about = "Brobygger: a gateway for consented, audited exchange of small summaries about \
             children between municipalities and NGOs",
    long_about = "Brobygger runs one gateway node per organisation. Nodes talk to each other over \
                  mutual TLS and enforce consent and purpose at their own boundary; local systems \
                  use the node's local API with bearer tokens.\n\n\
                  Exit codes: 0 ok, 1 a check failed (audit verify, audit verify-export), \
                  2 usage or configuration error.\n\
                  Logging: set RUST_LOG (e.g. RUST_LOG=info,brobygger=debug)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Development certificates and keys.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Operator tasks for the federation manifest.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// The audit log: the verifier key, verification, export and offline verification.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run a node until it receives SIGTERM or Ctrl-C (SIGHUP re-reads the manifest).
    Serve {
        /// The node's configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a node's configuration, certificates, keys, manifest and database without
    /// starting it. Applies pending database migrations.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// A guided tour: a fresh three-node development federation on loopback (Herning Kommune,
    /// Fredericia Kommune, Red Barnet) and the story of one family told through the nodes' real
    /// local APIs. The nodes keep running for exploring until Ctrl-C.
    Demo {
        /// Directory for the federation's keys, configs and databases (created if missing; must
        /// not hold an earlier federation). Default: a new directory under the system's
        /// temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stop the nodes and exit after the story instead of waiting for Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Mint a development bearer token for the node's local API (needs
    /// local_api.dev_token_key in the config; never available in production).
    Token {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A role: submitter, caseworker, consent-admin, auditor or admin. Repeat for several.
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<Role>,
        /// The pseudonymous subject (user id) the token is for.
        #[arg(long, value_name = "NAME")]
        sub: String,
        /// The caseworker's organisational unit.
        #[arg(long, value_name = "UNIT")]
        unit: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 1d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: i64,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a complete development federation: CA, node certificates and keys, operator
    /// key, audit signing keys, development JWT issuers, a signed manifest and a ready
    /// config file per org. Values such as CVR numbers are obviously fake.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Federation name, e.g. brobygger.test.
        #[arg(long, value_name = "NAME")]
        federation: FederationName,
        /// An organisation as ID:KIND (KIND: municipality, ngo, region). Repeat per org.
        #[arg(long = "org", value_name = "ID:KIND", required = true)]
        orgs: Vec<OrgSpec>,
        /// Ports: federation listeners at BASE+1.., local APIs at BASE+101...
        #[arg(long, default_value_t = 7100, value_name = "BASE")]
        base_port: u16,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print this node's audit verifier key (C2SP note verifier key), as published in the
    /// manifest, for auditors and peers.
    Key {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Recompute every entry hash, the tree and every signed checkpoint from the database.
    /// With --against, also prove that today's log extends a checkpoint seen earlier.
    /// Exit 1 names the first bad index.
    Verify {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A signed checkpoint kept outside the node (from a receipt, an auditor, a witness).
        #[arg(long, value_name = "CHECKPOINT-FILE")]
        against: Option<PathBuf>,
    },
    /// Export the log in the C2SP tlog-tiles layout (hash tiles, entry bundles, checkpoint).
    Export {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// An empty or new directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Verify an export offline: no database, no config. Exit 1 names the first bad index.
    VerifyExport {
        /// The export directory.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The log's verifier key, e.g. from the manifest or `brobygger audit key`.
        #[arg(long, value_name = "KEY")]
        key: crate::signed_note::VerifierKey,
        #[arg(long, value_name = "CHECKPOINT-FILE")]
        against: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FederationCommand {
    /// Sign a manifest (JSON) with the operator's key, producing the signed manifest that
    /// nodes load. Remember to raise `serial` for every new version.
    Sign {
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The operator's Ed25519 private key (PKCS#8 PEM).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn parse_ttl(value: &str) -> Result<i64, String> {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a duration such as 30m, 1h or 1d"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{value}`: use s, m, h or d")),
    };
    let seconds = n.checked_mul(factor).unwrap_or(i64::MAX);
    if !(1..=30 * 86_400).contains(&seconds) {
        return Err("a token lives between 1 second and 30 days".into());
    }
    Ok(seconds)
}

/// Parses arguments, runs the command and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; the nodes' routine logs would drown it.
    init_logging(match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info,sqlx=warn",
    });
    ExitCode::from(match cli.command {
        Command::Pki(PkiCommand::Init {
            dir,
            federation,
            orgs,
            base_port,
            force,
        }) => pki_init(dir, federation, orgs, base_port, force),
        Command::Federation(FederationCommand::Sign { manifest, key, out }) => {
            federation_sign(&manifest, &key, &out)
        }
        Command::Audit(command) => audit(command),
        Command::Serve { config } => with_runtime(serve(config)),
        Command::Check { config } => with_runtime(check(config)),
        Command::Token {
            config,
            roles,
            sub,
            unit,
            ttl,
        } => token(&config, &roles, &sub, unit.as_deref(), ttl),
        Command::Demo { dir, exit } => {
            with_runtime(crate::demo::run(crate::demo::Options { dir, exit }))
        }
    })
}

/// Logs to stderr, filtered by `RUST_LOG` or else by `default` (sqlx reports PostgreSQL
/// notices such as "already exists, skipping" at info level, hence `sqlx=warn`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn with_runtime(future: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            EXIT_USAGE
        }
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    code
}

fn pki_init(
    dir: PathBuf,
    federation: FederationName,
    orgs: Vec<OrgSpec>,
    base_port: u16,
    force: bool,
) -> u8 {
    crate::identity::install_default_crypto_provider();
    let options = InitOptions {
        dir,
        federation,
        orgs,
        force,
        base_port,
        now: OffsetDateTime::now_utc(),
    };
    match pki::init(&options) {
        Ok(report) => {
            println!(
                "Development federation created in {}",
                options.dir.display()
            );
            println!("  operator verifier key: {}", report.operator_verifier_key);
            println!("  signed manifest:       {}", report.manifest.display());
            for (org, config) in &report.configs {
                println!("  {org}: brobygger serve --config {}", config.display());
            }
            EXIT_OK
        }
        Err(e) => fail(EXIT_USAGE, e),
    }
}

fn federation_sign(manifest: &std::path::Path, key: &std::path::Path, out: &std::path::Path) -> u8 {
    let result = (|| -> anyhow::Result<String> {
        let json = std::fs::read_to_string(manifest)
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        let doc: crate::manifest::ManifestDocV1 = serde_json::from_str(&json)
            .map_err(|e| anyhow::anyhow!("{}: not a v1 manifest: {e}", manifest.display()))?;
        let federation: FederationName = doc.federation.parse()?;
        let signer = pki::load_note_signer(key, &pki::operator_key_name(&federation))?;
        let note = pki::sign_manifest_text(&json, &signer)?;
        pki::write_file(out, note.as_bytes(), false)?;
        Ok(format!(
            "signed manifest serial {} for {} with {}",
            doc.serial,
            federation,
            signer.verifier_key()
        ))
    })();
    match result {
        Ok(summary) => {
            println!("{summary}");
            EXIT_OK
        }
        Err(e) => fail(EXIT_USAGE, e),
    }
}

async fn serve(config_path: PathBuf) -> u8 {
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let running = match node::start(config, Clock::system()).await {
        Ok(running) => running,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    println!(
        "{} is running: federation on https://{}, local API on {}://{}",
        running.state.identity.org,
        running.federation_addr,
        if running.state.tls.local_server.is_some() {
            "https"
        } else {
            "http"
        },
        running.local_addr
    );
    wait_for_shutdown(&running).await;
    tracing::info!("shutting down");
    running.stop().await;
    EXIT_OK
}

#[cfg(unix)]
async fn wait_for_shutdown(running: &node::RunningNode) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match running.state.reload_manifest().await {
                Ok(outcome) => tracing::info!(?outcome, "manifest re-read on SIGHUP"),
                Err(e) => tracing::warn!(reason = %e, "manifest kept out on SIGHUP"),
            },
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_shutdown(_running: &node::RunningNode) {
    let _ = tokio::signal::ctrl_c().await;
}

async fn check(config_path: PathBuf) -> u8 {
    let result = async {
        crate::identity::install_default_crypto_provider();
        let _ = crate::jwt::install_crypto_provider();
        let config = Config::load(&config_path)?;
        println!("ok: configuration {}", config_path.display());
        let tls = crate::identity::TlsMaterial::load(&config)?;
        println!(
            "ok: node certificate for {} (valid until {})",
            tls.identity,
            crate::manifest::format_time(tls.node_cert_not_after)
        );
        node::load_token_verifier(&config)?;
        println!("ok: token keys {}", config.local_api.jwks.display());
        let signer = node::load_signing_key(&config)?;
        println!("ok: audit signing key {}", signer.verifier_key());
        let hmac = node::load_hmac_key(&config)?;
        println!("ok: audit HMAC key (version {})", hmac.version());
        let db = node::open_database(&config).await?;
        let published_path = crate::write_path::published_state_path(&config.audit.signing_key);
        crate::write_path::check_published_writable(&published_path)?;
        let published = crate::write_path::read_published(&published_path, &signer)?;
        crate::write_path::check_against_published(&db, published.as_ref(), &published_path)
            .await?;
        println!("ok: audit log holds at least what this node published");
        println!("ok: database ({})", db.engine());
        let manifest =
            node::load_manifest(&config, &db, OffsetDateTime::now_utc(), node::Persist::No).await?;
        node::check_self_in_manifest(&config, &manifest, &signer)?;
        println!(
            "ok: manifest serial {} with {} members and {} purposes, expires {}",
            manifest.serial,
            manifest.members.len(),
            manifest.purposes.len(),
            crate::manifest::format_time(manifest.expires_at)
        );
        db.close().await;
        Ok::<(), node::StartError>(())
    }
    .await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => fail(EXIT_USAGE, e),
    }
}

fn audit(command: AuditCommand) -> u8 {
    match command {
        AuditCommand::Key { config } => {
            match Config::load(&config).and_then(|config| node::load_signing_key(&config)) {
                Ok(signer) => {
                    println!("{}", signer.verifier_key());
                    EXIT_OK
                }
                Err(e) => fail(EXIT_USAGE, e),
            }
        }
        AuditCommand::Verify { config, against } => with_runtime(audit_verify(config, against)),
        AuditCommand::Export { config, out } => with_runtime(audit_export(config, out)),
        AuditCommand::VerifyExport { dir, key, against } => {
            let against = match read_against(against.as_deref()) {
                Ok(against) => against,
                Err(code) => return code,
            };
            match crate::audit::tiles::verify_export(&dir, &key, against.as_deref()) {
                Ok(verified) => {
                    print_verified(&verified, against.is_some());
                    EXIT_OK
                }
                Err(failure) => fail(
                    EXIT_CHECK_FAILED,
                    format!("audit verification failed: {failure}"),
                ),
            }
        }
    }
}

fn read_against(path: Option<&std::path::Path>) -> Result<Option<String>, u8> {
    path.map(|path| {
        std::fs::read_to_string(path)
            .map_err(|e| fail(EXIT_USAGE, format!("{}: {e}", path.display())))
    })
    .transpose()
}

fn print_verified(verified: &crate::audit::verify::Verified, against: bool) {
    use base64::Engine as _;
    println!(
        "ok: {} entries verified, {} signed checkpoints checked, root {}",
        verified.size,
        verified.checkpoints_checked,
        base64::engine::general_purpose::STANDARD.encode(verified.root)
    );
    if against {
        println!("ok: the log extends the checkpoint seen earlier");
    }
}

/// Opens what `audit verify` and `audit export` need: the node's key, and the database
/// read-only (nothing is created or migrated). An error is a usage or configuration problem.
async fn open_audited_node(
    config: &Config,
) -> Result<(crate::signed_note::NoteSigner, crate::storage::Database), String> {
    let signer = node::load_signing_key(config).map_err(|e| e.to_string())?;
    let db = crate::storage::Database::open_read_only(&config.database)
        .await
        .map_err(|e| format!("{}: database.url: {e}", config.source.display()))?;
    Ok((signer, db))
}

/// Reads the log in one snapshot and closes the database.
async fn snapshot(db: crate::storage::Database) -> Result<crate::storage::AuditSnapshot, String> {
    let result = crate::storage::audit_snapshot(&db).await;
    db.close().await;
    result.map_err(|e| format!("database: {e}"))
}

/// Why [`verify_audit_log`] did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditVerifyError {
    /// The node's key or database could not be opened or read (exit code 2).
    Usage(String),
    /// The log failed a check (exit code 1); the message names the first bad index if any.
    Failed(String),
}

impl AuditVerifyError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AuditVerifyError::Usage(_) => EXIT_USAGE,
            AuditVerifyError::Failed(_) => EXIT_CHECK_FAILED,
        }
    }
}

impl std::fmt::Display for AuditVerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditVerifyError::Usage(message) => f.write_str(message),
            AuditVerifyError::Failed(problem) => write!(f, "audit verification failed: {problem}"),
        }
    }
}

impl std::error::Error for AuditVerifyError {}

/// The core of `audit verify`: reads the node's log from its database, opened read-only, in one
/// snapshot, and checks every entry, the tree and every signed checkpoint, plus a consistency
/// proof from `against` (a signed checkpoint kept outside the node) or, without it, from the
/// checkpoint the node last published. Safe while the node runs. The demo uses it too.
pub async fn verify_audit_log(
    config: &Config,
    against: Option<&str>,
) -> Result<crate::audit::verify::Verified, AuditVerifyError> {
    let (signer, db) = open_audited_node(config)
        .await
        .map_err(AuditVerifyError::Usage)?;
    // The state file first: what this node published can only grow, so reading it before the
    // database never makes an honest live log look short.
    let published_path = crate::write_path::published_state_path(&config.audit.signing_key);
    let published = match crate::write_path::read_published(&published_path, &signer) {
        Ok(published) => published,
        Err(e) => {
            db.close().await;
            return Err(AuditVerifyError::Failed(e.to_string()));
        }
    };
    let snapshot = snapshot(db).await.map_err(AuditVerifyError::Usage)?;
    let bytes: Vec<&[u8]> = snapshot
        .entries
        .iter()
        .map(|e| e.entry.as_slice())
        .collect();
    let mut leaf_hashes = Vec::with_capacity(snapshot.entries.len());
    for (position, entry) in snapshot.entries.iter().enumerate() {
        let hash = <[u8; 32]>::try_from(entry.leaf_hash.as_slice()).map_err(|_| {
            AuditVerifyError::Failed(format!(
                "entry {position}: the stored leaf hash is not 32 bytes"
            ))
        })?;
        leaf_hashes.push(hash);
    }
    let notes: Vec<&str> = snapshot.checkpoints.iter().map(String::as_str).collect();
    let stored = bytes.len() as u64;
    // Without --against, the published checkpoint is the one to extend: it left the node.
    // (When the log is shorter than it, the per-entry checks run first, so that an edit is
    // named where it is; the shortness is reported after them.)
    let implicit = match (against, &published) {
        (None, Some(p)) if p.head.size <= stored => std::fs::read_to_string(&published_path).ok(),
        _ => None,
    };
    let verified = crate::audit::verify::verify_log(
        &bytes,
        Some(&leaf_hashes),
        &notes,
        signer.verifier_key(),
        against.or(implicit.as_deref()),
    )
    .map_err(|failure| AuditVerifyError::Failed(failure.to_string()))?;
    if let Some(published) = &published
        && published.head.size > verified.size
    {
        return Err(AuditVerifyError::Failed(format!(
            "entry {}: the log ends there, but this node published a checkpoint of size {} ({})",
            verified.size,
            published.head.size,
            published_path.display()
        )));
    }
    // The stored tree state must be the tree of the entries, or the next commit would sign
    // over something else.
    if let Some((tree, _)) = &snapshot.tree
        && (tree.frontier.size() != verified.size || tree.root != verified.root)
    {
        return Err(AuditVerifyError::Failed(format!(
            "the stored tree state (size {}) does not match the {} entries",
            tree.frontier.size(),
            verified.size
        )));
    }
    Ok(verified)
}

async fn audit_verify(config: PathBuf, against: Option<PathBuf>) -> u8 {
    let against = match read_against(against.as_deref()) {
        Ok(against) => against,
        Err(code) => return code,
    };
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    match verify_audit_log(&config, against.as_deref()).await {
        Ok(verified) => {
            print_verified(&verified, against.is_some());
            EXIT_OK
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

async fn audit_export(config: PathBuf, out: PathBuf) -> u8 {
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let (_signer, db) = match open_audited_node(&config).await {
        Ok(opened) => opened,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let snapshot = match snapshot(db).await {
        Ok(snapshot) => snapshot,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let Some((_, checkpoint)) = &snapshot.tree else {
        return fail(EXIT_USAGE, "the audit log is empty: nothing to export");
    };
    let bytes: Vec<&[u8]> = snapshot
        .entries
        .iter()
        .map(|e| e.entry.as_slice())
        .collect();
    match crate::audit::tiles::export(&out, &bytes, checkpoint) {
        Ok(summary) => {
            println!(
                "exported {} entries to {} ({} hash tiles, {} entry bundles, {} bytes)",
                summary.size,
                out.display(),
                summary.hash_tiles,
                summary.entry_bundles,
                summary.bytes
            );
            EXIT_OK
        }
        Err(e) => fail(EXIT_USAGE, format!("export: {e}")),
    }
}

fn token(
    config_path: &std::path::Path,
    roles: &[Role],
    sub: &str,
    unit: Option<&str>,
    ttl: i64,
) -> u8 {
    let _ = crate::jwt::install_crypto_provider();
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let Some(key_path) = &config.local_api.dev_token_key else {
        return fail(
            EXIT_USAGE,
            format!(
                "{}: local_api.dev_token_key: not set; this node has no development token issuer \
                 (tokens come from the organisation's identity provider)",
                config_path.display()
            ),
        );
    };
    let pem = match std::fs::read_to_string(key_path) {
        Ok(pem) => pem,
        Err(e) => {
            return fail(
                EXIT_USAGE,
                format!(
                    "{}: local_api.dev_token_key: {}: {e}",
                    config_path.display(),
                    key_path.display()
                ),
            );
        }
    };
    let issuer = match DevIssuer::from_pem(
        &pem,
        &config.local_api.dev_token_kid,
        &config.local_api.issuer,
        &config.local_api.audience,
    ) {
        Ok(issuer) => issuer,
        Err(e) => return fail(EXIT_USAGE, format!("local_api.dev_token_key: {e}")),
    };
    let token = issuer.mint(
        sub,
        roles,
        unit,
        ttl,
        OffsetDateTime::now_utc().unix_timestamp(),
    );
    println!("{token}");
    EXIT_OK
}
