//! `brobygger demo`: a fresh three-node development federation on loopback, and the story of
//! one (made-up) family told step by step through the nodes' real local APIs.
//!
//! The demo runs `pki init` into a directory, starts Herning Kommune, Fredericia Kommune and
//! Red Barnet in this process (SQLite, listeners on ports the OS chooses), publishes the manifest
//! with their real ports as the next serial, signed with the operator's key, and then calls the
//! local APIs over HTTPS (trusting the generated CA) with development tokens, exactly as an
//! organisation's own systems would. Each step is a small function that narrates what it does
//! and returns what it observed; a line starting with `✓` states an outcome (the integration
//! test reads them). Nothing here is real personal data: the keys are obviously fake
//! (`sag-2026-0042`, `deltager-0017`).
//!
//! CLI code: `anyhow` is allowed here, as in `cli`.

use crate::api::consents::{BoundV1, ConsentRecordedV1, ConsentViewV1, WithdrawnV1};
use crate::api::messages::{InboxPageV1, MessageStatusV1};
use crate::api::transparency::TransparencyReportV1;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::entry::{self, Decision};
use crate::audit::merkle::{self, Hash};
use crate::cli::{EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::{Config, DatabaseUrl};
use crate::domain::{FederationName, OrgId, OrgKind};
use crate::jwt::{DevIssuer, Role};
use crate::manifest::ManifestDocV1;
use crate::node::{self, Clock, RunningNode};
use crate::pki::{self, InitOptions, OrgSpec};
use crate::signed_note::VerifierKey;
use crate::wire::{AckActionV1, AckV1, ReceiptV1};
use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine as _;
use reqwest::Method;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The development federation's name.
pub const FEDERATION: &str = "brobygger.test";
/// The municipality that records the consent and refers the family.
pub const KOMMUNE: &str = "herning-kommune";
/// The other municipality: a member of the federation with no part in this family's story.
pub const OTHER_KOMMUNE: &str = "fredericia-kommune";
/// The NGO that runs the toddler club.
pub const NGO: &str = "red-barnet";
/// The organisational unit every demo token names, at each organisation.
pub const UNIT: &str = "familieafdelingen";
/// Herning's (made-up) case number for the family.
pub const CASE_KEY: &str = "sag-2026-0042";
/// Red Barnet's (made-up) participant number for the family.
pub const CLUB_KEY: &str = "deltager-0017";

/// How long the demo waits for one delivery before it calls the step failed.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
/// How long the tokens printed for exploring live.
const EXPLORE_TOKEN_TTL_SECS: i64 = 8 * 3600;

/// `brobygger demo [--dir DIR] [--exit]`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to create the federation; a new temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// Stop after the story instead of waiting for Ctrl-C.
    pub exit: bool,
}

/// The people of the story: who a token is for, and the one role they act in.
#[derive(Debug, Clone, Copy)]
struct Person {
    sub: &'static str,
    role: Role,
}

const HEALTH_VISITOR_RECORDS: Person = Person {
    sub: "sundhedsplejerske-demo",
    role: Role::ConsentAdmin,
};
const HEALTH_VISITOR_SENDS: Person = Person {
    sub: "sundhedsplejerske-demo",
    role: Role::Submitter,
};
const HERNING_CASEWORKER: Person = Person {
    sub: "sagsbehandler-demo",
    role: Role::Caseworker,
};
const HERNING_CONSENT_ADMIN: Person = Person {
    sub: "samtykke-demo",
    role: Role::ConsentAdmin,
};
const CLUB_CONSENT_ADMIN: Person = Person {
    sub: "klubleder-demo",
    role: Role::ConsentAdmin,
};
const CLUB_SYSTEM: Person = Person {
    sub: "klubsystem-demo",
    role: Role::Submitter,
};
const CLUB_CASEWORKER: Person = Person {
    sub: "klubmedarbejder-demo",
    role: Role::Caseworker,
};

/// Runs the demo; returns the exit code (0 ok, 1 a step failed, 2 usage or setup error).
pub async fn run(options: Options) -> u8 {
    crate::identity::install_default_crypto_provider();
    let _ = crate::jwt::install_crypto_provider();
    let dir = match prepare_dir(options.dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let mut shutdown = Box::pin(shutdown_signal());
    println!("Brobygger demo: one family, two organisations, one consent");
    println!("===========================================================");
    println!();
    let federation = tokio::select! {
        started = Federation::start(&dir) => started,
        () = &mut shutdown => {
            println!("Interrupted while starting.");
            return EXIT_CHECK_FAILED;
        }
    };
    let federation = match federation {
        Ok(federation) => federation,
        Err(StartFailure::Usage(e)) => return fail(EXIT_USAGE, &e),
        Err(StartFailure::Failed(e)) => return fail(EXIT_CHECK_FAILED, &e),
    };
    let outcome = tokio::select! {
        story = tell_the_story(&federation) => Some(story),
        () = &mut shutdown => None,
    };
    let code = match outcome {
        None => {
            println!();
            println!("Interrupted; stopping the nodes.");
            EXIT_CHECK_FAILED
        }
        Some(Err(e)) => {
            println!();
            println!("✗ The demo stopped at a failed step; stopping the nodes.");
            eprintln!("error: {e:#}");
            EXIT_CHECK_FAILED
        }
        Some(Ok(story)) => {
            federation.print_where_things_are(&story);
            if options.exit {
                println!();
                println!("--exit: stopping the nodes now.");
            } else {
                if let Err(e) = federation.print_how_to_explore(&story) {
                    eprintln!("error: {e:#}");
                }
                println!();
                println!("The three nodes keep running. Press Ctrl-C to stop them.");
                shutdown.as_mut().await;
                println!();
                println!("Stopping the nodes...");
            }
            EXIT_OK
        }
    };
    federation.stop().await;
    if code == EXIT_OK {
        println!("Stopped. The data stays in {}.", dir.display());
    }
    code
}

fn fail(code: u8, error: &anyhow::Error) -> u8 {
    eprintln!("error: {error:#}");
    code
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The directory to use: `dir` (created if missing), or a new one under the temporary directory.
fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            dir.to_path_buf()
        }
        None => {
            let random = crate::consent::random_bytes::<4>()
                .map_err(|e| anyhow!("cannot name a temporary directory: {e}"))?;
            let dir = std::env::temp_dir().join(format!("brobygger-demo-{}", hex::encode(random)));
            std::fs::create_dir(&dir).with_context(|| format!("{}", dir.display()))?;
            dir
        }
    };
    std::path::absolute(&dir).with_context(|| format!("{}", dir.display()))
}

