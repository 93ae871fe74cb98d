//! Bearer tokens for the local API.
//!
//! Local systems (case systems, auditors, administrators) call their own node's local API with
//! JWT bearer tokens issued by the organisation's identity provider. This module verifies those
//! tokens against a configured JWKS file and turns them into a [`VerifiedToken`] with the
//! caller's subject, [`Role`]s and optional organisational unit.
//!
//! The rules (DESIGN.md §2 and §10) are deliberately narrow:
//!
//! - only EdDSA (Ed25519) and ES256 (P-256) signatures are accepted, so `alg: none` and the
//!   "HS256 keyed with the public key" confusion attack are refused before any key is touched;
//! - the header's `kid` must name a key in the JWKS whose algorithm equals the header's `alg`;
//! - `exp`, `iss`, `aud` and `sub` are required and must have the right JSON types, and the time
//!   checks use a clock the caller passes in, so tests can run with a fixed clock.
//!
//! jsonwebtoken 11 has no ring backend, and its RustCrypto backend pulls in the `rsa` crate, so
//! this module also provides a small ring-backed jsonwebtoken [`CryptoProvider`] that knows only
//! EdDSA and ES256 ([`install_crypto_provider`]).
//!
//! [`DevIssuer`] mints tokens with a locally generated Ed25519 key, for development set-ups and
//! tests where no real identity provider exists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, new_error};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, UnparsedPublicKey, VerificationAlgorithm,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// The ring-backed jsonwebtoken crypto provider.
// ---------------------------------------------------------------------------------------------

/// The length of a raw Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// The length of one P-256 field element (a JWK `x` or `y` coordinate).
const P256_COORDINATE_LEN: usize = 32;
/// The length of an uncompressed SEC1 P-256 point: the 0x04 tag followed by `x` and `y`.
const P256_UNCOMPRESSED_POINT_LEN: usize = 1 + 2 * P256_COORDINATE_LEN;

/// Refuses every algorithm except EdDSA and ES256, and refuses a key whose family does not
/// belong to the algorithm.
///
/// The family check is what stops a public key that was loaded for EdDSA from being used as an
/// HMAC secret or as an EC point, whatever the token header claims.
fn check_algorithm_and_family(
    algorithm: Algorithm,
    key_family: AlgorithmFamily,
) -> jsonwebtoken::errors::Result<()> {
    match algorithm {
        Algorithm::EdDSA | Algorithm::ES256 => {}
        _ => return Err(new_error(ErrorKind::UnsupportedAlgorithm)),
    }
    if algorithm.family() != key_family {
        return Err(new_error(ErrorKind::InvalidKeyFormat));
    }
    Ok(())
}

/// Signs with an Ed25519 key held by ring.
struct RingEd25519Signer(Ed25519KeyPair);

impl Signer<Vec<u8>> for RingEd25519Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignatureError> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for RingEd25519Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// Signs with a P-256 key held by ring, producing the fixed-size `r || s` form JWS requires.
struct RingEs256Signer {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer<Vec<u8>> for RingEs256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let signature = self
            .key_pair
            .sign(&self.rng, msg)
            .map_err(|_| SignatureError::new())?;
        Ok(signature.as_ref().to_vec())
    }
}

impl JwtSigner for RingEs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// Verifies EdDSA or ES256 signatures with ring against a raw public key.
struct RingVerifier {
    algorithm: Algorithm,
    public_key: Vec<u8>,
}

impl RingVerifier {
    /// The ring verification algorithm for this verifier's JWS algorithm.
    ///
    /// The constructor only ever builds EdDSA and ES256 verifiers, so the `None` arm is a second
    /// line of defence rather than a reachable path.
    fn ring_algorithm(&self) -> Option<&'static dyn VerificationAlgorithm> {
        match self.algorithm {
            Algorithm::EdDSA => Some(&ED25519),
            Algorithm::ES256 => Some(&ECDSA_P256_SHA256_FIXED),
            _ => None,
        }
    }
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), SignatureError> {
        let algorithm = self.ring_algorithm().ok_or_else(SignatureError::new)?;
        UnparsedPublicKey::new(algorithm, &self.public_key)
            .verify(msg, signature)
            .map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// The provider's signer factory: EdDSA and ES256 from PKCS#8 DER private keys, nothing else.
fn new_signer(
    algorithm: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    check_algorithm_and_family(*algorithm, key.family())?;
    match algorithm {
        Algorithm::EdDSA => {
            // PKCS#8 v1 files (what OpenSSL writes) carry no public key, so the unchecked
            // variant is needed to read them; v2 files are still checked for consistency.
            let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
                .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
            Ok(Box::new(RingEd25519Signer(key_pair)))
        }
        Algorithm::ES256 => {
            let rng = SystemRandom::new();
            let key_pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.as_bytes(), &rng)
                    .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))?;
            Ok(Box::new(RingEs256Signer { key_pair, rng }))
        }
        _ => Err(new_error(ErrorKind::UnsupportedAlgorithm)),
    }
}

/// The provider's verifier factory: EdDSA with a raw 32-byte key and ES256 with an uncompressed
/// P-256 point, nothing else.
fn new_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    check_algorithm_and_family(*algorithm, key.family())?;
    let public_key = key.try_get_as_bytes()?;
    // Checking the shape here means a mis-loaded key fails as a key error instead of as a
    // signature that never verifies, which is much easier to diagnose.
    let shape_ok = match algorithm {
        Algorithm::EdDSA => public_key.len() == ED25519_PUBLIC_KEY_LEN,
        Algorithm::ES256 => {
            public_key.len() == P256_UNCOMPRESSED_POINT_LEN && public_key.first() == Some(&0x04)
        }
        _ => false,
    };
    if !shape_ok {
        let kind = match algorithm {
            Algorithm::EdDSA => ErrorKind::InvalidEddsaKey,
            _ => ErrorKind::InvalidEcdsaKey,
        };
        return Err(new_error(kind));
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        public_key: public_key.to_vec(),
    }))
}

/// RSA is not supported at all, so the RSA key utilities refuse instead of panicking.
fn rsa_components_unsupported(_key: &[u8]) -> jsonwebtoken::errors::Result<(Vec<u8>, Vec<u8>)> {
    Err(new_error(ErrorKind::UnsupportedAlgorithm))
}

/// Derives the JWK `x`/`y` of a P-256 PKCS#8 private key.
fn ec_components_from_private_key(
    key: &[u8],
    algorithm: Algorithm,
) -> jsonwebtoken::errors::Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    if algorithm != Algorithm::ES256 {
        return Err(new_error(ErrorKind::UnsupportedAlgorithm));
    }
    let key_pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key, &SystemRandom::new())
            .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))?;
    let (x, y) = split_p256_point(key_pair.public_key().as_ref())
        .ok_or_else(|| new_error(ErrorKind::InvalidEcdsaKey))?;
    Ok((EllipticCurve::P256, x.to_vec(), y.to_vec()))
}

/// Derives the JWK `x` of an Ed25519 PKCS#8 private key.
fn ed_components_from_private_key(
    key: &[u8],
    curve: &EllipticCurve,
) -> jsonwebtoken::errors::Result<Vec<u8>> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(new_error(ErrorKind::UnsupportedAlgorithm));
    }
    let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key)
        .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
    Ok(key_pair.public_key().as_ref().to_vec())
}

/// Computes JWK thumbprint digests with ring.
fn compute_digest(data: &[u8], hash: ThumbprintHash) -> jsonwebtoken::errors::Result<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        // The enum is non-exhaustive; a digest added later is refused until it is wired up here.
        _ => return Err(new_error(ErrorKind::UnsupportedAlgorithm)),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

