//! Test harness: a development federation with nodes started in-process on port 0, clients
//! that present chosen certificates, and helpers to sign manifests and tokens.

pub mod postgres;
pub mod process;

use brobygger::config::Config;
use brobygger::domain::{FederationName, OrgId, OrgKind};
use brobygger::manifest::ManifestDocV1;
use brobygger::node::{self, Clock, RunningNode};
use brobygger::pki::{self, InitOptions, OrgSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use time::OffsetDateTime;

pub const FEDERATION: &str = "brobygger.test";

/// The organisational unit of the users that test tokens stand for.
pub const TEST_UNIT: &str = "familieafdelingen";

/// Which database engine the nodes of a test federation use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh development federation on disk (from the real `pki init`), not yet running.
pub struct TestPki {
    pub dir: TempDir,
    pub federation: FederationName,
    #[allow(dead_code)]
    pub orgs: Vec<OrgId>,
}

impl TestPki {
    pub fn new(orgs: &[(&str, OrgKind)]) -> Self {
        brobygger::identity::install_default_crypto_provider();
        brobygger::jwt::install_crypto_provider().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let federation: FederationName = FEDERATION.parse().unwrap();
        let specs: Vec<OrgSpec> = orgs
            .iter()
            .map(|(id, kind)| OrgSpec {
                org: id.parse().unwrap(),
                kind: *kind,
            })
            .collect();
        pki::init(&InitOptions {
            dir: dir.path().to_path_buf(),
            federation: federation.clone(),
            orgs: specs.clone(),
            force: false,
            base_port: 7100,
            now: OffsetDateTime::now_utc(),
        })
        .unwrap();
        Self {
            dir,
            federation,
            orgs: specs.into_iter().map(|s| s.org).collect(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self, org: &str) -> PathBuf {
        self.path().join(format!("{org}.toml"))
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.path().join("federation/manifest.note")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path().join("federation/ca.pem")).unwrap()
    }

    /// The development CA, reloaded from disk, to issue extra certificates in tests.
    pub fn ca_issue(&self, spec: &pki::LeafSpec) -> pki::IssuedCertificate {
        let key_pem = std::fs::read_to_string(self.path().join("federation/ca.key")).unwrap();
        let cert_pem = std::fs::read_to_string(self.path().join("federation/ca.pem")).unwrap();
        issue_with_ca(&cert_pem, &key_pem, spec)
    }

    /// The current manifest document (JSON part of the signed note).
    pub fn manifest_doc(&self) -> ManifestDocV1 {
        let note = std::fs::read_to_string(self.manifest_path()).unwrap();
        let text = note.rsplit_once("\n\n").unwrap().0;
        serde_json::from_str(text).unwrap()
    }

    /// Signs `doc` with the operator key and returns the signed note.
    pub fn sign_manifest(&self, doc: &ManifestDocV1) -> String {
        let signer = pki::load_note_signer(
            &self.path().join("federation/operator.key"),
            &pki::operator_key_name(&self.federation),
        )
        .unwrap();
        pki::sign_manifest_text(&serde_json::to_string_pretty(doc).unwrap(), &signer).unwrap()
    }

    /// Signs and installs `doc` as the manifest file.
    pub fn write_manifest(&self, doc: &ManifestDocV1) {
        std::fs::write(self.manifest_path(), self.sign_manifest(doc)).unwrap();
    }

    /// A development token for `org`'s local API, valid for ten minutes from now.
    pub fn token(&self, org: &str, roles: &[brobygger::jwt::Role]) -> String {
        let config = self.config(org, &[]);
        let pem = std::fs::read_to_string(config.local_api.dev_token_key.unwrap()).unwrap();
        let issuer = brobygger::jwt::DevIssuer::from_pem(
            &pem,
            &config.local_api.dev_token_kid,
            &config.local_api.issuer,
            &config.local_api.audience,
        )
        .unwrap();
        issuer.mint(
            "test-user",
            roles,
            Some(TEST_UNIT),
            600,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
    }

    /// Loads a node's config with test overrides: both listeners on port 0, one worker.
    pub fn config(&self, org: &str, extra: &[(&str, String)]) -> Config {
        let mut overrides = vec![
            (
                "BROBYGGER_FEDERATION__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "BROBYGGER_LOCAL_API__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            ("BROBYGGER_SERVER__WORKERS".to_string(), "1".to_string()),
            (
                "BROBYGGER_SERVER__SHUTDOWN_TIMEOUT_SECS".to_string(),
                "2".to_string(),
            ),
            (
                "BROBYGGER_FEDERATION__MANIFEST_POLL_INTERVAL_MS".to_string(),
                "50".to_string(),
            ),
        ];
        for (k, v) in extra {
            overrides.push((k.to_string(), v.clone()));
        }
        Config::load_with_overrides(&self.config_path(org), &overrides).unwrap()
    }
}

/// Issues a certificate with a CA given as PEM (used for the federation CA and foreign CAs).
pub fn issue_with_ca(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    spec: &pki::LeafSpec,
) -> pki::IssuedCertificate {
    let key = rcgen::KeyPair::from_pem(ca_key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, spec.common_name.as_str());
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = spec
        .uri_sans
        .iter()
        .map(|u| rcgen::SanType::URI(u.as_str().try_into().unwrap()))
        .collect();
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let cert = params.signed_by(&leaf_key, &issuer).unwrap();
    pki::IssuedCertificate {
        cert_pem: cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// A running federation of in-process nodes whose manifest lists their real ports.
pub struct TestFederation {
    pub pki: TestPki,
    pub nodes: Vec<(OrgId, RunningNode)>,
    _databases: Vec<postgres::TestDatabase>,
}

impl TestFederation {
    pub async fn start(orgs: &[(&str, OrgKind)], engine: Engine) -> Self {
        Self::start_with_clock(orgs, engine, Clock::system()).await
    }

    /// Starts the nodes sharing `clock` (a manual clock lets a test move time for all).
    pub async fn start_with_clock(orgs: &[(&str, OrgKind)], engine: Engine, clock: Clock) -> Self {
        init_tracing();
        let pki = TestPki::new(orgs);
        let mut nodes = Vec::new();
        let mut databases = Vec::new();
        for (org, _) in orgs {
            let mut extra = Vec::new();
            if engine == Engine::Postgres {
                let db = postgres::fresh_database().await;
                extra.push(("BROBYGGER_DATABASE__URL", db.url.clone()));
                databases.push(db);
            }
            let config = pki.config(org, &extra);
            let running = node::start(config, clock.clone()).await.unwrap();
            nodes.push((org.parse().unwrap(), running));
        }
        let federation = Self {
            pki,
            nodes,
            _databases: databases,
        };
        // The generated manifest names the default ports; publish the real ones as serial 2.
        let mut doc = federation.pki.manifest_doc();
        doc.serial += 1;
        for member in &mut doc.members {
            if let Some(node) = federation.node_opt(&member.org_id) {
                member.endpoint = format!("https://{}", node.federation_addr);
            }
        }
        federation.install_manifest(&doc).await;
        federation
    }

    pub fn node_opt(&self, org: &str) -> Option<&RunningNode> {
        self.nodes
            .iter()
            .find(|(id, _)| id.as_str() == org)
            .map(|(_, n)| n)
    }

    pub fn node(&self, org: &str) -> &RunningNode {
        self.node_opt(org).unwrap()
    }

    /// Writes a signed manifest and has every node load it now.
    pub async fn install_manifest(&self, doc: &ManifestDocV1) {
        self.pki.write_manifest(doc);
        for (_, node) in &self.nodes {
            node.state.reload_manifest().await.unwrap();
            assert_eq!(node.state.manifest.snapshot().serial, doc.serial);
        }
    }

    /// A client of `org`'s local API that trusts the development CA.
    pub fn local_client(&self) -> reqwest::Client {
        local_client(&self.pki.ca_pem())
    }

    pub fn local_url(&self, org: &str, path: &str) -> String {
        format!("https://{}{path}", self.node(org).local_addr)
    }

    /// A development token for `org`'s local API, for a user of the unit [`TEST_UNIT`].
    pub fn token(&self, org: &str, roles: &[brobygger::jwt::Role]) -> String {
        self.token_for_unit(org, roles, Some(TEST_UNIT))
    }

    /// A development token for a user of `unit` (or of no unit).
    pub fn token_for_unit(
        &self,
        org: &str,
        roles: &[brobygger::jwt::Role],
        unit: Option<&str>,
    ) -> String {
        let config = self.pki.config(org, &[]);
        let pem = std::fs::read_to_string(config.local_api.dev_token_key.unwrap()).unwrap();
        let issuer = brobygger::jwt::DevIssuer::from_pem(
            &pem,
            &config.local_api.dev_token_kid,
            &config.local_api.issuer,
            &config.local_api.audience,
        )
        .unwrap();
        issuer.mint(
            "test-user",
            roles,
            unit,
            600,
            // The node's clock: a test that moves a manual clock still gets a fresh token.
            self.node(org).state.clock.now().unix_timestamp(),
        )
    }

    pub async fn stop(self) {
        for (_, node) in self.nodes {
            node.stop().await;
        }
    }
}

pub fn local_client(ca_pem: &[u8]) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .build()
        .unwrap()
}

/// Certificate chain and key from PEM text.
pub fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    (chain, key)
}

/// Polls `condition` until it holds or the deadline passes; no fixed sleeps in tests.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path to the built `brobygger` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_brobygger")
}

/// Accepts any server certificate: for tests of the *server's* refusals only.
#[derive(Debug)]
pub struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A raw TLS client configuration presenting `identity` (or nothing) and trusting any server.
pub fn raw_client_config(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

pub async fn raw_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<RawTls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Sends one keep-alive HTTP/1.1 GET on an open TLS stream and reads the response.
pub async fn raw_get(stream: &mut RawTls, path: &str) -> std::io::Result<(u16, String)> {
    raw_request(stream, "GET", path, None).await
}

/// Sends one keep-alive HTTP/1.1 request (with a JSON body, if any) and reads the response.
pub async fn raw_request(
    stream: &mut RawTls,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: brobygger.test\r\nConnection: keep-alive\r\n")
            .into_bytes();
    if let Some(body) = body {
        request.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        request.extend_from_slice(body);
    }
    stream.write_all(&request).await?;
    stream.flush().await?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok((
        status,
        String::from_utf8_lossy(&buffer[header_end..]).to_string(),
    ))
}

/// Connects, sends a request and returns the first TLS error seen, from the handshake or the
/// first read; panics if the server answered instead.
pub async fn first_tls_error(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::Error {
    let to_tls = |e: std::io::Error| -> rustls::Error {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("expected a TLS error, got: {e}"))
    };
    let mut stream = match raw_connect(addr, config).await {
        Ok(stream) => stream,
        Err(e) => return to_tls(e),
    };
    match raw_get(&mut stream, "/fed/v1/ping").await {
        Ok((status, body)) => panic!("the server answered {status}: {body}"),
        Err(e) => to_tls(e),
    }
}