/// Why the federation could not start: the directory is unusable (exit 2), or something else.
pub enum StartFailure {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
}

/// One running node of the demo, with the development issuer for its tokens.
pub struct DemoNode {
    pub org: OrgId,
    pub kind: OrgKind,
    pub config_path: PathBuf,
    pub running: RunningNode,
    issuer: DevIssuer,
}

impl DemoNode {
    /// The SQLite file of this node's database.
    pub fn database_file(&self) -> Option<&Path> {
        match &self.running.state.config.database.url {
            DatabaseUrl::Sqlite(path) => Some(path),
            DatabaseUrl::Postgres(_) => None,
        }
    }

    /// The organisation's name, as the manifest has it.
    pub fn name(&self) -> String {
        self.running
            .state
            .manifest
            .snapshot()
            .member(&self.org)
            .map(|member| member.name.clone())
            .unwrap_or_else(|| self.org.to_string())
    }

    fn token(&self, person: Person, ttl_secs: i64) -> String {
        self.issuer.mint(
            person.sub,
            &[person.role],
            Some(UNIT),
            ttl_secs,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
    }
}

/// The three nodes on loopback, and an HTTPS client that trusts the federation's CA.
pub struct Federation {
    pub dir: PathBuf,
    pub nodes: Vec<DemoNode>,
    /// The serial of the manifest that lists the nodes' real ports.
    pub manifest_serial: u64,
    client: reqwest::Client,
}

/// An answer of a local API: the HTTP status and the JSON body (or the text, as a string).
#[derive(Debug, Clone)]
struct Answer {
    what: String,
    status: u16,
    body: Value,
}

impl Answer {
    /// The body as `T`, if the status is `expected`; otherwise an error naming the reason.
    fn expect<T: DeserializeOwned>(self, expected: u16) -> anyhow::Result<T> {
        if self.status != expected {
            bail!(
                "{} answered {} {} ({}), expected {expected}",
                self.what,
                self.status,
                self.text("reason").unwrap_or("-"),
                self.text("detail").unwrap_or("no detail")
            );
        }
        serde_json::from_value(self.body)
            .with_context(|| format!("{}: an unexpected answer", self.what))
    }

    fn text(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }
}

impl Federation {
    /// `pki init` into `dir`, the three nodes started, and the manifest with their real ports
    /// published and loaded.
    pub async fn start(dir: &Path) -> Result<Federation, StartFailure> {
        let federation: FederationName = FEDERATION
            .parse()
            .map_err(|e| StartFailure::Failed(anyhow!("{e}")))?;
        let orgs = [
            (KOMMUNE, OrgKind::Municipality),
            (OTHER_KOMMUNE, OrgKind::Municipality),
            (NGO, OrgKind::Ngo),
        ];
        let mut specs = Vec::new();
        for (org, kind) in orgs {
            specs.push(OrgSpec {
                org: org
                    .parse()
                    .map_err(|e| StartFailure::Failed(anyhow!("{e}")))?,
                kind,
            });
        }
        println!(
            "Setting up a fresh development federation in {}",
            dir.display()
        );
        pki::init(&InitOptions {
            dir: dir.to_path_buf(),
            federation: federation.clone(),
            orgs: specs.clone(),
            force: false,
            base_port: 7100,
            now: OffsetDateTime::now_utc(),
        })
        .map_err(|e| {
            StartFailure::Usage(anyhow!(
                "{e} (the demo needs a fresh directory: choose another --dir, or leave it out)"
            ))
        })?;
        println!(
            "   pki init made a federation CA, a certificate and keys for each organisation, the \
             operator's key and a signed manifest (serial 1)."
        );
        let mut nodes: Vec<DemoNode> = Vec::new();
        for spec in &specs {
            match DemoNode::start(dir, spec).await {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    for node in nodes {
                        node.running.stop().await;
                    }
                    return Err(StartFailure::Failed(e));
                }
            }
        }
        let client = match https_client(&dir.join("federation/ca.pem")) {
            Ok(client) => client,
            Err(e) => {
                for node in nodes {
                    node.running.stop().await;
                }
                return Err(StartFailure::Failed(e));
            }
        };
        let mut started = Federation {
            dir: dir.to_path_buf(),
            nodes,
            manifest_serial: 1,
            client,
        };
        match started.publish_real_ports(&federation).await {
            Ok(serial) => started.manifest_serial = serial,
            Err(e) => {
                started.stop().await;
                return Err(StartFailure::Failed(e));
            }
        }
        for node in &started.nodes {
            println!(
                "   {:<19} {:<15} federation https://{}   local API https://{}",
                node.name(),
                format!("({})", node.kind),
                node.running.federation_addr,
                node.running.local_addr
            );
        }
        println!(
            "   The operator signed manifest serial {} with these real ports; all three nodes \
             loaded it.",
            started.manifest_serial
        );
        println!();
        Ok(started)
    }

