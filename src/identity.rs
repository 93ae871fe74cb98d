//! Who is on the other end: TLS configurations in both directions and the one function that
//! maps a verified certificate to a federation identity.
//!
//! Server side (federation listener): TLS 1.3 only, a client certificate is required and must
//! chain to the federation CA. The certificate's single URI SAN becomes a [`NodeIdentity`] in
//! [`identity_from_certificate`], and `federation` checks that identity against the current
//! manifest on every request. Client side (ping, delivery): the server's chain must lead to the
//! federation CA and its URI SAN must be the org we meant to reach; the host name or IP address
//! we dialled proves nothing. (When OCES3 certificates arrive, only `identity_from_certificate`
//! changes.)

use crate::config::{Config, ConfigError, LocalTransport};
use crate::domain::{FederationName, NodeIdentity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// ALPN protocol spoken on both listeners; the federation uses HTTP/1.1 keep-alive.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a certificate does not name a federation member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed")]
    Unparseable,
    #[error("the certificate must carry exactly one URI SAN, it carries {0}")]
    UriSanCount(usize),
    #[error("the certificate's URI SAN is not a federation identity: {0}")]
    NotSpiffe(String),
    #[error("the certificate belongs to federation `{found}`, not `{expected}`")]
    OtherFederation { expected: String, found: String },
}

/// The crypto provider for all TLS: ring, nothing else.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as rustls' process-wide provider, for libraries (sqlx) that ask for the
/// default. Idempotent.
pub fn install_default_crypto_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The one place a certificate becomes an identity: exactly one URI SAN of the form
/// `spiffe://<federation>/org/<org-id>`, in the expected federation. The chain must already have
/// been verified by the TLS layer.
pub fn identity_from_certificate(
    cert_der: &[u8],
    federation: &FederationName,
) -> Result<NodeIdentity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| IdentityError::Unparseable)?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push(*uri);
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::UriSanCount(uris.len()));
    };
    let identity =
        NodeIdentity::parse_uri(uri).map_err(|e| IdentityError::NotSpiffe(e.to_string()))?;
    if &identity.federation != federation {
        return Err(IdentityError::OtherFederation {
            expected: federation.to_string(),
            found: identity.federation.to_string(),
        });
    }
    Ok(identity)
}

/// The validity window of a certificate, for expiry checks and `/readyz`.
pub fn certificate_validity(cert_der: &[u8]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let validity = cert.validity();
    let not_before = OffsetDateTime::from_unix_timestamp(validity.not_before.timestamp()).ok()?;
    let not_after = OffsetDateTime::from_unix_timestamp(validity.not_after.timestamp()).ok()?;
    Some((not_before, not_after))
}

fn read_certs(
    config: &Path,
    field: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            config,
            field,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::new(
                config,
                field,
                format!("{} is not a PEM certificate file: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            config,
            field,
            format!("{} contains no certificate", path.display()),
        ));
    }
    for cert in &certs {
        if x509_parser::parse_x509_certificate(cert).is_err() {
            return Err(ConfigError::new(
                config,
                field,
                format!(
                    "{} contains a certificate that cannot be parsed",
                    path.display()
                ),
            ));
        }
    }
    Ok(certs)
}

fn read_key(
    config: &Path,
    field: &str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            config,
            field,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        ConfigError::new(
            config,
            field,
            format!("{} is not a PEM private key", path.display()),
        )
    })
}