/// Splits an uncompressed SEC1 P-256 point into its `x` and `y` coordinates.
fn split_p256_point(point: &[u8]) -> Option<(&[u8], &[u8])> {
    if point.len() != P256_UNCOMPRESSED_POINT_LEN || point.first() != Some(&0x04) {
        return None;
    }
    let x = point.get(1..1 + P256_COORDINATE_LEN)?;
    let y = point.get(1 + P256_COORDINATE_LEN..)?;
    Some((x, y))
}

/// The ring-backed provider. It is a `static` so that its address identifies it: that is how
/// [`install_crypto_provider`] tells "already installed by us" from "someone else's".
static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_unsupported,
        rsa_pub_components_from_public_key: rsa_components_unsupported,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_components_from_private_key,
        compute_digest,
    },
};

/// Another jsonwebtoken crypto provider was installed before ours.
///
/// jsonwebtoken allows exactly one process-wide provider, and the only acceptable one is ours,
/// because anything else might accept HMAC or RSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a different jsonwebtoken crypto provider is already installed in this process (or a JWT \
     was processed before install_crypto_provider was called)"
)]
pub struct ForeignCryptoProvider;

/// Installs the ring-backed EdDSA/ES256 provider as jsonwebtoken's process-wide provider.
///
/// Calling it again is harmless. It fails only if another provider got there first, which also
/// happens if any jsonwebtoken function ran before this one (jsonwebtoken then latches its
/// built-in "not configured" provider).
pub fn install_crypto_provider() -> Result<(), ForeignCryptoProvider> {
    match RING_PROVIDER.install_default() {
        Ok(()) => Ok(()),
        Err(existing) if std::ptr::eq(existing, &RING_PROVIDER) => Ok(()),
        Err(_) => Err(ForeignCryptoProvider),
    }
}

// ---------------------------------------------------------------------------------------------
// Roles.
// ---------------------------------------------------------------------------------------------

/// What a local caller may do. The wire names are the strings in the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Submits summaries from a case system (`submitter`).
    Submitter,
    /// Reads and handles deliveries for an organisational unit (`caseworker`).
    Caseworker,
    /// Records and withdraws consents (`consent-admin`).
    ConsentAdmin,
    /// Reads the audit log (`auditor`).
    Auditor,
    /// Operates the node (`admin`).
    Admin,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Role::Submitter,
        Role::Caseworker,
        Role::ConsentAdmin,
        Role::Auditor,
        Role::Admin,
    ];

    /// The wire name of the role.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Caseworker => "caseworker",
            Role::ConsentAdmin => "consent-admin",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the role wire names.
///
/// The offending string is not kept: it may come from a token, and error messages end up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a role name (expected one of submitter, caseworker, consent-admin, auditor, admin)")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or(UnknownRole)
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS.
// ---------------------------------------------------------------------------------------------

/// The longest `kid` accepted, in characters; identity providers use short identifiers, and a
/// bound keeps error messages and logs readable.
const MAX_KID_CHARS: usize = 256;

/// One verification key from the JWKS, with the only algorithm it may be used with.
#[derive(Clone)]
struct JwksKey {
    algorithm: Algorithm,
    decoding_key: DecodingKey,
}

/// The identity provider's public keys (RFC 7517 JWK Set), restricted to Ed25519 and P-256.
#[derive(Clone)]
pub struct Jwks {
    keys: BTreeMap<String, JwksKey>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(kid, key)| (kid, key.algorithm)))
            .finish()
    }
}

/// Why a JWKS document was refused. Key ids are printed escaped, since they come from a file.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read JWKS file {path}: {source}")]
    Io {
        /// The file that was being read.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The document is not JSON.
    #[error("JWKS is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The document is not an object with a `keys` array.
    #[error("JWKS must be an object with a \"keys\" array")]
    NotAKeySet,
    /// The `keys` array is empty, which would make every token fail.
    #[error("JWKS contains no keys")]
    NoKeys,
    /// An entry of `keys` is not a JSON object.
    #[error("JWKS key #{index} is not a JSON object")]
    NotAnObject {
        /// The position in the `keys` array.
        index: usize,
    },
    /// A key has no `kid`, or it is not a string.
    #[error("JWKS key #{index} has no \"kid\" string")]
    MissingKid {
        /// The position in the `keys` array.
        index: usize,
    },
    /// A `kid` is empty, too long or contains control characters.
    #[error(
        "JWKS key #{index} has an unusable \"kid\" (empty, too long, or with control characters)"
    )]
    InvalidKid {
        /// The position in the `keys` array.
        index: usize,
    },
    /// Two keys share a `kid`, so a token could not say which one it means.
    #[error("JWKS key id {kid:?} appears more than once")]
    DuplicateKid {
        /// The repeated key id.
        kid: String,
    },
    /// A key type, curve or use this gateway does not accept.
    #[error("JWKS key {kid:?} is not supported: {detail}")]
    UnsupportedKey {
        /// The key id.
        kid: String,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// The key's `alg` is not the algorithm its type implies (EdDSA for Ed25519, ES256 for P-256).
    #[error("JWKS key {kid:?} has an \"alg\" that does not match its key type")]
    AlgorithmMismatch {
        /// The key id.
        kid: String,
    },
    /// The key carries private key material (`d`), which must never be in a verification set.
    #[error("JWKS key {kid:?} contains private key material (\"d\"); publish only public keys")]
    PrivateKeyMaterial {
        /// The key id.
        kid: String,
    },
    /// The public key coordinates are missing or malformed.
    #[error("JWKS key {kid:?} has invalid key material: {detail}")]
    InvalidKeyMaterial {
        /// The key id.
        kid: String,
        /// What is wrong with it.
        detail: &'static str,
    },
}

/// Checks that a key id is printable and of a sensible length.
fn kid_is_acceptable(kid: &str) -> bool {
    !kid.is_empty() && kid.chars().count() <= MAX_KID_CHARS && !kid.chars().any(char::is_control)
}

/// Reads an optional string member, distinguishing "absent" from "present but not a string".
fn optional_str<'a>(object: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ()> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(()),
    }
}

/// Decodes one base64url (unpadded) JWK coordinate that must be exactly `len` bytes.
fn decode_coordinate(
    object: &Map<String, Value>,
    name: &str,
    len: usize,
    kid: &str,
    missing: &'static str,
    wrong: &'static str,
) -> Result<Vec<u8>, JwksError> {
    let text = match object.get(name) {
        Some(Value::String(s)) => s,
        _ => {
            return Err(JwksError::InvalidKeyMaterial {
                kid: kid.to_owned(),
                detail: missing,
            });
        }
    };
    match URL_SAFE_NO_PAD.decode(text) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        _ => Err(JwksError::InvalidKeyMaterial {
            kid: kid.to_owned(),
            detail: wrong,
        }),
    }
}