    /// Re-publishes the manifest with the nodes' real federation ports as the next serial,
    /// signed with the operator's key, and has every node load it now.
    async fn publish_real_ports(&self, federation: &FederationName) -> anyhow::Result<u64> {
        let fed_dir = self.dir.join("federation");
        let json_path = fed_dir.join("manifest.json");
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("{}", json_path.display()))?;
        let mut doc: ManifestDocV1 =
            serde_json::from_str(&text).with_context(|| format!("{}", json_path.display()))?;
        doc.serial += 1;
        for member in &mut doc.members {
            if let Some(node) = self.nodes.iter().find(|n| n.org.as_str() == member.org_id) {
                member.endpoint = format!("https://{}", node.running.federation_addr);
            }
        }
        let json = serde_json::to_string_pretty(&doc)?;
        let operator = pki::load_note_signer(
            &fed_dir.join("operator.key"),
            &pki::operator_key_name(federation),
        )?;
        let note = pki::sign_manifest_text(&json, &operator)?;
        pki::write_file(&json_path, format!("{json}\n").as_bytes(), false)?;
        pki::write_file(&fed_dir.join("manifest.note"), note.as_bytes(), false)?;
        for node in &self.nodes {
            node.running
                .state
                .reload_manifest()
                .await
                .with_context(|| {
                    format!("{} did not load manifest serial {}", node.org, doc.serial)
                })?;
            let loaded = node.running.state.manifest.snapshot().serial;
            ensure!(
                loaded == doc.serial,
                "{} runs manifest serial {loaded}, not {}",
                node.org,
                doc.serial
            );
        }
        Ok(doc.serial)
    }

    pub fn node(&self, org: &str) -> anyhow::Result<&DemoNode> {
        self.nodes
            .iter()
            .find(|node| node.org.as_str() == org)
            .ok_or_else(|| anyhow!("no node {org}"))
    }

    fn local_url(&self, org: &str, path: &str) -> anyhow::Result<String> {
        Ok(format!(
            "https://{}{path}",
            self.node(org)?.running.local_addr
        ))
    }

    /// Calls `org`'s local API as `person`.
    async fn call(
        &self,
        org: &str,
        person: Person,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let what = format!("{method} {path} at {org}");
        let token = self.node(org)?.token(person, 600);
        let mut request = self
            .client
            .request(method, self.local_url(org, path)?)
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{what}: no answer"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("{what}: the answer could not be read"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { what, status, body })
    }

    /// Fetches a page of `org`'s local API as text (the transparency report's HTML).
    async fn get_text(&self, org: &str, person: Person, path: &str) -> anyhow::Result<String> {
        let token = self.node(org)?.token(person, 600);
        let response = self
            .client
            .get(self.local_url(org, path)?)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {path} at {org}: no answer"))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        ensure!(
            status == 200,
            "GET {path} at {org} answered {status}: {text}"
        );
        Ok(text)
    }

    /// Polls `GET /api/v1/messages/{id}` at the sender until the message is delivered; a
    /// refusal, a cancellation or the deadline is an error.
    async fn wait_delivered(&self, org: &str, message_id: &str) -> anyhow::Result<MessageStatusV1> {
        let path = format!("/api/v1/messages/{message_id}");
        let started = Instant::now();
        loop {
            let status: MessageStatusV1 = self
                .call(org, status_reader(org), Method::GET, &path, None)
                .await?
                .expect(200)?;
            match status.status.as_str() {
                "delivered" => return Ok(status),
                "refused" | "cancelled" => bail!(
                    "{} {message_id} from {org} was {} ({})",
                    status.message_type,
                    status.status,
                    status.reason.as_deref().unwrap_or("no reason given")
                ),
                _ => {}
            }
            ensure!(
                started.elapsed() < DELIVERY_DEADLINE,
                "{} {message_id} from {org} was not delivered within {} s (status {}, {} attempts)",
                status.message_type,
                DELIVERY_DEADLINE.as_secs(),
                status.status,
                status.attempts
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The messages in `org`'s inbox under a consent, as its caseworker reads them.
    async fn inbox(&self, org: &str, consent_id: &str) -> anyhow::Result<InboxPageV1> {
        let person = if org == NGO {
            CLUB_CASEWORKER
        } else {
            HERNING_CASEWORKER
        };
        self.call(
            org,
            person,
            Method::GET,
            &format!("/api/v1/inbox?consent={consent_id}"),
            None,
        )
        .await?
        .expect(200)
    }

    /// Where everything is, on disk.
    fn print_where_things_are(&self, story: &Story) {
        let dir = &self.dir;
        let relative = |path: &Path| path.strip_prefix(dir).unwrap_or(path).display().to_string();
        println!();
        println!(
            "Where the data lives: {}/ (it stays after the nodes stop)",
            dir.display()
        );
        row(
            "federation/",
            &format!(
                "the CA (ca.pem), the operator's key, the signed manifest (manifest.note, serial {})",
                self.manifest_serial
            ),
        );
        for node in &self.nodes {
            row(
                &format!("{}, {}/", relative(&node.config_path), node.org),
                &format!("{}'s node config, keys and certificates", node.name()),
            );
            match node.database_file() {
                Some(file) => row(
                    &relative(file),
                    &format!(
                        "{}'s SQLite database: audit log, consents, inbox, outbox",
                        node.name()
                    ),
                ),
                None => row("(PostgreSQL)", &format!("{}'s database", node.name())),
            }
        }
        row(
            &relative(&story.audit.kept_checkpoint_file),
            "the checkpoint of Herning's log that Red Barnet kept (step 3)",
        );
        row(
            &relative(&story.audit.report_file),
            "the family's transparency report (Danish)",
        );
        row(
            &relative(&story.audit.report_file_en),
            "the same in English",
        );
        let exe = current_exe();
        println!();
        println!("Check the audit logs yourself, also after the nodes have stopped:");
        println!(
            "   {exe} audit verify --config {} --against {}",
            dir.join(format!("{KOMMUNE}.toml")).display(),
            story.audit.kept_checkpoint_file.display()
        );
        println!(
            "   {exe} audit verify --config {}",
            dir.join(format!("{NGO}.toml")).display()
        );
    }

    /// Copy-pasteable commands for the running nodes, with freshly minted tokens.
    fn print_how_to_explore(&self, story: &Story) -> anyhow::Result<()> {
        let ca = self.dir.join("federation/ca.pem");
        let explorer = |org: &str| -> anyhow::Result<String> {
            let node = self.node(org)?;
            Ok(node.issuer.mint(
                "demo-explorer",
                &[
                    Role::Caseworker,
                    Role::ConsentAdmin,
                    Role::Submitter,
                    Role::Auditor,
                    Role::Admin,
                ],
                Some(UNIT),
                EXPLORE_TOKEN_TTL_SECS,
                OffsetDateTime::now_utc().unix_timestamp(),
            ))
        };
        let herning = self.local_url(KOMMUNE, "")?;
        let club = self.local_url(NGO, "")?;
        let fredericia = self.local_url(OTHER_KOMMUNE, "")?;
        let curl = format!("curl --cacert {}", ca.display());
        let consent = &story.referral.consent_id;
        println!();
        println!(
            "Explore while the nodes run. These tokens hold every role, for unit {UNIT}, and live \
             for 8 hours:"
        );
        println!("   HERNING_TOKEN='{}'", explorer(KOMMUNE)?);
        println!("   RED_BARNET_TOKEN='{}'", explorer(NGO)?);
        println!();
        println!("   {curl} -H \"Authorization: Bearer $HERNING_TOKEN\" {herning}/api/v1/inbox");
        println!(
            "   {curl} -H \"Authorization: Bearer $HERNING_TOKEN\" \
             {herning}/api/v1/subjects/{CASE_KEY}/timeline"
        );
        println!(
            "   {curl} -H \"Authorization: Bearer $HERNING_TOKEN\" {herning}/api/v1/consents/{consent}"
        );
        println!(
            "   {curl} -H \"Authorization: Bearer $HERNING_TOKEN\" \
             \"{herning}/api/v1/consents/{consent}/transparency?lang=en&format=json\""
        );
        println!(
            "   {curl} -H \"Authorization: Bearer $RED_BARNET_TOKEN\" \
             {club}/api/v1/subjects/{CLUB_KEY}/timeline"
        );
        println!(
            "   {curl} -H \"Authorization: Bearer $RED_BARNET_TOKEN\" \
             \"{club}/api/v1/inbox?consent={consent}\""
        );
        println!(
            "   {curl} -H \"Authorization: Bearer $HERNING_TOKEN\" {herning}/api/v1/audit/checkpoint"
        );
        println!(
            "   {curl} -H \"Authorization: Bearer $RED_BARNET_TOKEN\" -X POST \
             {club}/api/v1/peers/{OTHER_KOMMUNE}/ping"
        );
        println!("   {curl} {herning}/api/v1/openapi.json");
        println!("   {curl} {fredericia}/readyz");
        println!(
            "   More tokens: {} token --config {} --role caseworker --sub me --unit {UNIT}",
            current_exe(),
            self.dir.join(format!("{KOMMUNE}.toml")).display()
        );
        Ok(())
    }

    /// Stops all three nodes gracefully.
    pub async fn stop(self) {
        futures_util::future::join_all(self.nodes.into_iter().map(|node| node.running.stop()))
            .await;
    }
}

/// The person whose token reads a message's delivery status at `org`: whoever submitted it.
fn status_reader(org: &str) -> Person {
    if org == NGO {
        CLUB_SYSTEM
    } else {
        HEALTH_VISITOR_SENDS
    }
}

impl DemoNode {
    /// Starts `spec`'s node from its generated config, both listeners on ports the OS chooses.
    async fn start(dir: &Path, spec: &OrgSpec) -> anyhow::Result<DemoNode> {
        let config_path = dir.join(format!("{}.toml", spec.org));
        // Only these overrides: the demo ignores BROBYGGER_* in the environment, so that it
        // always runs on loopback with SQLite.
        let overrides = [
            ("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0"),
            ("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0"),
            ("BROBYGGER_SERVER__WORKERS", "1"),
            ("BROBYGGER_SERVER__SHUTDOWN_TIMEOUT_SECS", "2"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let config = Config::load_with_overrides(&config_path, &overrides)?;
        let issuer = dev_issuer(&config)?;
        let running = node::start(config, Clock::system())
            .await
            .with_context(|| format!("{} did not start", spec.org))?;
        Ok(DemoNode {
            org: spec.org.clone(),
            kind: spec.kind,
            config_path,
            running,
            issuer,
        })
    }
}

/// The development token issuer named in a node's config.
fn dev_issuer(config: &Config) -> anyhow::Result<DevIssuer> {
    let path = config.local_api.dev_token_key.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: local_api.dev_token_key is not set",
            config.source.display()
        )
    })?;
    let pem = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    DevIssuer::from_pem(
        &pem,
        &config.local_api.dev_token_kid,
        &config.local_api.issuer,
        &config.local_api.audience,
    )
    .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// An HTTPS client (TLS 1.3, ring) that trusts only the development federation's CA.
fn https_client(ca_pem: &Path) -> anyhow::Result<reqwest::Client> {
    let bytes = std::fs::read(ca_pem).with_context(|| format!("{}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        roots
            .add(cert.with_context(|| format!("{}", ca_pem.display()))?)
            .with_context(|| format!("{}", ca_pem.display()))?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(crate::identity::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(Arc::new(roots))
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The path of this program, for commands the reader can paste.
fn current_exe() -> String {
    std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "brobygger".into())
}

/// `YYYY-MM` of a date.
fn month_of(date: time::Date) -> String {
    format!("{:04}-{:02}", date.year(), u8::from(date.month()))
}

/// An ack's actions as `action count (basis)`, comma-separated.
fn actions_text(actions: &[AckActionV1]) -> String {
    let code = |value: Value| value.as_str().map(str::to_owned).unwrap_or_default();
    actions
        .iter()
        .map(|action| {
            let name = code(serde_json::to_value(action.action).unwrap_or(Value::Null));
            match action.basis {
                Some(basis) => format!(
                    "{name} {} ({})",
                    action.count,
                    code(serde_json::to_value(basis).unwrap_or(Value::Null))
                ),
                None => format!("{name} {}", action.count),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A message body in words: `field value, field value, ...` (bodies hold only counts and fixed
/// choices, so this is all there is to say).
fn describe(body: &Value) -> String {
    match body.as_object() {
        Some(fields) => fields
            .iter()
            .map(|(name, value)| match value {
                Value::String(text) => format!("{} {text}", name.replace('_', " ")),
                other => format!("{} {other}", name.replace('_', " ")),
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => body.to_string(),
    }
}

/// Prints one line of a table of files: the path, then what it is.
fn row(path: &str, what: &str) {
    const WIDTH: usize = 40;
    if path.chars().count() < WIDTH {
        println!("   {path:<WIDTH$} {what}");
    } else {
        println!("   {path}");
        println!("   {:<WIDTH$} {what}", "");
    }
}

/// Prints a step's title.
fn step(number: u8, title: &str) {
    println!("{number}. {title}");
}

/// Prints a sentence of narration, indented under its step.
fn say(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

/// Prints an outcome: the lines the integration test checks.
fn outcome(text: impl AsRef<str>) {
    println!("   ✓ {}", text.as_ref());
}

// ---------------------------------------------------------------------------------------------
// The story.
// ---------------------------------------------------------------------------------------------

/// Everything the story observed, step by step.
#[derive(Debug, Clone)]
pub struct Story {
    pub referral: Referral,
    pub binding: Binding,
    pub report: AttendanceReport,
    pub refusals: Refusals,
    pub withdrawal: Withdrawal,
    pub audit: AuditCheck,
}

async fn tell_the_story(fed: &Federation) -> anyhow::Result<Story> {
    say(format!(
        "Everything below is made up: Herning's case number for the family is {CASE_KEY}, Red \
         Barnet's participant number {CLUB_KEY}. No names or CPR numbers exist anywhere."
    ));
    println!();
    let referral = consent_and_referral(fed).await.context("step 1")?;
    println!();
    let binding = bind_at_the_club(fed, &referral).await.context("step 2")?;
    println!();
    let report = report_attendance(fed, &referral).await.context("step 3")?;
    println!();
    let refusals = refuse_what_the_purpose_does_not_allow(fed, &referral)
        .await
        .context("step 4")?;
    println!();
    let withdrawal = withdraw(fed, &referral).await.context("step 5")?;
    println!();
    let audit = audit_and_transparency(fed, &referral, &report)
        .await
        .context("step 6")?;
    println!();
    outcome("the story is complete: all six steps did what they should");
    Ok(Story {
        referral,
        binding,
        report,
        refusals,
        withdrawal,
        audit,
    })
}

/// Step 1's observations.
#[derive(Debug, Clone)]
pub struct Referral {
    pub consent_id: String,
    pub binding_code: String,
    pub consent_leaf: u64,
    pub message_id: String,
    pub attempts: u32,
    /// The referral's leaf in Red Barnet's audit log, from its receipt.
    pub receipt_leaf: u64,
}

/// Step 1: the health visitor records the parents' consent for Red Barnet and refers the family
/// to the toddler club; the demo waits until the referral is delivered.
pub async fn consent_and_referral(fed: &Federation) -> anyhow::Result<Referral> {
    step(
        1,
        "A health visitor in Herning records the parents' consent and refers the family to Red \
         Barnet's toddler club.",
    );
    let today = OffsetDateTime::now_utc().date();
    let valid_until = today + time::Duration::days(179);
    let request = json!({
        "counterpart": NGO,
        "purposes": [
            {"id": "henvisning-til-klub", "version": 1},
            {"id": "smaaboernsklub-fremmoede", "version": 1},
            {"id": "svar-paa-henvisning", "version": 1},
        ],
        "consented_by": ["custody-holder-1", "custody-holder-2"],
        "policy": "all-custody-holders",
        "evidence": "paper-witnessed",
        "valid_from": today.to_string(),
        "valid_until": valid_until.to_string(),
        "retention_at_recipient_days": 365,
        "withdrawal": "contact-either-party",
        "local_subject_key": CASE_KEY,
    });
    say(format!(
        "Both parents sign a paper form: Red Barnet may receive a referral, report attendance and \
         answer the referral, from {today} to {valid_until}."
    ));
    let recorded: ConsentRecordedV1 = fed
        .call(
            KOMMUNE,
            HEALTH_VISITOR_RECORDS,
            Method::POST,
            "/api/v1/consents",
            Some(&request),
        )
        .await?
        .expect(201)?;
    say(format!(
        "Herning's node recorded it (status {}, audit entry {}) and answered with the one-time \
         binding code {} for the family's copy of the form.",
        recorded.status, recorded.audit_leaf_index, recorded.binding_code
    ));
    fed.wait_delivered(KOMMUNE, &recorded.notice_message_id)
        .await
        .context("the consent notice to Red Barnet")?;
    outcome(format!(
        "consent recorded at Herning Kommune (audit entry {}) and admitted by Red Barnet",
        recorded.audit_leaf_index
    ));

    let submission = json!({
        "type": "referral",
        "recipient": NGO,
        "purpose": {"id": "henvisning-til-klub", "version": 1},
        "consent_id": recorded.consent_id,
        "body": {
            "programme": "smaaboernsklub",
            "requested_start_month": month_of(today),
            "child_age_band": "1-2",
            "referrer_role": "health-visitor",
            "contact_channel": "club-contacts-family",
        },
    });
    let accepted: Value = fed
        .call(
            KOMMUNE,
            HEALTH_VISITOR_SENDS,
            Method::POST,
            "/api/v1/messages",
            Some(&submission),
        )
        .await?
        .expect(202)?;
    let message_id = accepted
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the accepted referral has no message id: {accepted}"))?
        .to_owned();
    let delivered = fed.wait_delivered(KOMMUNE, &message_id).await?;
    let receipt = delivered
        .receipt
        .ok_or_else(|| anyhow!("the referral is delivered without a receipt"))?;
    say(format!(
        "The referral (toddler club from {}, child aged 1-2, the club contacts the family; no \
         names, no free text) was checked by Herning's node as Red Barnet would check it, queued, \
         and delivered over mutual TLS.",
        month_of(today)
    ));
    outcome(format!(
        "referral delivered to Red Barnet (attempt {}; Red Barnet's receipt: leaf {} of its audit \
         log)",
        delivered.attempts, receipt.leaf_index
    ));
    Ok(Referral {
        consent_id: recorded.consent_id,
        binding_code: recorded.binding_code,
        consent_leaf: recorded.audit_leaf_index,
        message_id,
        attempts: delivered.attempts,
        receipt_leaf: receipt.leaf_index,
    })
}

/// Step 2's observations.
#[derive(Debug, Clone)]
pub struct Binding {
    pub leaf: u64,
    /// Messages the club's caseworker sees under the consent once it is bound.
    pub inbox_items: usize,
}

/// Step 2: at the first meeting the club binds the consent to its own participant number with
/// the code from the family's copy of the form.
pub async fn bind_at_the_club(fed: &Federation, referral: &Referral) -> anyhow::Result<Binding> {
    step(
        2,
        "The family comes to the club; the club binds them with the code from the consent form.",
    );
    let bound: BoundV1 = fed
        .call(
            NGO,
            CLUB_CONSENT_ADMIN,
            Method::POST,
            &format!("/api/v1/consents/{}/bind", referral.consent_id),
            Some(&json!({
                "binding_code": referral.binding_code,
                "local_subject_key": CLUB_KEY,
            })),
        )
        .await?
        .expect(200)?;
    ensure!(bound.bound, "the bind answer says the consent is not bound");
    outcome(format!(
        "consent bound at Red Barnet to {CLUB_KEY} (audit entry {}); the code cannot be used again",
        bound.audit_leaf_index
    ));
    let inbox = fed.inbox(NGO, &referral.consent_id).await?;
    let referral_item = inbox
        .items
        .iter()
        .find(|item| item.message_id == referral.message_id)
        .ok_or_else(|| anyhow!("the referral is not in Red Barnet's inbox"))?;
    say(format!(
        "Now the club's staff (unit {UNIT}) can read the referral in Red Barnet's inbox: {}.",
        describe(&referral_item.body)
    ));
    Ok(Binding {
        leaf: bound.audit_leaf_index,
        inbox_items: inbox.items.len(),
    })
}

/// Step 3's observations.
#[derive(Debug, Clone)]
pub struct AttendanceReport {
    pub message_id: String,
    pub receipt_leaf: u64,
    /// The size of Herning's tree in the checkpoint the receipt carries.
    pub checkpoint_size: u64,
    /// That checkpoint, a signed note, as Red Barnet keeps it.
    pub checkpoint: String,
}

/// Step 3: the club reports the month's attendance; the delivery comes back with a receipt
/// from Herning's audit log, which the club's node verified and the demo checks again.
pub async fn report_attendance(
    fed: &Federation,
    referral: &Referral,
) -> anyhow::Result<AttendanceReport> {
    let month = month_of(OffsetDateTime::now_utc().date());
    step(
        3,
        &format!("The club reports the family's attendance for {month} to Herning."),
    );
    let submission = json!({
        "type": "activity-summary",
        "recipient": KOMMUNE,
        "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
        "consent_id": referral.consent_id,
        "body": {
            "month": month,
            "programme": "smaaboernsklub",
            "enrolment_status": "enrolled",
            "sessions_offered": 4,
            "sessions_attended": 3,
            "next_step": "continue",
        },
    });
    let accepted: Value = fed
        .call(
            NGO,
            CLUB_SYSTEM,
            Method::POST,
            "/api/v1/messages",
            Some(&submission),
        )
        .await?
        .expect(202)?;
    let message_id = accepted
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the accepted summary has no message id: {accepted}"))?
        .to_owned();
    let delivered = fed.wait_delivered(NGO, &message_id).await?;
    let receipt = delivered
        .receipt
        .ok_or_else(|| anyhow!("the summary is delivered without a receipt"))?;
    let manifest = fed.node(NGO)?.running.state.manifest.snapshot();
    let herning_key = &manifest
        .member(&KOMMUNE.parse()?)
        .ok_or_else(|| anyhow!("Herning Kommune is not in Red Barnet's manifest"))?
        .audit_key;
    let checkpoint_size = check_receipt(&receipt, herning_key)?;
    say(format!(
        "\"3 of 4 sessions, continues\" went out as an activity-summary. Herning answered with a \
         receipt from its own audit log; Red Barnet's node verified it before marking the message \
         delivered, and the demo checked again: Herning's signature on the checkpoint (key from \
         the manifest) and the inclusion proof of entry {} in a tree of {checkpoint_size}.",
        receipt.leaf_index
    ));
    outcome(format!(
        "activity-summary delivered to Herning Kommune: receipt leaf {}, in Herning's signed \
         checkpoint of size {checkpoint_size}",
        receipt.leaf_index
    ));
    let inbox = fed.inbox(KOMMUNE, &referral.consent_id).await?;
    if let Some(item) = inbox
        .items
        .iter()
        .find(|item| item.message_id == message_id)
    {
        say(format!(
            "Herning's caseworker reads it in the inbox (the read is audited too): {}.",
            describe(&item.body)
        ));
    } else {
        bail!("the summary is not in Herning's inbox");
    }
    Ok(AttendanceReport {
        message_id,
        receipt_leaf: receipt.leaf_index,
        checkpoint_size,
        checkpoint: receipt.checkpoint,
    })
}

/// Checks a receipt's parts that need no copy of the sent bytes: the checkpoint's signature
/// under `key`, the entry at its index admitting a message, and the inclusion proof to the
/// checkpoint's root. Returns the checkpoint's tree size.
fn check_receipt(receipt: &ReceiptV1, key: &VerifierKey) -> anyhow::Result<u64> {
    let checkpoint = Checkpoint::open(&receipt.checkpoint, key)
        .map_err(|e| anyhow!("the receipt's checkpoint: {e}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&receipt.entry)
        .context("the receipt's entry is not base64")?;
    let decoded = entry::decode(&bytes).map_err(|e| anyhow!("the receipt's entry: {e}"))?;
    ensure!(
        decoded.idx == receipt.leaf_index,
        "the receipt's entry is at {}, not {}",
        decoded.idx,
        receipt.leaf_index
    );
    ensure!(
        decoded.record.decision == Some(Decision::Permit),
        "the receipt's entry does not admit the message"
    );
    let mut proof: Vec<Hash> = Vec::new();
    for hash in &receipt.inclusion_proof {
        let mut node = [0u8; 32];
        hex::decode_to_slice(hash, &mut node).context("the inclusion proof is not hex")?;
        proof.push(node);
    }
    ensure!(
        merkle::verify_inclusion(
            receipt.leaf_index,
            checkpoint.head.size,
            &merkle::leaf_hash(&bytes),
            &proof,
            &checkpoint.head.root,
        ),
        "the inclusion proof does not lead to the checkpoint's root"
    );
    Ok(checkpoint.head.size)
}

/// A refusal as the local API answered it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    pub pointer: Option<String>,
}

/// Step 4's observations.
#[derive(Debug, Clone)]
pub struct Refusals {
    /// An activity summary with a free-text field no schema or purpose has.
    pub extra_field: Refusal,
    /// The answer to the referral filed under the attendance purpose.
    pub wrong_purpose: Refusal,
    /// The same answer under its own purpose, delivered.
    pub answer_id: String,
}

/// Submits `submission` at Red Barnet and expects a refusal.
async fn refused(fed: &Federation, submission: &Value) -> anyhow::Result<Refusal> {
    let answer = fed
        .call(
            NGO,
            CLUB_SYSTEM,
            Method::POST,
            "/api/v1/messages",
            Some(submission),
        )
        .await?;
    ensure!(
        answer.status >= 400,
        "Red Barnet's node accepted what it should have refused ({}): {}",
        answer.status,
        answer.body
    );
    let reason = answer
        .text("reason")
        .ok_or_else(|| anyhow!("a refusal without a reason: {}", answer.body))?
        .to_owned();
    Ok(Refusal {
        status: answer.status,
        pointer: answer.text("pointer").map(str::to_owned),
        reason,
    })
}

fn refusal_text(refusal: &Refusal) -> String {
    match &refusal.pointer {
        Some(pointer) => format!("{} {} at {pointer}", refusal.status, refusal.reason),
        None => format!("{} {}", refusal.status, refusal.reason),
    }
}

/// Step 4: the club tries to send more than the purposes allow, and its own node refuses at the
/// boundary with a stable reason (and the JSON pointer of the offending field).
pub async fn refuse_what_the_purpose_does_not_allow(
    fed: &Federation,
    referral: &Referral,
) -> anyhow::Result<Refusals> {
    step(
        4,
        "The club tries to send more than the consent's purposes allow.",
    );
    let month = month_of(OffsetDateTime::now_utc().date());
    let with_note = json!({
        "type": "activity-summary",
        "recipient": KOMMUNE,
        "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
        "consent_id": referral.consent_id,
        "body": {
            "month": month,
            "programme": "smaaboernsklub",
            "enrolment_status": "enrolled",
            "sessions_offered": 4,
            "sessions_attended": 3,
            "next_step": "continue",
            "note": "Mor virkede træt i dag",
        },
    });
    let extra_field = refused(fed, &with_note).await?;
    say(
        "A volunteer adds a free-text note to the summary (\"Mor virkede træt i dag\"). The \
         attendance purpose allows six fields, all counts and fixed choices, and the v1 schema \
         has exactly those, so the schema check, which runs before the purpose check, stops it. \
         (In the starter catalogue the purposes allow every field their schemas have; a purpose \
         narrower than its schema would answer field-not-allowed here.)",
    );
    outcome(format!("refused: {}", refusal_text(&extra_field)));

    let answer_body = json!({
        "in_reply_to": referral.message_id,
        "response": "accepted",
        "start_month": month,
    });
    let misfiled = json!({
        "type": "referral-response",
        "recipient": KOMMUNE,
        "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
        "consent_id": referral.consent_id,
        "body": answer_body,
    });
    let wrong_purpose = refused(fed, &misfiled).await?;
    say(
        "The club's system files its answer to the referral under the attendance purpose, which \
         covers activity summaries only: the purpose check refuses the message type.",
    );
    outcome(format!("refused: {}", refusal_text(&wrong_purpose)));

    let filed = json!({
        "type": "referral-response",
        "recipient": KOMMUNE,
        "purpose": {"id": "svar-paa-henvisning", "version": 1},
        "consent_id": referral.consent_id,
        "body": answer_body,
    });
    let accepted: Value = fed
        .call(
            NGO,
            CLUB_SYSTEM,
            Method::POST,
            "/api/v1/messages",
            Some(&filed),
        )
        .await?
        .expect(202)?;
    let answer_id = accepted
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the accepted answer has no message id: {accepted}"))?
        .to_owned();
    fed.wait_delivered(NGO, &answer_id).await?;
    say(
        "Neither refusal left the club, and both are entries in Red Barnet's audit log. Filed \
         under its own purpose (svar-paa-henvisning), the same answer is accepted.",
    );
    outcome(
        "referral-response (\"accepted\") delivered to Herning Kommune under svar-paa-henvisning",
    );
    Ok(Refusals {
        extra_field,
        wrong_purpose,
        answer_id,
    })
}

/// Step 5's observations.
#[derive(Debug, Clone)]
pub struct Withdrawal {
    /// What Herning did itself.
    pub local: AckV1,
    /// What Red Barnet acknowledged, from the consent view at Herning.
    pub ngo_ack: AckV1,
    pub ngo_inbox_before: usize,
    pub ngo_inbox_after: usize,
}

/// Step 5: the parents withdraw at Herning; Red Barnet deletes what it received and says so in
/// its acknowledgement, which Herning keeps with the notice.
pub async fn withdraw(fed: &Federation, referral: &Referral) -> anyhow::Result<Withdrawal> {
    step(5, "The parents withdraw their consent at Herning.");
    let id = &referral.consent_id;
    let ngo_inbox_before = fed.inbox(NGO, id).await?.items.len();
    let withdrawn: WithdrawnV1 = fed
        .call(
            KOMMUNE,
            HERNING_CONSENT_ADMIN,
            Method::POST,
            &format!("/api/v1/consents/{id}/withdraw"),
            Some(&json!({"event": "withdrawn-by-subject"})),
        )
        .await?
        .expect(200)?;
    say(format!(
        "Herning's node recorded the withdrawal (status {}, audit entry {}) and did this itself: \
         {}. A municipality keeps what it received, with its legal basis.",
        withdrawn.status,
        withdrawn.audit_leaf_index,
        actions_text(&withdrawn.local.actions)
    ));
    fed.wait_delivered(KOMMUNE, &withdrawn.notice_message_id)
        .await
        .context("the withdrawal notice to Red Barnet")?;
    let view: ConsentViewV1 = fed
        .call(
            KOMMUNE,
            HERNING_CONSENT_ADMIN,
            Method::GET,
            &format!("/api/v1/consents/{id}"),
            None,
        )
        .await?
        .expect(200)?;
    let ngo_ack = view
        .notices
        .iter()
        .find(|notice| notice.message_id == withdrawn.notice_message_id)
        .and_then(|notice| notice.ack.clone())
        .ok_or_else(|| anyhow!("Herning holds no ack for the withdrawal notice"))?;
    say(format!(
        "The withdrawal notice (always first in Herning's delivery queue) reached Red Barnet, \
         which deleted what it had received and answered with an acknowledgement that Herning \
         keeps with the notice (GET /api/v1/consents/{{id}} → notices[].ack): {}.",
        actions_text(&ngo_ack.actions)
    ));
    outcome(format!(
        "withdrawal acknowledged by Red Barnet: {}",
        actions_text(&ngo_ack.actions)
    ));
    let ngo_inbox_after = fed.inbox(NGO, id).await?.items.len();
    ensure!(
        ngo_inbox_after == 0,
        "Red Barnet still holds {ngo_inbox_after} messages under the withdrawn consent"
    );
    outcome(format!(
        "Red Barnet's inbox for this consent: {ngo_inbox_after} messages ({ngo_inbox_before} \
         before the withdrawal); the consent is {} at Herning",
        view.status
    ));
    Ok(Withdrawal {
        local: withdrawn.local,
        ngo_ack,
        ngo_inbox_before,
        ngo_inbox_after,
    })
}

/// Step 6's observations.
#[derive(Debug, Clone)]
pub struct AuditCheck {
    pub kept_checkpoint_file: PathBuf,
    pub kept_size: u64,
    pub entries: u64,
    pub checkpoints_checked: usize,
    pub report_file: PathBuf,
    pub report_file_en: PathBuf,
    pub report: TransparencyReportV1,
}

/// Step 6: an auditor verifies Herning's audit log against the checkpoint Red Barnet kept from
/// its receipt in step 3 (the same check as `brobygger audit verify --against`), then the
/// family's transparency report is fetched and saved.
pub async fn audit_and_transparency(
    fed: &Federation,
    referral: &Referral,
    report: &AttendanceReport,
) -> anyhow::Result<AuditCheck> {
    step(
        6,
        "An auditor checks Herning's audit log against the checkpoint Red Barnet kept, and the \
         family gets its transparency report.",
    );
    let kept_checkpoint_file = fed
        .dir
        .join(format!("{KOMMUNE}-checkpoint-kept-by-{NGO}.txt"));
    pki::write_file(&kept_checkpoint_file, report.checkpoint.as_bytes(), false)?;
    let herning = fed.node(KOMMUNE)?;
    let verified =
        crate::cli::verify_audit_log(&herning.running.state.config, Some(&report.checkpoint))
            .await
            .map_err(|e| anyhow!("{e}"))?;
    say(format!(
        "Red Barnet's receipt from step 3 carries a checkpoint Herning signed when its log had \
         {} entries; Red Barnet kept it. The auditor reads Herning's database read-only and \
         recomputes every entry, the Merkle tree and each signed checkpoint, then proves that \
         today's log extends the kept checkpoint, so Herning cannot have rewritten its history \
         since, not even with its own key.",
        report.checkpoint_size
    ));
    outcome(format!(
        "audit log verified: {} entries, {} signed checkpoints; it extends the checkpoint of size \
         {} that Red Barnet kept",
        verified.size, verified.checkpoints_checked, report.checkpoint_size
    ));

    let path = format!("/api/v1/consents/{}/transparency", referral.consent_id);
    let html = fed.get_text(KOMMUNE, HERNING_CASEWORKER, &path).await?;
    let report_file = fed.dir.join(format!("transparency-{KOMMUNE}.html"));
    pki::write_file(&report_file, html.as_bytes(), false)?;
    let html_en = fed
        .get_text(KOMMUNE, HERNING_CASEWORKER, &format!("{path}?lang=en"))
        .await?;
    let report_file_en = fed.dir.join(format!("transparency-{KOMMUNE}.en.html"));
    pki::write_file(&report_file_en, html_en.as_bytes(), false)?;
    let family_report: TransparencyReportV1 = fed
        .call(
            KOMMUNE,
            HERNING_CASEWORKER,
            Method::GET,
            &format!("{path}?lang=en&format=json"),
            None,
        )
        .await?
        .expect(200)?;
    say(
        "Herning's caseworker prints the family's report: built from the audit log, in plain \
         words, without identifiers. Some of its lines, in English:",
    );
    say(format!(
        "   \"{}\" ({})",
        family_report.title, family_report.status
    ));
    for line in family_report.lines.iter().take(8) {
        let purpose = line
            .purpose
            .as_deref()
            .map(|p| format!(", for \"{p}\""))
            .unwrap_or_default();
        say(format!(
            "   {}: {}, {} → {}{purpose}: {}",
            line.when, line.what, line.from, line.to, line.outcome
        ));
    }
    if family_report.lines.len() > 8 {
        say(format!("   … and {} more", family_report.lines.len() - 8));
    }
    outcome(format!(
        "transparency report saved: {} (open it in a browser; English: {})",
        report_file.display(),
        report_file_en.display()
    ));
    let fredericia = crate::storage::inbox_messages(&fed.node(OTHER_KOMMUNE)?.running.state.db)
        .await
        .map_err(|e| anyhow!("Fredericia Kommune's inbox: {e}"))?;
    ensure!(
        fredericia.is_empty(),
        "Fredericia Kommune received {} messages",
        fredericia.len()
    );
    say(format!(
        "Fredericia Kommune, a member of the same federation, never appears: the consent names \
         only Herning and Red Barnet, and Fredericia's database holds {} messages.",
        fredericia.len()
    ));
    Ok(AuditCheck {
        kept_checkpoint_file,
        kept_size: report.checkpoint_size,
        entries: verified.size,
        checkpoints_checked: verified.checkpoints_checked,
        report_file,
        report_file_en,
        report: family_report,
    })
}
