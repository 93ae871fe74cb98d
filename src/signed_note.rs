//! C2SP `signed-note` with Ed25519: signing, verifier key strings and verification.
//!
//! Used for the federation manifest (signed by the operator) and, later, for audit checkpoints
//! (signed by each node). Pure: no I/O. Format (c2sp.org/signed-note): the note text ends in a
//! newline, then a blank line, then one or more lines `— <key name> <base64(key hash || sig)>`.
//! The key hash is the first four bytes of SHA-256(name || "\n" || 0x01 || public key), and a
//! verifier key is written `<name>+<hex key hash>+<base64(0x01 || public key)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use std::fmt;
use std::str::FromStr;

/// The algorithm byte of Ed25519 keys in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;
const SIGNATURE_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the verifier key is malformed: {0}")]
    BadVerifierKey(&'static str),
    #[error("the key name is not valid (it must be non-empty, without spaces or plus signs)")]
    BadKeyName,
    #[error("the private key is not an Ed25519 PKCS#8 key")]
    BadPrivateKey,
    #[error("the note text must be non-empty UTF-8 ending in a newline, without a blank last line")]
    BadText,
    #[error("the note is not signed: no blank line followed by signature lines")]
    Unsigned,
    #[error("a signature line is malformed")]
    MalformedSignature,
    #[error("the note carries no signature by the key `{0}`")]
    NoSignatureByKey(String),
    #[error(
        "the signature by `{0}` does not verify: the note was altered or signed by another key"
    )]
    BadSignature(String),
}

/// A key name: any non-empty string without whitespace or `+` (C2SP signed-note).
fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('+')
}

fn key_hash(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_ED25519]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut hash = [0u8; 4];
    hash.copy_from_slice(digest.as_ref().get(..4).unwrap_or(&[0; 4]));
    hash
}

/// A public key that verifies notes, with its name, as published in the manifest and configs.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    hash: [u8; 4],
    public_key: [u8; 32],
}

impl VerifierKey {
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName);
        }
        Ok(Self {
            name: name.to_owned(),
            hash: key_hash(name, &public_key),
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Verifies one Ed25519 signature by this key over `message`.
    pub fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }

    /// Checks a signed note and returns its text (with the final newline) if this key signed it.
    /// Signatures by other keys are ignored, as the format requires.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::Unsigned)?;
        let (text, rest) = note.split_at(split + 1);
        let signatures = rest.get(1..).ok_or(NoteError::Unsigned)?;
        if text.is_empty() || !signatures.ends_with('\n') {
            return Err(NoteError::Unsigned);
        }
        let mut found = false;
        for line in signatures.lines() {
            let body = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or(NoteError::MalformedSignature)?;
            let (name, encoded) = body.split_once(' ').ok_or(NoteError::MalformedSignature)?;
            let raw = BASE64
                .decode(encoded)
                .map_err(|_| NoteError::MalformedSignature)?;
            if raw.len() < 4 {
                return Err(NoteError::MalformedSignature);
            }
            let (hash, signature) = raw.split_at(4);
            if name != self.name || hash != self.hash {
                continue;
            }
            if !self.verify_raw(text.as_bytes(), signature) {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(NoteError::NoSignatureByKey(self.name.clone()))
        }
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut encoded = Vec::with_capacity(33);
        encoded.push(ALG_ED25519);
        encoded.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.hash),
            BASE64.encode(encoded)
        )
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut parts = value.splitn(3, '+');
        let (Some(name), Some(hash_hex), Some(key_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadVerifierKey(
                "expected <name>+<hash>+<base64 key>",
            ));
        };
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName);
        }
        let raw = BASE64
            .decode(key_b64)
            .map_err(|_| NoteError::BadVerifierKey("the key is not base64"))?;
        let (Some(&ALG_ED25519), Some(key_bytes)) = (raw.first(), raw.get(1..)) else {
            return Err(NoteError::BadVerifierKey(
                "only Ed25519 keys (type 0x01) are supported",
            ));
        };
        let public_key: [u8; 32] = key_bytes
            .try_into()
            .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key has 32 bytes"))?;
        let key = Self::new(name, public_key)?;
        if hex::encode(key.hash) != hash_hex {
            return Err(NoteError::BadVerifierKey(
                "the key hash does not match name and key",
            ));
        }
        Ok(key)
    }
}

/// An Ed25519 signing key with the name it signs under.
pub struct NoteSigner {
    name: String,
    key_pair: Ed25519KeyPair,
    verifier: VerifierKey,
}

impl NoteSigner {
    /// Loads a PKCS#8 Ed25519 key (v2 as ring writes it, or v1 as OpenSSL writes it).
    pub fn from_pkcs8(name: &str, pkcs8_der: &[u8]) -> Result<Self, NoteError> {
        let key_pair = Ed25519KeyPair::from_pkcs8(pkcs8_der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8_der))
            .map_err(|_| NoteError::BadPrivateKey)?;
        let public_key: [u8; 32] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::BadPrivateKey)?;
        let verifier = VerifierKey::new(name, public_key)?;
        Ok(Self {
            name: name.to_owned(),
            key_pair,
            verifier,
        })
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8) Ed25519 key, as `pki init` writes them.
    pub fn from_pkcs8_pem(name: &str, pem: &[u8]) -> Result<Self, NoteError> {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| NoteError::BadPrivateKey)?;
        Self::from_pkcs8(name, der.secret_pkcs8_der())
    }

    pub fn verifier_key(&self) -> &VerifierKey {
        &self.verifier
    }

    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.key_pair.sign(message).as_ref());
        out
    }

    /// Signs `text` (which must end in a newline and not in a blank line) as a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if text.is_empty() || !text.ends_with('\n') || text.ends_with("\n\n") {
            return Err(NoteError::BadText);
        }
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&self.verifier.hash);
        raw.extend_from_slice(&self.sign_raw(text.as_bytes()));
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(raw)
        ))
    }
}

/// Generates a fresh Ed25519 key as PKCS#8 v2 DER.
pub fn generate_ed25519_pkcs8() -> Result<Vec<u8>, NoteError> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| NoteError::BadPrivateKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str) -> NoteSigner {
        NoteSigner::from_pkcs8(name, &generate_ed25519_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn sign_and_open_round_trip() {
        let s = signer("brobygger.test/operator");
        let note = s.sign("hello\nworld\n").unwrap();
        assert_eq!(s.verifier_key().open(&note).unwrap(), "hello\nworld\n");
        let parsed: VerifierKey = s.verifier_key().to_string().parse().unwrap();
        assert_eq!(&parsed, s.verifier_key());
    }

    #[test]
    fn altered_text_or_other_key_is_refused() {
        let s = signer("op");
        let note = s.sign("serial 1\n").unwrap();
        let altered = note.replace("serial 1", "serial 2");
        assert_eq!(
            s.verifier_key().open(&altered),
            Err(NoteError::BadSignature("op".into()))
        );
        let other = signer("op");
        assert_eq!(
            other.verifier_key().open(&note),
            Err(NoteError::NoSignatureByKey("op".into()))
        );
        assert_eq!(
            s.verifier_key().open("serial 1\n"),
            Err(NoteError::Unsigned)
        );
    }

    /// The example verifier key and note from the C2SP signed-note specification.
    #[test]
    fn matches_the_c2sp_specification_example() {
        let key: VerifierKey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            .parse()
            .unwrap();
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(
            key.open(note).unwrap(),
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
        );
    }
}