/// Parses one JWK into a key id and a verification key, enforcing the type/alg pairing.
fn parse_jwk(index: usize, value: &Value) -> Result<(String, JwksKey), JwksError> {
    let Value::Object(object) = value else {
        return Err(JwksError::NotAnObject { index });
    };
    let kid = match object.get("kid") {
        Some(Value::String(kid)) => kid.clone(),
        _ => return Err(JwksError::MissingKid { index }),
    };
    if !kid_is_acceptable(&kid) {
        return Err(JwksError::InvalidKid { index });
    }
    let unsupported = |detail: &'static str| JwksError::UnsupportedKey {
        kid: kid.clone(),
        detail,
    };

    // A private key in the public set is a configuration mistake that leaks a signing key; it is
    // refused loudly rather than silently ignored.
    if object.contains_key("d") {
        return Err(JwksError::PrivateKeyMaterial { kid });
    }
    match optional_str(object, "use") {
        Ok(None | Some("sig")) => {}
        _ => return Err(unsupported("\"use\" is present and is not \"sig\"")),
    }
    if let Some(ops) = object.get("key_ops") {
        let allows_verify = matches!(ops, Value::Array(items)
            if items.iter().any(|op| op.as_str() == Some("verify")));
        if !allows_verify {
            return Err(unsupported(
                "\"key_ops\" is present and does not include \"verify\"",
            ));
        }
    }

    let kty = optional_str(object, "kty").ok().flatten();
    let crv = optional_str(object, "crv").ok().flatten();
    let (algorithm, decoding_key) = match (kty, crv) {
        (Some("OKP"), Some("Ed25519")) => {
            let x = decode_coordinate(
                object,
                "x",
                ED25519_PUBLIC_KEY_LEN,
                &kid,
                "missing \"x\"",
                "\"x\" is not 32 bytes of base64url",
            )?;
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&x))
        }
        (Some("EC"), Some("P-256")) => {
            let x = decode_coordinate(
                object,
                "x",
                P256_COORDINATE_LEN,
                &kid,
                "missing \"x\"",
                "\"x\" is not 32 bytes of base64url",
            )?;
            let y = decode_coordinate(
                object,
                "y",
                P256_COORDINATE_LEN,
                &kid,
                "missing \"y\"",
                "\"y\" is not 32 bytes of base64url",
            )?;
            // jsonwebtoken's "EC DER" decoding key is really the raw uncompressed SEC1 point,
            // which is exactly what ring's verifier expects.
            let mut point = Vec::with_capacity(P256_UNCOMPRESSED_POINT_LEN);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Algorithm::ES256, DecodingKey::from_ec_der(&point))
        }
        (Some("OKP"), _) => return Err(unsupported("OKP keys must use curve Ed25519")),
        (Some("EC"), _) => return Err(unsupported("EC keys must use curve P-256")),
        _ => {
            return Err(unsupported(
                "only kty OKP (Ed25519) and EC (P-256) are accepted",
            ));
        }
    };

    // An absent `alg` is allowed (RFC 7517 makes it optional) because the key type already
    // determines the one algorithm the key will be used with; a present one must agree.
    let expected_alg = match algorithm {
        Algorithm::EdDSA => "EdDSA",
        _ => "ES256",
    };
    match optional_str(object, "alg") {
        Ok(None) => {}
        Ok(Some(alg)) if alg == expected_alg => {}
        _ => return Err(JwksError::AlgorithmMismatch { kid }),
    }
    Ok((
        kid,
        JwksKey {
            algorithm,
            decoding_key,
        },
    ))
}

impl Jwks {
    /// Parses a JWK Set document (`{"keys": [...]}`).
    pub fn from_json(bytes: &[u8]) -> Result<Jwks, JwksError> {
        let document: Value = serde_json::from_slice(bytes)?;
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(JwksError::NotAKeySet);
        };
        if entries.is_empty() {
            return Err(JwksError::NoKeys);
        }
        let mut keys = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let (kid, key) = parse_jwk(index, entry)?;
            if keys.contains_key(&kid) {
                return Err(JwksError::DuplicateKid { kid });
            }
            keys.insert(kid, key);
        }
        Ok(Jwks { keys })
    }

    /// Reads and parses a JWK Set file.
    pub fn from_file(path: &Path) -> Result<Jwks, JwksError> {
        let bytes = std::fs::read(path).map_err(|source| JwksError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Jwks::from_json(&bytes)
    }

    /// The key ids in the set, in sorted order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The number of keys in the set.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never true for a parsed set, which refuses an empty one).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Token verification.
// ---------------------------------------------------------------------------------------------

/// The default allowance for clock skew between the identity provider and this node.
pub const DEFAULT_LEEWAY_SECS: u32 = 30;

/// The longest token accepted, in bytes. Real tokens are well under 2 KiB; the bound stops
/// oversized headers from costing base64 and JSON work before anything is checked.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The longest `sub` accepted, in characters.
const MAX_SUBJECT_CHARS: usize = 128;
/// The longest `unit` accepted, in characters.
const MAX_UNIT_CHARS: usize = 64;

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The `sub` claim: who the caller is at the identity provider.
    pub subject: String,
    /// The recognised roles from the `roles` claim, without duplicates, in token order.
    pub roles: Vec<Role>,
    /// The caseworker's organisational unit, from the `unit` claim.
    pub unit: Option<String>,
    /// The `exp` claim, in Unix seconds.
    pub expires_at: i64,
    /// The `kid` of the key that verified the signature.
    pub key_id: String,
}

impl VerifiedToken {
    /// Whether the token grants `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a token was refused.
///
/// The messages never contain the token or any claim value, because they are logged and may be
/// returned to the caller. [`TokenError::reason`] gives a stable machine-readable string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS with a base64url JSON header and payload, or too long.
    #[error("token is malformed")]
    Malformed,
    /// The header's `alg` is not EdDSA or ES256 (this covers `none` and every HMAC algorithm).
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The header's `alg` is allowed, but not for the key named by `kid`.
    #[error("token algorithm does not match the algorithm of its key")]
    KeyAlgorithmMismatch,
    /// The header has no `kid`, or names a key that is not in the JWKS.
    #[error("token key id is missing or unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// The key from the JWKS could not be used (it is malformed for its algorithm).
    #[error("the verification key could not be used")]
    KeyUnusable,
    /// The header marks extensions as critical (`crit`), and none are understood here.
    #[error("token header has critical extensions that are not supported")]
    UnsupportedHeader,
    /// The header's `typ` says this is some other kind of JWT (for example a logout token).
    #[error("token type is not an access token")]
    WrongTokenType,
    /// `exp` (plus leeway) has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` (minus leeway) has not been reached.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the expected one")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("token audience does not include this service")]
    WrongAudience,
    /// A claim is missing or has the wrong JSON type; the payload names the claim.
    #[error("token claim {0:?} is missing or has the wrong type")]
    ClaimType(&'static str),
    /// A claim has the right type but an unacceptable value; the payload names the claim.
    #[error("token claim {0:?} has an unacceptable value")]
    ClaimValue(&'static str),
}

impl TokenError {
    /// A stable, machine-readable reason for logs, metrics and error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed | TokenError::KeyAlgorithmMismatch => {
                "algorithm-not-allowed"
            }
            TokenError::UnknownKey => "unknown-key",
            TokenError::BadSignature => "bad-signature",
            TokenError::KeyUnusable => "key-unusable",
            TokenError::UnsupportedHeader => "unsupported-header",
            TokenError::WrongTokenType => "wrong-token-type",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not-yet-valid",
            TokenError::WrongIssuer => "wrong-issuer",
            TokenError::WrongAudience => "wrong-audience",
            TokenError::ClaimType(_) => "claim-type",
            TokenError::ClaimValue(_) => "claim-value",
        }
    }
}

/// Why a [`TokenVerifier`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifierConfigError {
    /// The expected issuer is empty, which would make the `iss` check meaningless.
    #[error("the expected token issuer must not be empty")]
    EmptyIssuer,
    /// The expected audience is empty, which would make the `aud` check meaningless.
    #[error("the expected token audience must not be empty")]
    EmptyAudience,
    /// jsonwebtoken is set up with a provider other than ours.
    #[error(transparent)]
    Provider(#[from] ForeignCryptoProvider),
}