/// Loads a certificate chain and its key and checks that they belong together.
fn load_certified_key(
    config: &Path,
    cert_field: &str,
    cert_path: &Path,
    key_field: &str,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let chain = read_certs(config, cert_field, cert_path)?;
    let key = read_key(config, key_field, key_path)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| ConfigError::new(config, key_field, format!("unusable private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
    certified.keys_match().map_err(|_| {
        ConfigError::new(
            config,
            key_field,
            format!(
                "the key in {} does not match the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    Ok((chain, key))
}

/// Everything TLS a node needs, loaded and checked once at start.
pub struct TlsMaterial {
    pub identity: NodeIdentity,
    pub roots: Arc<RootCertStore>,
    pub node_chain: Vec<CertificateDer<'static>>,
    node_key: PrivateKeyDer<'static>,
    pub federation_server: Arc<ServerConfig>,
    /// `None` when the local API runs as dangerous plaintext.
    pub local_server: Option<Arc<ServerConfig>>,
    /// When the node certificate stops being valid, for `/readyz`.
    pub node_cert_not_after: OffsetDateTime,
}

impl TlsMaterial {
    /// Loads CA, node certificate and key, and local API certificate, as named in the config.
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        let file = config.source.as_path();
        let provider = crypto_provider();
        let ca = read_certs(file, "federation.ca_cert", &config.federation.ca_cert)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| {
                ConfigError::new(
                    file,
                    "federation.ca_cert",
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        let roots = Arc::new(roots);
        let (node_chain, node_key) = load_certified_key(
            file,
            "federation.cert",
            &config.federation.cert,
            "federation.key",
            &config.federation.key,
            &provider,
        )?;
        let leaf = node_chain.first().ok_or_else(|| {
            ConfigError::new(file, "federation.cert", "the certificate file is empty")
        })?;
        let identity = identity_from_certificate(leaf, &config.federation_name)
            .map_err(|e| ConfigError::new(file, "federation.cert", e.to_string()))?;
        if identity.org != config.org {
            return Err(ConfigError::new(
                file,
                "federation.cert",
                format!(
                    "the certificate names org `{}`, but org_id is `{}`",
                    identity.org, config.org
                ),
            ));
        }
        let node_cert_not_after = certificate_validity(leaf)
            .map(|(_, not_after)| not_after)
            .ok_or_else(|| ConfigError::new(file, "federation.cert", "unreadable validity"))?;
        // The node's own certificate must chain to the federation CA, or no peer would accept it.
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| ConfigError::new(file, "federation.cert", e.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            node_chain.get(1..).unwrap_or(&[]),
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            ConfigError::new(
                file,
                "federation.cert",
                format!("the certificate is not valid under the federation CA: {e}"),
            )
        })?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| ConfigError::new(file, "federation.ca_cert", e.to_string()))?;
        let mut federation_server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConfigError::new(file, "federation", e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(node_chain.clone(), node_key.clone_key())
            .map_err(|e| ConfigError::new(file, "federation.cert", e.to_string()))?;
        federation_server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];

        let local_server = match &config.local_api.transport {
            LocalTransport::DangerousPlaintext => None,
            LocalTransport::Tls { cert, key } => {
                let (chain, key) = load_certified_key(
                    file,
                    "local_api.cert",
                    cert,
                    "local_api.key",
                    key,
                    &provider,
                )?;
                let mut server = ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|e| ConfigError::new(file, "local_api", e.to_string()))?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|e| ConfigError::new(file, "local_api.cert", e.to_string()))?;
                server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
                Some(Arc::new(server))
            }
        };

        Ok(Self {
            identity,
            roots,
            node_chain,
            node_key,
            federation_server: Arc::new(federation_server),
            local_server,
            node_cert_not_after,
        })
    }

    /// A client configuration that presents this node's certificate and accepts only a server
    /// whose certificate names `expected` (and chains to the federation CA).
    pub fn client_config_for(&self, expected: NodeIdentity) -> Result<ClientConfig, rustls::Error> {
        peer_client_config(
            self.roots.clone(),
            expected,
            self.node_chain.clone(),
            self.node_key.clone_key(),
        )
    }
}

/// Builds a client configuration for talking to one federation peer.
pub fn peer_client_config(
    roots: Arc<RootCertStore>,
    expected: NodeIdentity,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, rustls::Error> {
    let provider = crypto_provider();
    let verifier = Arc::new(ExpectedPeerVerifier {
        roots,
        expected,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(client_chain, client_key)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// Accepts a server certificate only if it chains to the federation CA and its URI SAN is the
/// identity we dialled. Host names and IP addresses are deliberately ignored: an address match
/// is not identity.
#[derive(Debug)]
struct ExpectedPeerVerifier {
    roots: Arc<RootCertStore>,
    expected: NodeIdentity,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let identity = identity_from_certificate(end_entity, &self.expected.federation)
            .map_err(|e| rustls::Error::General(format!("server identity: {e}")))?;
        if identity != self.expected {
            tracing::warn!(
                expected = %self.expected,
                presented = %identity,
                "refusing a federation server: its certificate names another member than the one dialled"
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client config only offers TLS 1.3, so a TLS 1.2 signature is never legitimate.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
