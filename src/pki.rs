//! The development PKI and federation bootstrap behind `brobygger pki init` and
//! `brobygger federation sign`.
//!
//! `pki init` makes everything a development federation needs in one directory: the federation
//! CA, per org a node certificate (exactly one URI SAN `spiffe://<federation>/org/<org-id>`,
//! client and server use), a local API certificate for loopback, an audit signing key, a
//! development JWT issuer with its JWKS, the operator key, a signed manifest and a ready node
//! config file. Private keys are written with mode 0600 and nothing is overwritten without
//! `--force`. Production federations use a real CA and the operator's own key; see docs.

use crate::domain::{FederationName, OrgId, OrgKind};
use crate::jwt::DevIssuer;
use crate::manifest::{MANIFEST_FORMAT_V1, ManifestDocV1, MemberDocV1};
use crate::signed_note::{NoteSigner, generate_ed25519_pkcs8};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to overwrite existing files (use --force to replace them): {}",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    WouldOverwrite(Vec<PathBuf>),
    #[error("{0}")]
    Invalid(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate authority that can issue leaf certificates.
pub struct CertificateAuthority {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

/// What a leaf certificate should say.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A node certificate: one URI SAN naming the org in the federation.
    pub fn node(federation: &FederationName, org: &OrgId, now: OffsetDateTime, days: i64) -> Self {
        Self {
            common_name: format!("{org} federation node"),
            uri_sans: vec![format!("spiffe://{federation}/org/{org}")],
            dns_sans: vec![],
            ip_sans: vec![],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A PEM certificate and its PEM private key.
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateAuthority {
    pub fn generate(
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// Issues a leaf certificate usable for both TLS client and server authentication.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut sans = Vec::new();
        for uri in &spec.uri_sans {
            sans.push(SanType::URI(uri.as_str().try_into()?));
        }
        for dns in &spec.dns_sans {
            sans.push(SanType::DnsName(dns.as_str().try_into()?));
        }
        for ip in &spec.ip_sans {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// One org to create, from `--org ID:KIND`.
#[derive(Debug, Clone)]
pub struct OrgSpec {
    pub org: OrgId,
    pub kind: OrgKind,
}

impl std::str::FromStr for OrgSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (org, kind) = value.split_once(':').ok_or_else(|| {
            format!("`{value}` is not ID:KIND, e.g. herning-kommune:municipality")
        })?;
        Ok(Self {
            org: org.parse().map_err(|e| format!("{e}"))?,
            kind: kind.parse().map_err(|e| format!("{e}"))?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub federation: FederationName,
    pub orgs: Vec<OrgSpec>,
    pub force: bool,
    /// Federation ports are `base_port + 1 + i`, local API ports `base_port + 101 + i`.
    pub base_port: u16,
    pub now: OffsetDateTime,
}

/// What `pki init` made, for the summary it prints.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub operator_verifier_key: String,
    pub manifest: PathBuf,
    pub configs: Vec<(OrgId, PathBuf)>,
}

/// A human-readable name for a development org: `herning-kommune` → `Herning Kommune`.
fn display_name(org: &OrgId) -> String {
    org.as_str()
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Files to write: path, contents, and whether it is secret (mode 0600).
struct Output {
    path: PathBuf,
    contents: String,
    secret: bool,
}

fn pem_pkcs8(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// 32 random bytes as hex, for the audit HMAC key file.
fn random_hex_key() -> Result<String, PkiError> {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| PkiError::Invalid("the system random generator failed".into()))?;
    Ok(format!("{}\n", hex::encode(key)))
}

/// Loads an Ed25519 PKCS#8 PEM key as a note signer under `name`.
pub fn load_note_signer(path: &Path, name: &str) -> Result<NoteSigner, PkiError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    NoteSigner::from_pkcs8_pem(name, &bytes)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))
}

/// The operator key's name for a federation.
pub fn operator_key_name(federation: &FederationName) -> String {
    format!("{federation}/operator")
}

/// Signs manifest JSON text as a note. The text is checked to be a valid v1 manifest first, and
/// signed as written (plus a final newline), so what the operator reviewed is what is signed.
pub fn sign_manifest_text(json: &str, operator: &NoteSigner) -> Result<String, PkiError> {
    let doc: ManifestDocV1 = serde_json::from_str(json)
        .map_err(|e| PkiError::Invalid(format!("not a v1 manifest: {e}")))?;
    let federation: FederationName = doc
        .federation
        .parse()
        .map_err(|e| PkiError::Invalid(format!("{e}")))?;
    if operator.verifier_key().name() != operator_key_name(&federation) {
        return Err(PkiError::Invalid(format!(
            "the key is named `{}`, but this federation's operator key is `{}`",
            operator.verifier_key().name(),
            operator_key_name(&federation)
        )));
    }
    let text = format!("{}\n", json.trim_end());
    let note = operator
        .sign(&text)
        .map_err(|e| PkiError::Invalid(e.to_string()))?;
    // Refuse to produce a manifest that this very program would reject.
    crate::manifest::open(&note, operator.verifier_key(), &federation)
        .map_err(|e| PkiError::Invalid(e.to_string()))?;
    Ok(note)
}

/// `pki init`: generates a complete development federation in `opts.dir`.
pub fn init(opts: &InitOptions) -> Result<InitReport, PkiError> {
    if opts.orgs.is_empty() {
        return Err(PkiError::Invalid("name at least one --org ID:KIND".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in &opts.orgs {
        if !seen.insert(spec.org.clone()) {
            return Err(PkiError::Invalid(format!(
                "org `{}` is named twice",
                spec.org
            )));
        }
    }
    let dir = &opts.dir;
    let fed_dir = dir.join("federation");
    let now = opts.now;
    let mut outputs = Vec::new();

    let ca = CertificateAuthority::generate(
        &format!("{} development federation CA", opts.federation),
        now - Duration::hours(1),
        now + Duration::days(3650),
    )?;
    outputs.push(Output {
        path: fed_dir.join("ca.pem"),
        contents: ca.cert_pem.clone(),
        secret: false,
    });
    outputs.push(Output {
        path: fed_dir.join("ca.key"),
        contents: ca.key.serialize_pem(),
        secret: true,
    });

    let operator_der = generate_ed25519_pkcs8().map_err(|e| PkiError::Invalid(e.to_string()))?;
    let operator = NoteSigner::from_pkcs8(&operator_key_name(&opts.federation), &operator_der)
        .map_err(|e| PkiError::Invalid(e.to_string()))?;
    let operator_verifier = operator.verifier_key().to_string();
    outputs.push(Output {
        path: fed_dir.join("operator.key"),
        contents: pem_pkcs8(&operator_der),
        secret: true,
    });
    outputs.push(Output {
        path: fed_dir.join("operator.pub"),
        contents: format!("{operator_verifier}\n"),
        secret: false,
    });

    let mut members = Vec::new();
    let mut configs = Vec::new();
    let mut municipality_index = 0u16;
    for (i, spec) in opts.orgs.iter().enumerate() {
        let offset = u16::try_from(i).map_err(|_| PkiError::Invalid("too many orgs".into()))?;
        let fed_port = opts
            .base_port
            .checked_add(1 + offset)
            .ok_or_else(|| PkiError::Invalid("--base-port too high".into()))?;
        let local_port = opts
            .base_port
            .checked_add(101 + offset)
            .ok_or_else(|| PkiError::Invalid("--base-port too high".into()))?;
        let org = &spec.org;
        let org_dir = dir.join(org.as_str());

        let node = ca.issue(&LeafSpec::node(&opts.federation, org, now, 365))?;
        let local = ca.issue(&LeafSpec {
            common_name: format!("{org} local API"),
            uri_sans: vec![],
            dns_sans: vec!["localhost".into()],
            ip_sans: vec![IpAddr::from([127, 0, 0, 1])],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        })?;
        let audit_origin = format!("{}/{org}/audit", opts.federation);
        let audit_der = generate_ed25519_pkcs8().map_err(|e| PkiError::Invalid(e.to_string()))?;
        let audit = NoteSigner::from_pkcs8(&audit_origin, &audit_der)
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
        let issuer = format!("https://idp.{org}.{}", opts.federation);
        let audience = format!("brobygger:{org}");
        let (_, jwt_key_pem, jwks_json) = DevIssuer::generate("dev-1", &issuer, &audience)
            .map_err(|e| PkiError::Invalid(format!("JWT issuer: {e}")))?;

        for (name, contents, secret) in [
            ("node.pem", node.cert_pem, false),
            ("node.key", node.key_pem, true),
            ("local-api.pem", local.cert_pem, false),
            ("local-api.key", local.key_pem, true),
            ("audit-signing.key", pem_pkcs8(&audit_der), true),
            ("audit-hmac.key", random_hex_key()?, true),
            ("jwt-issuer.key", jwt_key_pem, true),
            ("jwks.json", jwks_json, false),
        ] {
            outputs.push(Output {
                path: org_dir.join(name),
                contents,
                secret,
            });
        }

        let kommunekode = (spec.kind == OrgKind::Municipality).then(|| {
            municipality_index += 1;
            // 9xx is outside the range of real kommunekoder, so these are obviously fake.
            format!("9{:02}", municipality_index % 100)
        });
        members.push(MemberDocV1 {
            org_id: org.to_string(),
            name: display_name(org),
            kind: spec.kind.to_string(),
            // 9900xxxx: obviously fake CVR numbers for development.
            cvr: format!("9900{:04}", i + 1),
            kommunekode,
            endpoint: format!("https://127.0.0.1:{fed_port}"),
            audit_origin: audit_origin.clone(),
            audit_verifier_key: audit.verifier_key().to_string(),
        });

        let config_path = dir.join(format!("{org}.toml"));
        outputs.push(Output {
            path: config_path.clone(),
            contents: node_config(
                org,
                &opts.federation,
                &operator_verifier,
                fed_port,
                local_port,
                &issuer,
                &audience,
            ),
            secret: false,
        });
        configs.push((org.clone(), config_path));
    }

    let doc = ManifestDocV1 {
        format: MANIFEST_FORMAT_V1.into(),
        federation: opts.federation.to_string(),
        serial: 1,
        issued_at: now,
        expires_at: now + Duration::days(365),
        members,
        purposes: crate::manifest::starter_purposes()
            .map_err(|e| PkiError::Invalid(e.to_string()))?,
    };
    let json = serde_json::to_string_pretty(&doc).map_err(|e| PkiError::Invalid(e.to_string()))?;
    let manifest_path = fed_dir.join("manifest.note");
    outputs.push(Output {
        path: fed_dir.join("manifest.json"),
        contents: format!("{json}\n"),
        secret: false,
    });
    outputs.push(Output {
        path: manifest_path.clone(),
        contents: sign_manifest_text(&json, &operator)?,
        secret: false,
    });

    // Databases from an earlier federation accepted its manifest; a new serial-1 manifest with
    // other content would be refused by them, so never leave them behind silently.
    let data_dir = dir.join("data");
    if data_dir.exists() {
        return Err(PkiError::Invalid(format!(
            "{} holds node databases of an earlier federation, which would refuse the new \
             manifest; remove it first to start afresh",
            data_dir.display()
        )));
    }
    if !opts.force {
        let existing: Vec<PathBuf> = outputs
            .iter()
            .filter(|o| o.path.exists())
            .map(|o| o.path.clone())
            .collect();
        if !existing.is_empty() {
            return Err(PkiError::WouldOverwrite(existing));
        }
    }
    for output in &outputs {
        write_file(&output.path, output.contents.as_bytes(), output.secret)?;
    }
    Ok(InitReport {
        operator_verifier_key: operator_verifier,
        manifest: manifest_path,
        configs,
    })
}

/// Writes a file, creating its directory; secrets get mode 0600 from the moment they exist.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(if secret { 0o600 } else { 0o644 });
        let mut file = options.open(path).map_err(io_error(path))?;
        // An existing file keeps its old mode on open, so set it explicitly.
        let mode = if secret { 0o600 } else { 0o644 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_error(path))?;
        file.write_all(contents).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        let mut file = options.open(path).map_err(io_error(path))?;
        file.write_all(contents).map_err(io_error(path))?;
    }
    Ok(())
}

fn node_config(
    org: &OrgId,
    federation: &FederationName,
    operator_key: &str,
    fed_port: u16,
    local_port: u16,
    issuer: &str,
    audience: &str,
) -> String {
    format!(
        r#"# Brobygger node configuration for `{org}` (development federation `{federation}`).
# Generated by `brobygger pki init`. Paths are relative to this file.
# Any field can be overridden from the environment, e.g. BROBYGGER_FEDERATION__LISTEN=127.0.0.1:0.

org_id = "{org}"
data_dir = "data/{org}"

[federation]
name = "{federation}"
listen = "127.0.0.1:{fed_port}"
ca_cert = "federation/ca.pem"
cert = "{org}/node.pem"
key = "{org}/node.key"
manifest = "federation/manifest.note"
# The operator's verifier key: the manifest must be signed by it.
operator_key = "{operator_key}"
manifest_poll_interval_ms = 2000
manifest_expiry_warning_days = 14

[local_api]
listen = "127.0.0.1:{local_port}"
cert = "{org}/local-api.pem"
key = "{org}/local-api.key"
jwks = "{org}/jwks.json"
issuer = "{issuer}"
audience = "{audience}"
# Development only: lets `brobygger token` mint tokens. Refused when server.production = true.
dev_token_key = "{org}/jwt-issuer.key"
dev_token_kid = "dev-1"
# What caseworkers may read of children's data: "unit" (default; only consents their unit, the
# token's `unit` claim, recorded or bound) or "organisation" (everything of this organisation).
caseworker_scope = "unit"

[audit]
signing_key = "{org}/audit-signing.key"
# Pseudonymises identifiers in the audit log; keep it secret and separate from other keys.
hmac_key = "{org}/audit-hmac.key"
hmac_key_version = 1

[database]
# SQLite in data_dir by default; for PostgreSQL: url = "postgres://user@host/db"
max_connections = 8

[server]
workers = 2
shutdown_timeout_secs = 10
production = false
"#
    )
}