/// Verifies local-API bearer tokens against a JWKS, an issuer and an audience.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    jwks: Jwks,
    issuer: String,
    audience: String,
    leeway_secs: i64,
    eddsa_validation: Validation,
    es256_validation: Validation,
}

/// jsonwebtoken's validation for one algorithm: signature, required claims, issuer and audience.
///
/// Its own time checks are off because they read the system clock; [`TokenVerifier::verify`]
/// does them against the clock the caller passes in.
fn validation_for(algorithm: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = true;
    validation.leeway = 0;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation
}

/// Decodes one base64url JWS segment and parses it as a JSON object.
fn decode_json_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// Whether a `typ` header value denotes a plain JWT or an OAuth access token (RFC 9068).
///
/// Media type names are case-insensitive and may omit the `application/` prefix (RFC 7515 §4.1.9).
fn acceptable_typ(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    matches!(bare, "jwt" | "at+jwt")
}

/// Maps jsonwebtoken's errors onto ours without carrying any of their text along (serde errors
/// can quote claim values).
fn map_decode_error(error: &jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => TokenError::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(name) | ErrorKind::InvalidClaimFormat(name) => {
            TokenError::ClaimType(static_claim_name(name))
        }
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => TokenError::KeyUnusable,
        _ => TokenError::Malformed,
    }
}

/// Turns a claim name reported by jsonwebtoken into a `'static` one, so errors stay `Copy`.
fn static_claim_name(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}

/// Reads a required integer NumericDate. Floats, strings and numbers outside `i64` are refused:
/// being strict here is what the claim-type bypass in old jsonwebtoken versions was about.
fn required_int(claims: &Map<String, Value>, name: &'static str) -> Result<i64, TokenError> {
    optional_int(claims, name)?.ok_or(TokenError::ClaimType(name))
}

/// Reads an optional integer NumericDate; present with another type (including `null`) is an error.
fn optional_int(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(TokenError::ClaimType(name)),
        Some(_) => Err(TokenError::ClaimType(name)),
    }
}

/// Reads a required string claim.
fn required_str<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, TokenError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err(TokenError::ClaimType(name)),
    }
}

/// Whether a subject is 1..=128 characters with no control characters.
fn subject_is_acceptable(subject: &str) -> bool {
    let count = subject.chars().count();
    (1..=MAX_SUBJECT_CHARS).contains(&count) && !subject.chars().any(char::is_control)
}

/// Whether a unit is 1..=64 characters of `[a-z0-9-]`.
fn unit_is_acceptable(unit: &str) -> bool {
    (1..=MAX_UNIT_CHARS).contains(&unit.len())
        && unit
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl TokenVerifier {
    /// Builds a verifier with the default leeway of [`DEFAULT_LEEWAY_SECS`].
    ///
    /// This also installs the ring crypto provider, so a verifier can never run on jsonwebtoken's
    /// unconfigured (panicking) provider.
    pub fn new(
        jwks: Jwks,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<TokenVerifier, VerifierConfigError> {
        let issuer = issuer.into();
        let audience = audience.into();
        if issuer.is_empty() {
            return Err(VerifierConfigError::EmptyIssuer);
        }
        if audience.is_empty() {
            return Err(VerifierConfigError::EmptyAudience);
        }
        install_crypto_provider()?;
        let eddsa_validation = validation_for(Algorithm::EdDSA, &issuer, &audience);
        let es256_validation = validation_for(Algorithm::ES256, &issuer, &audience);
        Ok(TokenVerifier {
            jwks,
            issuer,
            audience,
            leeway_secs: i64::from(DEFAULT_LEEWAY_SECS),
            eddsa_validation,
            es256_validation,
        })
    }

    /// Replaces the clock-skew allowance applied to `exp` and `nbf`.
    #[must_use]
    pub fn with_leeway_secs(mut self, leeway_secs: u32) -> TokenVerifier {
        self.leeway_secs = i64::from(leeway_secs);
        self
    }

    /// The expected issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The expected audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies `token` as of `now_unix` (Unix seconds) and returns who it is for.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut segments = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(TokenError::Malformed);
        };

        // The header is read here, before jsonwebtoken sees the token, so that a forbidden
        // algorithm is reported as such and no key is ever looked up for it.
        let header = decode_json_object(header_b64).ok_or(TokenError::Malformed)?;
        let algorithm = match header.get("alg") {
            Some(Value::String(alg)) if alg == "EdDSA" => Algorithm::EdDSA,
            Some(Value::String(alg)) if alg == "ES256" => Algorithm::ES256,
            Some(Value::String(_)) => return Err(TokenError::AlgorithmNotAllowed),
            _ => return Err(TokenError::Malformed),
        };
        // Only now is an empty signature malformed: an unsigned `alg: none` token is reported
        // as a forbidden algorithm, which is the more useful diagnosis.
        if payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(TokenError::Malformed);
        }
        // RFC 7515 §4.1.11: a recipient that does not understand a critical extension must
        // refuse the token, and this verifier understands none.
        if header.contains_key("crit") {
            return Err(TokenError::UnsupportedHeader);
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(typ)) if acceptable_typ(typ) => {}
            Some(_) => return Err(TokenError::WrongTokenType),
        }
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => kid.as_str(),
            _ => return Err(TokenError::UnknownKey),
        };
        let key = self.jwks.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        if key.algorithm != algorithm {
            return Err(TokenError::KeyAlgorithmMismatch);
        }
        let validation = match algorithm {
            Algorithm::EdDSA => &self.eddsa_validation,
            _ => &self.es256_validation,
        };

        // jsonwebtoken verifies the signature (through the ring provider, which again checks
        // algorithm against key family) and then the presence of exp/iss/aud/sub and the
        // issuer and audience values.
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding_key, validation)
            .map_err(|e| map_decode_error(&e))?;
        let Value::Object(claims) = data.claims else {
            return Err(TokenError::Malformed);
        };

        // Everything below re-checks with strict JSON types, because jsonwebtoken is lenient
        // in places (floats for NumericDate, arrays for `iss`).
        let expires_at = required_int(&claims, "exp")?;
        let not_before = optional_int(&claims, "nbf")?;
        optional_int(&claims, "iat")?;
        if required_str(&claims, "iss")? != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        let audience_matches = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(items)) => {
                let mut found = false;
                for item in items {
                    match item {
                        Value::String(aud) => found |= *aud == self.audience,
                        _ => return Err(TokenError::ClaimType("aud")),
                    }
                }
                found
            }
            _ => return Err(TokenError::ClaimType("aud")),
        };
        if !audience_matches {
            return Err(TokenError::WrongAudience);
        }

        // `exp` is exclusive (RFC 7519 §4.1.4: the token must not be accepted on or after it);
        // the leeway widens both bounds by the same allowance for clock skew.
        if now_unix.saturating_sub(self.leeway_secs) >= expires_at {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = not_before
            && now_unix.saturating_add(self.leeway_secs) < nbf
        {
            return Err(TokenError::NotYetValid);
        }

        let subject = required_str(&claims, "sub")?;
        if !subject_is_acceptable(subject) {
            return Err(TokenError::ClaimValue("sub"));
        }

        // Unknown role names are ignored rather than refused, so an identity provider can
        // carry roles for other applications in the same claim.
        let mut roles = Vec::new();
        match claims.get("roles") {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let Value::String(name) = item else {
                        return Err(TokenError::ClaimType("roles"));
                    };
                    if let Ok(role) = name.parse::<Role>()
                        && !roles.contains(&role)
                    {
                        roles.push(role);
                    }
                }
            }
            Some(_) => return Err(TokenError::ClaimType("roles")),
        }

        let unit = match claims.get("unit") {
            None => None,
            Some(Value::String(unit)) if unit_is_acceptable(unit) => Some(unit.clone()),
            Some(Value::String(_)) => return Err(TokenError::ClaimValue("unit")),
            Some(_) => return Err(TokenError::ClaimType("unit")),
        };

        Ok(VerifiedToken {
            subject: subject.to_owned(),
            roles,
            unit,
            expires_at,
            key_id: kid.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Development issuer.
// ---------------------------------------------------------------------------------------------

/// Why a [`DevIssuer`] could not be created. No key material is ever included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DevIssuerError {
    /// The system random number generator failed while generating a key.
    #[error("could not generate an Ed25519 key")]
    KeyGeneration,
    /// The PEM text has no `PRIVATE KEY` (PKCS#8) section.
    #[error("the PEM text does not contain a PKCS#8 \"PRIVATE KEY\" section")]
    Pem,
    /// The PKCS#8 document is not an Ed25519 private key ring accepts.
    #[error("the private key is not a valid Ed25519 PKCS#8 key")]
    InvalidKey,
    /// The kid is empty, too long or contains control characters.
    #[error("the key id is empty, too long or contains control characters")]
    InvalidKid,
    /// The issuer or audience is empty.
    #[error("the issuer and audience must not be empty")]
    EmptyField,
}

/// Mints EdDSA tokens for development and tests, with a key generated or loaded locally.
pub struct DevIssuer {
    key_pair: Ed25519KeyPair,
    kid: String,
    issuer: String,
    audience: String,
}

impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIssuer")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Counts minted tokens, so `jti` stays unique even if the random number generator fails.
static JTI_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Wraps DER bytes in a PEM section with 64-character lines (RFC 7468).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for (i, c) in body.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            pem.push('\n');
        }
        pem.push(c);
    }
    pem.push_str(&format!("\n-----END {label}-----\n"));
    pem
}

