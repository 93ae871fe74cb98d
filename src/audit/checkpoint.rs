//! Checkpoints in the C2SP `tlog-checkpoint` format, signed as C2SP signed notes.
//!
//! The body is three lines: the log origin, the tree size in decimal, and the base64 root hash.
//! The key name equals the origin, so a checkpoint verified with a member's audit key from the
//! manifest is that member's log speaking. Pure: no I/O.

use super::merkle::Hash;
use crate::signed_note::{NoteError, NoteSigner, VerifierKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint signature does not verify: {0}")]
    Signature(#[from] NoteError),
    #[error("the checkpoint body is malformed: {0}")]
    Malformed(&'static str),
    #[error("the checkpoint is for origin `{found}`, expected `{expected}`")]
    WrongOrigin { expected: String, found: String },
}

/// A tree head: which log, how many entries, and the root over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// A checkpoint of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub head: TreeHead,
}

impl Checkpoint {
    /// The note text that is signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.head.size,
            BASE64.encode(self.head.root)
        )
    }

    /// Signs the checkpoint; the signer's key name must be the origin.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, CheckpointError> {
        if signer.verifier_key().name() != self.origin {
            return Err(CheckpointError::WrongOrigin {
                expected: self.origin.clone(),
                found: signer.verifier_key().name().to_owned(),
            });
        }
        Ok(signer.sign(&self.body())?)
    }

    /// Verifies a signed checkpoint with the log's key and parses it. The origin must equal the
    /// key name. Extension lines after the root are allowed and ignored, as the format permits.
    pub fn open(note: &str, key: &VerifierKey) -> Result<Checkpoint, CheckpointError> {
        let text = key.open(note)?;
        // Split on "\n" only: the format has no carriage returns.
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .ok_or(CheckpointError::Malformed("no origin line"))?;
        let size = lines
            .next()
            .and_then(|l| {
                // Decimal without sign or leading zeros, as the format requires.
                (l == "0" || (!l.starts_with('0') && l.bytes().all(|b| b.is_ascii_digit())))
                    .then(|| l.parse::<u64>().ok())
                    .flatten()
            })
            .ok_or(CheckpointError::Malformed(
                "the size line is not a decimal number",
            ))?;
        let root: Hash = lines
            .next()
            .and_then(|l| BASE64.decode(l).ok())
            .and_then(|raw| raw.try_into().ok())
            .ok_or(CheckpointError::Malformed(
                "the root line is not a base64 SHA-256 hash",
            ))?;
        if origin != key.name() {
            return Err(CheckpointError::WrongOrigin {
                expected: key.name().to_owned(),
                found: origin.to_owned(),
            });
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            head: TreeHead { size, root },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle;
    use crate::signed_note::generate_ed25519_pkcs8;

    #[test]
    fn sign_open_and_refuse() {
        let origin = "brobygger.test/red-barnet/audit";
        let signer = NoteSigner::from_pkcs8(origin, &generate_ed25519_pkcs8().unwrap()).unwrap();
        let checkpoint = Checkpoint {
            origin: origin.into(),
            head: TreeHead {
                size: 3,
                root: merkle::leaf_hash(b"x"),
            },
        };
        let note = checkpoint.sign(&signer).unwrap();
        assert!(note.starts_with("brobygger.test/red-barnet/audit\n3\n"));
        assert_eq!(
            Checkpoint::open(&note, signer.verifier_key()).unwrap(),
            checkpoint
        );
        let forged = note.replacen("\n3\n", "\n4\n", 1);
        assert!(Checkpoint::open(&forged, signer.verifier_key()).is_err());
        let other = NoteSigner::from_pkcs8(
            "brobygger.test/other/audit",
            &generate_ed25519_pkcs8().unwrap(),
        )
        .unwrap();
        assert!(checkpoint.sign(&other).is_err());
    }
}