impl DevIssuer {
    /// Generates a fresh Ed25519 key and returns the issuer, the key as a PKCS#8 PEM (v2, as
    /// ring writes it) and a JWKS document with the public key.
    pub fn generate(
        kid: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<(DevIssuer, String, String), DevIssuerError> {
        let rng = SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| DevIssuerError::KeyGeneration)?;
        let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
        let dev = DevIssuer::from_pkcs8_der(pkcs8.as_ref(), kid, issuer, audience)?;
        let jwks = dev.jwks_json();
        Ok((dev, pem, jwks))
    }

    /// Loads an Ed25519 PKCS#8 private key (v1 or v2) from PEM.
    pub fn from_pem(
        pem: &str,
        kid: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<DevIssuer, DevIssuerError> {
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| DevIssuerError::Pem)?;
        DevIssuer::from_pkcs8_der(der.secret_pkcs8_der(), kid, issuer, audience)
    }

    /// Builds the issuer from PKCS#8 DER and checks the identifiers.
    fn from_pkcs8_der(
        der: &[u8],
        kid: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<DevIssuer, DevIssuerError> {
        if !kid_is_acceptable(kid) {
            return Err(DevIssuerError::InvalidKid);
        }
        if issuer.is_empty() || audience.is_empty() {
            return Err(DevIssuerError::EmptyField);
        }
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| DevIssuerError::InvalidKey)?;
        Ok(DevIssuer {
            key_pair,
            kid: kid.to_owned(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The key id put in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `iss` put in every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` put in every token.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// A JWKS document containing this issuer's public key.
    pub fn jwks_json(&self) -> String {
        let mut jwk = Map::new();
        jwk.insert("kty".into(), "OKP".into());
        jwk.insert("crv".into(), "Ed25519".into());
        jwk.insert("alg".into(), "EdDSA".into());
        jwk.insert("use".into(), "sig".into());
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert(
            "x".into(),
            URL_SAFE_NO_PAD
                .encode(self.key_pair.public_key().as_ref())
                .into(),
        );
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(vec![Value::Object(jwk)]));
        Value::Object(document).to_string()
    }

    /// Mints a token for `subject` valid from `now_unix` for `ttl_secs` seconds.
    ///
    /// A zero or negative `ttl_secs` gives an already-expired token, which tests use on purpose.
    pub fn mint(
        &self,
        subject: &str,
        roles: &[Role],
        unit: Option<&str>,
        ttl_secs: i64,
        now_unix: i64,
    ) -> String {
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("sub".into(), subject.into());
        claims.insert(
            "roles".into(),
            Value::Array(
                roles
                    .iter()
                    .map(|role| Value::from(role.as_str()))
                    .collect(),
            ),
        );
        if let Some(unit) = unit {
            claims.insert("unit".into(), unit.into());
        }
        claims.insert("iat".into(), now_unix.into());
        claims.insert("nbf".into(), now_unix.into());
        claims.insert("exp".into(), now_unix.saturating_add(ttl_secs).into());
        claims.insert("jti".into(), self.new_jti(now_unix).into());
        self.sign_compact(&self.header(), &claims)
    }

    /// The JWS header of every minted token.
    fn header(&self) -> Map<String, Value> {
        let mut header = Map::new();
        header.insert("alg".into(), "EdDSA".into());
        header.insert("typ".into(), "JWT".into());
        header.insert("kid".into(), self.kid.clone().into());
        header
    }

    /// Signs a header and claims set as a compact JWS: `b64(header).b64(claims).b64(sig)`.
    ///
    /// Signing with ring directly keeps minting independent of the process-wide jsonwebtoken
    /// provider, and lets tests sign deliberately malformed claims.
    fn sign_compact(&self, header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(Value::Object(header.clone()).to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()));
        let signature = self.key_pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        token
    }

    /// A fresh token id: 128 random bits, or, should the system RNG fail, a digest that is still
    /// unique per process (a counter) and per key and time.
    fn new_jti(&self, now_unix: i64) -> String {
        let count = JTI_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        if SystemRandom::new().fill(&mut bytes).is_err() {
            tracing::warn!("system RNG failed; deriving the development token id from a counter");
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            context.update(&count.to_be_bytes());
            context.update(&std::process::id().to_be_bytes());
            context.update(&now_unix.to_be_bytes());
            context.update(self.key_pair.public_key().as_ref());
            let digest = context.finish();
            for (slot, byte) in bytes.iter_mut().zip(digest.as_ref()) {
                *slot = *byte;
            }
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const ISS: &str = "https://idp.herning.example";
    const AUD: &str = "brobygger-local";
    const NOW: i64 = 1_750_000_000;

    /// An Ed25519 development issuer plus a verifier that trusts it.
    fn ed_setup() -> (DevIssuer, TokenVerifier) {
        let (dev, _pem, jwks_json) = DevIssuer::generate("ed-1", ISS, AUD).unwrap();
        let jwks = Jwks::from_json(jwks_json.as_bytes()).unwrap();
        (dev, TokenVerifier::new(jwks, ISS, AUD).unwrap())
    }

    /// Claims that pass every check, as a starting point for the negative tests.
    fn good_claims() -> Map<String, Value> {
        match serde_json::json!({
            "iss": ISS, "aud": AUD, "sub": "user-17", "roles": ["caseworker"],
            "iat": NOW, "nbf": NOW, "exp": NOW + 300,
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn header(alg: &str, kid: &str) -> Map<String, Value> {
        match serde_json::json!({ "alg": alg, "typ": "JWT", "kid": kid }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn b64json(value: &Map<String, Value>) -> String {
        URL_SAFE_NO_PAD.encode(Value::Object(value.clone()).to_string())
    }

    fn reason(verifier: &TokenVerifier, token: &str) -> &'static str {
        verifier.verify(token, NOW).unwrap_err().reason()
    }

    /// A P-256 key pair with its JWK coordinates.
    struct EcKey {
        pair: EcdsaKeyPair,
        x: String,
        y: String,
    }

    fn ec_key() -> EcKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let (x, y) = split_p256_point(pair.public_key().as_ref()).unwrap();
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        EcKey { pair, x, y }
    }

    fn es256_sign(key: &EcKey, header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
        let input = format!("{}.{}", b64json(header), b64json(claims));
        let sig = key
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn hs256_sign(
        secret: &[u8],
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
    ) -> String {
        let input = format!("{}.{}", b64json(header), b64json(claims));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The JWK `x` of the development issuer's key.
    fn ed_x(dev: &DevIssuer) -> String {
        URL_SAFE_NO_PAD.encode(dev.key_pair.public_key().as_ref())
    }

    #[test]
    fn role_wire_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                Value::from(role.as_str())
            );
        }
        assert_eq!("consent-admin".parse::<Role>().unwrap(), Role::ConsentAdmin);
        assert!("Admin".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
    }

    #[test]
    fn eddsa_token_is_accepted() {
        let (dev, verifier) = ed_setup();
        let token = dev.mint(
            "user-17",
            &[Role::Caseworker, Role::Submitter, Role::Caseworker],
            Some("born-og-unge"),
            300,
            NOW,
        );
        let verified = verifier.verify(&token, NOW + 10).unwrap();
        assert_eq!(verified.subject, "user-17");
        assert_eq!(verified.roles, vec![Role::Caseworker, Role::Submitter]);
        assert!(verified.has_role(Role::Submitter));
        assert!(!verified.has_role(Role::Admin));
        assert_eq!(verified.unit.as_deref(), Some("born-og-unge"));
        assert_eq!(verified.expires_at, NOW + 300);
        assert_eq!(verified.key_id, "ed-1");
    }

    #[test]
    fn unknown_roles_are_ignored_and_no_roles_is_allowed() {
        let (dev, verifier) = ed_setup();
        let mut claims = good_claims();
        claims.insert(
            "roles".into(),
            serde_json::json!(["superuser", "auditor", "auditor"]),
        );
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap().roles,
            vec![Role::Auditor]
        );

        claims.remove("roles");
        let token = dev.sign_compact(&dev.header(), &claims);
        let verified = verifier.verify(&token, NOW).unwrap();
        assert!(verified.roles.is_empty());
        assert_eq!(verified.unit, None);
    }

    #[test]
    fn es256_token_is_accepted() {
        let (dev, _, _) = DevIssuer::generate("ed-1", ISS, AUD).unwrap();
        let ec = ec_key();
        let jwks = serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed-1", "x": ed_x(&dev) },
            { "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "ec-1",
              "x": ec.x, "y": ec.y },
        ]});
        let jwks = Jwks::from_json(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(jwks.key_ids().collect::<Vec<_>>(), vec!["ec-1", "ed-1"]);
        let verifier = TokenVerifier::new(jwks, ISS, AUD).unwrap();

        let mut claims = good_claims();
        claims.insert("roles".into(), serde_json::json!(["consent-admin"]));
        claims.insert("aud".into(), serde_json::json!(["other-api", AUD]));
        let token = es256_sign(&ec, &header("ES256", "ec-1"), &claims);
        let verified = verifier.verify(&token, NOW).unwrap();
        assert_eq!(verified.roles, vec![Role::ConsentAdmin]);
        assert_eq!(verified.key_id, "ec-1");

        // The EdDSA key in the same set still works alongside.
        let token = dev.mint("user-1", &[Role::Admin], None, 60, NOW);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap().roles,
            vec![Role::Admin]
        );

        // An Ed25519-signed token claiming ES256 under the EC key cannot verify either.
        let forged = dev.sign_compact(&header("ES256", "ec-1"), &claims);
        assert_eq!(reason(&verifier, &forged), "bad-signature");
    }

    #[test]
    fn expiry_uses_the_injected_clock_and_leeway() {
        let (dev, verifier) = ed_setup();
        let token = dev.mint("user-17", &[Role::Caseworker], None, 60, NOW);
        assert!(verifier.verify(&token, NOW + 60 + 29).is_ok());
        assert_eq!(
            verifier.verify(&token, NOW + 60 + 30).unwrap_err().reason(),
            "expired"
        );
        assert_eq!(
            verifier.verify(&token, NOW + 10_000).unwrap_err(),
            TokenError::Expired
        );

        let strict = verifier.clone().with_leeway_secs(0);
        assert!(strict.verify(&token, NOW + 59).is_ok());
        assert_eq!(
            strict.verify(&token, NOW + 60).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn not_yet_valid_is_refused() {
        let (dev, verifier) = ed_setup();
        let mut claims = good_claims();
        claims.insert("nbf".into(), (NOW + 120).into());
        claims.insert("exp".into(), (NOW + 600).into());
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(reason(&verifier, &token), "not-yet-valid");
        assert!(verifier.verify(&token, NOW + 100).is_ok());

        claims.insert("nbf".into(), "soon".into());
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(reason(&verifier, &token), "claim-type");
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let (dev, verifier) = ed_setup();
        let mut claims = good_claims();
        claims.insert("iss".into(), "https://evil.example".into());
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::WrongIssuer
        );
        assert_eq!(reason(&verifier, &token), "wrong-issuer");

        // An array issuer is not a string, even if it contains the right value.
        claims.insert("iss".into(), serde_json::json!([ISS]));
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(reason(&verifier, &token), "claim-type");
    }

    #[test]
    fn wrong_audience_is_refused() {
        let (dev, verifier) = ed_setup();
        let mut claims = good_claims();
        claims.insert("aud".into(), "someone-else".into());
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(reason(&verifier, &token), "wrong-audience");

        claims.insert("aud".into(), serde_json::json!([]));
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(reason(&verifier, &token), "wrong-audience");
    }

    #[test]
    fn alg_none_is_refused() {
        let (dev, verifier) = ed_setup();
        let claims = good_claims();
        let unsigned = format!("{}.{}.", b64json(&header("none", "ed-1")), b64json(&claims));
        assert_eq!(reason(&verifier, &unsigned), "algorithm-not-allowed");
        let with_sig = dev.sign_compact(&header("none", "ed-1"), &claims);
        assert_eq!(reason(&verifier, &with_sig), "algorithm-not-allowed");
        let mut no_kid = header("none", "x");
        no_kid.remove("kid");
        let unsigned = format!("{}.{}.", b64json(&no_kid), b64json(&claims));
        assert_eq!(reason(&verifier, &unsigned), "algorithm-not-allowed");
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        let (dev, verifier) = ed_setup();
        let claims = good_claims();
        let raw = dev.key_pair.public_key().as_ref().to_vec();
        let token = hs256_sign(&raw, &header("HS256", "ed-1"), &claims);
        assert_eq!(reason(&verifier, &token), "algorithm-not-allowed");
        let token = hs256_sign(ed_x(&dev).as_bytes(), &header("HS256", "ed-1"), &claims);
        assert_eq!(reason(&verifier, &token), "algorithm-not-allowed");
        let token = hs256_sign(
            dev.jwks_json().as_bytes(),
            &header("HS512", "ed-1"),
            &claims,
        );
        assert_eq!(reason(&verifier, &token), "algorithm-not-allowed");
    }

    #[test]
    fn provider_refuses_hmac_and_mismatched_families_even_when_called_directly() {
        install_crypto_provider().unwrap();
        let (dev, _) = ed_setup();
        let raw = dev.key_pair.public_key().as_ref().to_vec();
        let claims = good_claims();
        let token = hs256_sign(&raw, &header("HS256", "ed-1"), &claims);

        // Even a caller that bypasses TokenVerifier and asks jsonwebtoken for HS256 gets nothing.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_audience(&[AUD]);
        let result =
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(&raw), &validation);
        assert!(result.is_err());

        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::HS256, &DecodingKey::from_secret(&raw))
                .is_err()
        );
        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::HS256, &DecodingKey::from_ed_der(&raw))
                .is_err()
        );
        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::ES256, &DecodingKey::from_ed_der(&raw))
                .is_err()
        );
        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::EdDSA, &DecodingKey::from_secret(&raw))
                .is_err()
        );
        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::ES384, &DecodingKey::from_ec_der(&raw))
                .is_err()
        );
        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::RS256, &DecodingKey::from_rsa_der(&raw))
                .is_err()
        );
        assert!(
            (RING_PROVIDER.verifier_factory)(&Algorithm::EdDSA, &DecodingKey::from_ed_der(&raw))
                .is_ok()
        );
        assert!(
            (RING_PROVIDER.signer_factory)(&Algorithm::HS256, &EncodingKey::from_secret(&raw))
                .is_err()
        );
        assert!((RING_PROVIDER.key_utils.rsa_pub_components_from_public_key)(&raw).is_err());
        assert!((RING_PROVIDER.key_utils.rsa_pub_components_from_private_key)(&raw).is_err());
    }

    #[test]
    fn provider_signs_with_jsonwebtoken_and_key_utils_work() {
        install_crypto_provider().unwrap();
        install_crypto_provider().unwrap();

        // EdDSA through jsonwebtoken::encode, with ring's PKCS#8 v2 key, verifies here.
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
        let dev = DevIssuer::from_pem(&pem, "ed-pem", ISS, AUD).unwrap();
        let verifier = TokenVerifier::new(
            Jwks::from_json(dev.jwks_json().as_bytes()).unwrap(),
            ISS,
            AUD,
        )
        .unwrap();
        let mut jwt_header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        jwt_header.kid = Some("ed-pem".into());
        let token = jsonwebtoken::encode(
            &jwt_header,
            &Value::Object(good_claims()),
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&token, NOW).unwrap().key_id, "ed-pem");
        let public = (RING_PROVIDER.key_utils.ed_pub_components_from_private_key)(
            pkcs8.as_ref(),
            &EllipticCurve::Ed25519,
        )
        .unwrap();
        assert_eq!(public, dev.key_pair.public_key().as_ref());

        // ES256 through jsonwebtoken::encode, and the JWK derived by the key utilities.
        let rng = SystemRandom::new();
        let ec_pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let encoding_key = EncodingKey::from_ec_der(ec_pkcs8.as_ref());
        let jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding_key, Algorithm::ES256).unwrap();
        assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256).unwrap().len(), 43);
        let mut jwk_value = serde_json::to_value(&jwk).unwrap();
        jwk_value["kid"] = "ec-jwt".into();
        let jwks = serde_json::json!({ "keys": [jwk_value] }).to_string();
        let verifier =
            TokenVerifier::new(Jwks::from_json(jwks.as_bytes()).unwrap(), ISS, AUD).unwrap();
        let mut jwt_header = jsonwebtoken::Header::new(Algorithm::ES256);
        jwt_header.kid = Some("ec-jwt".into());
        let token = jsonwebtoken::encode(&jwt_header, &Value::Object(good_claims()), &encoding_key)
            .unwrap();
        assert_eq!(verifier.verify(&token, NOW).unwrap().key_id, "ec-jwt");
        assert!(
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::ES384),
                &Value::Null,
                &encoding_key
            )
            .is_err()
        );
    }

    #[test]
    fn unknown_or_missing_kid_is_refused() {
        let (dev, verifier) = ed_setup();
        let claims = good_claims();
        let token = dev.sign_compact(&header("EdDSA", "ed-2"), &claims);
        assert_eq!(reason(&verifier, &token), "unknown-key");
        let mut no_kid = dev.header();
        no_kid.remove("kid");
        let token = dev.sign_compact(&no_kid, &claims);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::UnknownKey
        );
    }

    #[test]
    fn claims_with_wrong_types_are_refused() {
        let (dev, verifier) = ed_setup();
        let cases: Vec<(&str, Option<Value>, &str)> = vec![
            (
                "exp",
                Some(Value::from((NOW + 300).to_string())),
                "claim-type",
            ),
            (
                "exp",
                Some(serde_json::json!(1_750_000_300.5)),
                "claim-type",
            ),
            ("exp", Some(Value::Null), "claim-type"),
            ("exp", None, "claim-type"),
            ("aud", None, "claim-type"),
            ("aud", Some(Value::from(42)), "claim-type"),
            ("aud", Some(serde_json::json!([AUD, 42])), "claim-type"),
            ("iss", None, "claim-type"),
            ("iss", Some(Value::from(7)), "claim-type"),
            ("sub", None, "claim-type"),
            ("sub", Some(Value::from(17)), "claim-type"),
            ("sub", Some(Value::from("")), "claim-value"),
            ("sub", Some(Value::from("a".repeat(129))), "claim-value"),
            ("sub", Some(Value::from("user\n17")), "claim-value"),
            ("iat", Some(Value::from("yesterday")), "claim-type"),
            ("roles", Some(Value::from("admin")), "claim-type"),
            ("roles", Some(serde_json::json!(["admin", 1])), "claim-type"),
            ("unit", Some(Value::from("Born og Unge")), "claim-value"),
            ("unit", Some(Value::from("u".repeat(65))), "claim-value"),
            ("unit", Some(Value::from(3)), "claim-type"),
        ];
        for (name, value, expected) in cases {
            let mut claims = good_claims();
            match &value {
                Some(v) => claims.insert(name.into(), v.clone()),
                None => claims.remove(name),
            };
            let token = dev.sign_compact(&dev.header(), &claims);
            let error = verifier.verify(&token, NOW).unwrap_err();
            assert_eq!(error.reason(), expected, "{name} = {value:?}");
        }
        let mut claims = good_claims();
        claims.insert("exp".into(), Value::from((NOW + 300).to_string()));
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::ClaimType("exp")
        );
        claims = good_claims();
        claims.remove("aud");
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::ClaimType("aud")
        );
        claims.insert("aud".into(), 5.into());
        let token = dev.sign_compact(&dev.header(), &claims);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::ClaimType("aud")
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let (dev, verifier) = ed_setup();
        let token = dev.mint("user-17", &[Role::Caseworker], None, 300, NOW);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = good_claims();
        claims.insert("roles".into(), serde_json::json!(["admin"]));
        parts[1] = b64json(&claims);
        let tampered = parts.join(".");
        assert_eq!(reason(&verifier, &tampered), "bad-signature");

        // Flipping one signature bit is caught as well.
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        sig[0] ^= 1;
        let original_payload = token.split('.').nth(1).unwrap().to_owned();
        let flipped = format!(
            "{}.{}.{}",
            parts[0],
            original_payload,
            URL_SAFE_NO_PAD.encode(sig)
        );
        assert_eq!(reason(&verifier, &flipped), "bad-signature");
    }

    #[test]
    fn es256_header_with_an_ed25519_kid_is_refused() {
        let (dev, verifier) = ed_setup();
        let token = dev.sign_compact(&header("ES256", "ed-1"), &good_claims());
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::KeyAlgorithmMismatch
        );
        assert_eq!(reason(&verifier, &token), "algorithm-not-allowed");

        // And the other way round: an EdDSA header naming a P-256 key.
        let ec = ec_key();
        let jwks = serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "ec-1", "x": ec.x, "y": ec.y },
        ]});
        let verifier = TokenVerifier::new(
            Jwks::from_json(jwks.to_string().as_bytes()).unwrap(),
            ISS,
            AUD,
        )
        .unwrap();
        let token = dev.sign_compact(&header("EdDSA", "ec-1"), &good_claims());
        assert_eq!(reason(&verifier, &token), "algorithm-not-allowed");
    }

    #[test]
    fn malformed_and_odd_headers_are_refused() {
        let (dev, verifier) = ed_setup();
        let good = dev.mint("user-17", &[], None, 300, NOW);
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "....",
            format!("{good}.x").as_str(),
            "a".repeat(9000).as_str(),
        ] {
            assert_eq!(reason(&verifier, bad), "malformed", "{bad:.40}");
        }
        let claims = good_claims();
        let mut h = dev.header();
        h.insert("crit".into(), serde_json::json!(["b64"]));
        assert_eq!(
            reason(&verifier, &dev.sign_compact(&h, &claims)),
            "unsupported-header"
        );
        let mut h = dev.header();
        h.insert("typ".into(), "logout+jwt".into());
        assert_eq!(
            reason(&verifier, &dev.sign_compact(&h, &claims)),
            "wrong-token-type"
        );
        h.insert("typ".into(), "application/AT+JWT".into());
        assert!(verifier.verify(&dev.sign_compact(&h, &claims), NOW).is_ok());
        let mut h = dev.header();
        h.remove("alg");
        assert_eq!(
            reason(&verifier, &dev.sign_compact(&h, &claims)),
            "malformed"
        );
    }

    #[test]
    fn error_messages_do_not_contain_the_token() {
        let (dev, verifier) = ed_setup();
        let token = dev.mint("user-secret-name", &[Role::Admin], None, 60, NOW);
        let error = verifier.verify(&token, NOW + 1000).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(&token));
        assert!(!shown.contains("user-secret-name"));
    }

    #[test]
    fn jwks_parse_errors_name_the_kid() {
        let (dev, _, _) = DevIssuer::generate("ed-1", ISS, AUD).unwrap();
        let x = ed_x(&dev);
        let ec = ec_key();
        let parse = |v: Value| Jwks::from_json(v.to_string().as_bytes()).unwrap_err();

        let dup = parse(serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "kid": "k", "x": x },
            { "kty": "OKP", "crv": "Ed25519", "kid": "k", "x": x },
        ]}));
        assert!(matches!(&dup, JwksError::DuplicateKid { kid } if kid == "k"));
        assert!(dup.to_string().contains("\"k\""));

        let rsa = parse(serde_json::json!({ "keys": [
            { "kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": "AQAB" },
        ]}));
        assert!(matches!(&rsa, JwksError::UnsupportedKey { kid, .. } if kid == "rsa-1"));
        assert!(rsa.to_string().contains("rsa-1"));

        let oct =
            parse(serde_json::json!({ "keys": [{ "kty": "oct", "kid": "h", "k": "c2VjcmV0" }]}));
        assert!(matches!(&oct, JwksError::UnsupportedKey { kid, .. } if kid == "h"));

        let alg = parse(serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "alg": "ES256", "kid": "ed-x", "x": x },
        ]}));
        assert!(matches!(&alg, JwksError::AlgorithmMismatch { kid } if kid == "ed-x"));
        assert!(alg.to_string().contains("ed-x"));

        let alg = parse(serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "alg": "HS256", "kid": "ec-x", "x": ec.x, "y": ec.y },
        ]}));
        assert!(matches!(&alg, JwksError::AlgorithmMismatch { kid } if kid == "ec-x"));

        let p384 = parse(serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-384", "kid": "ec-384", "x": ec.x, "y": ec.y },
        ]}));
        assert!(matches!(&p384, JwksError::UnsupportedKey { kid, .. } if kid == "ec-384"));

        let no_kid =
            parse(serde_json::json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x }]}));
        assert!(matches!(no_kid, JwksError::MissingKid { index: 0 }));

        let private = parse(serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "kid": "p", "x": x, "d": x },
        ]}));
        assert!(matches!(&private, JwksError::PrivateKeyMaterial { kid } if kid == "p"));

        let short = parse(serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "kid": "s", "x": "AAAA" },
        ]}));
        assert!(matches!(&short, JwksError::InvalidKeyMaterial { kid, .. } if kid == "s"));

        let enc = parse(serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "kid": "e", "use": "enc", "x": x },
        ]}));
        assert!(matches!(&enc, JwksError::UnsupportedKey { kid, .. } if kid == "e"));

        assert!(matches!(
            parse(serde_json::json!({ "keys": [] })),
            JwksError::NoKeys
        ));
        assert!(matches!(
            parse(serde_json::json!([])),
            JwksError::NotAKeySet
        ));
        assert!(matches!(
            Jwks::from_json(b"{not json"),
            Err(JwksError::Json(_))
        ));
    }

    #[test]
    fn dev_issuer_reads_pkcs8_v1_as_openssl_writes_it() {
        // The Ed25519 example private key from RFC 8410 §10.3 (PKCS#8 v1, no public key).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let dev = DevIssuer::from_pem(pem, "rfc8410", ISS, AUD).unwrap();
        // RFC 8410 §10.1 gives the matching public key, whose raw bytes end the SPKI.
        assert_eq!(ed_x(&dev), "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE");
        let verifier = TokenVerifier::new(
            Jwks::from_json(dev.jwks_json().as_bytes()).unwrap(),
            ISS,
            AUD,
        )
        .unwrap();
        let token = dev.mint("u", &[Role::Submitter], None, 60, NOW);
        assert_eq!(
            verifier.verify(&token, NOW).unwrap().roles,
            vec![Role::Submitter]
        );
    }

    #[test]
    fn dev_issuer_pem_round_trip_and_config_errors() {
        let (first, pem, jwks) = DevIssuer::generate("ed-1", ISS, AUD).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        let again = DevIssuer::from_pem(&pem, "ed-1", ISS, AUD).unwrap();
        assert_eq!(again.jwks_json(), jwks);
        assert_eq!(first.jwks_json(), jwks);
        let verifier =
            TokenVerifier::new(Jwks::from_json(jwks.as_bytes()).unwrap(), ISS, AUD).unwrap();
        let a = again.mint("u", &[Role::Auditor], None, 60, NOW);
        let b = again.mint("u", &[Role::Auditor], None, 60, NOW);
        assert_ne!(a, b, "jti makes every token unique");
        assert!(verifier.verify(&a, NOW).is_ok());

        assert_eq!(
            DevIssuer::from_pem("nonsense", "k", ISS, AUD).unwrap_err(),
            DevIssuerError::Pem
        );
        assert_eq!(
            DevIssuer::from_pem(&pem, "", ISS, AUD).unwrap_err(),
            DevIssuerError::InvalidKid
        );
        assert_eq!(
            DevIssuer::from_pem(&pem, "k", "", AUD).unwrap_err(),
            DevIssuerError::EmptyField
        );
        let jwks = Jwks::from_json(first.jwks_json().as_bytes()).unwrap();
        assert_eq!(
            TokenVerifier::new(jwks.clone(), "", AUD).unwrap_err(),
            VerifierConfigError::EmptyIssuer
        );
        assert_eq!(
            TokenVerifier::new(jwks, ISS, "").unwrap_err(),
            VerifierConfigError::EmptyAudience
        );
    }
}
