//! Delivery receipts: building them from an audit receipt, and verifying them at the sender.
//!
//! A receipt is the receiver's audit log speaking (DESIGN §6): the entry that admitted the
//! message, its leaf index and inclusion proof, and a checkpoint the receiver signed over a tree
//! that contains it. The sender checks every part with the receiver's verifier key from the
//! manifest, so a receipt proves what was delivered even against the receiver's operator later
//! (a checkpoint that left the node pins the log). Pure: no I/O.

use crate::audit::checkpoint::Checkpoint;
use crate::audit::entry::{self, Decision};
use crate::audit::merkle::{self, Hash};
use crate::signed_note::VerifierKey;
use crate::wire::{AckV1, ReceiptV1};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Why a receipt does not prove delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the checkpoint is not signed by the receiver's audit key: {0}")]
    Checkpoint(String),
    #[error("the entry is not base64 or not a valid audit entry")]
    Entry,
    #[error("the entry is at index {entry} but the receipt says {receipt}")]
    Index { entry: u64, receipt: u64 },
    #[error("the entry does not admit this message (decision or envelope hash differs)")]
    NotThisMessage,
    #[error("the inclusion proof does not lead to the checkpoint's root")]
    Inclusion,
    #[error("the receipt is for message {0}, not for the message sent")]
    MessageId(String),
}

/// Builds the wire receipt of an admitted message.
pub fn build(
    message_id: &str,
    leaf_index: u64,
    entry: &[u8],
    proof: &[Hash],
    checkpoint: &str,
    ack: Option<AckV1>,
) -> ReceiptV1 {
    ReceiptV1 {
        message_id: message_id.to_owned(),
        leaf_index,
        entry: STANDARD.encode(entry),
        inclusion_proof: proof.iter().map(|hash| entry::lower_hex(hash)).collect(),
        checkpoint: checkpoint.to_owned(),
        ack,
    }
}

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    pub leaf_index: u64,
    pub tree_size: u64,
}

/// Verifies that `receipt` proves the admission of exactly the bytes `sent` (message
/// `message_id`) in the log whose key is `key`.
pub fn verify(
    receipt: &ReceiptV1,
    message_id: &str,
    sent: &[u8],
    key: &VerifierKey,
) -> Result<VerifiedReceipt, ReceiptError> {
    OpenedCheckpoints::new(key).verify(receipt, message_id, sent)
}

/// The checkpoints of one receiver, each opened (its signature checked) once. The receipts of
/// a batch share a few checkpoints (one per group commit at the receiver), and checking an
/// Ed25519 signature costs more than everything else in checking a receipt.
pub struct OpenedCheckpoints<'k> {
    key: &'k VerifierKey,
    opened: std::collections::HashMap<String, Result<Checkpoint, ReceiptError>>,
}

impl<'k> OpenedCheckpoints<'k> {
    /// Opens checkpoints with the receiver's audit key `key`.
    pub fn new(key: &'k VerifierKey) -> Self {
        Self {
            key,
            opened: std::collections::HashMap::new(),
        }
    }

    /// Every checkpoint opened so far whose signature checked, with its tree head.
    pub fn opened_heads(&self) -> impl Iterator<Item = (&str, crate::audit::checkpoint::TreeHead)> {
        self.opened
            .iter()
            .filter_map(|(note, opened)| opened.as_ref().ok().map(|c| (note.as_str(), c.head)))
    }

    fn open(&mut self, note: &str) -> &Result<Checkpoint, ReceiptError> {
        let key = self.key;
        self.opened.entry(note.to_owned()).or_insert_with(|| {
            Checkpoint::open(note, key).map_err(|e| ReceiptError::Checkpoint(e.to_string()))
        })
    }

    /// Verifies that `receipt` proves the admission of exactly the bytes `sent` (message
    /// `message_id`) in this receiver's log.
    pub fn verify(
        &mut self,
        receipt: &ReceiptV1,
        message_id: &str,
        sent: &[u8],
    ) -> Result<VerifiedReceipt, ReceiptError> {
        verify_with(receipt, message_id, sent, self)
    }
}

fn verify_with(
    receipt: &ReceiptV1,
    message_id: &str,
    sent: &[u8],
    checkpoints: &mut OpenedCheckpoints<'_>,
) -> Result<VerifiedReceipt, ReceiptError> {
    if receipt.message_id != message_id {
        return Err(ReceiptError::MessageId(receipt.message_id.clone()));
    }
    let checkpoint = match checkpoints.open(&receipt.checkpoint) {
        Ok(checkpoint) => checkpoint,
        Err(e) => return Err(e.clone()),
    };
    let bytes = STANDARD
        .decode(&receipt.entry)
        .map_err(|_| ReceiptError::Entry)?;
    let decoded = entry::decode(&bytes).map_err(|_| ReceiptError::Entry)?;
    if decoded.idx != receipt.leaf_index {
        return Err(ReceiptError::Index {
            entry: decoded.idx,
            receipt: receipt.leaf_index,
        });
    }
    let sent_hash = entry::lower_hex(ring::digest::digest(&ring::digest::SHA256, sent).as_ref());
    if decoded.record.decision != Some(Decision::Permit)
        || decoded.record.envelope_sha256.as_deref() != Some(sent_hash.as_str())
    {
        return Err(ReceiptError::NotThisMessage);
    }
    let proof = receipt
        .inclusion_proof
        .iter()
        .map(|h| {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(h, &mut hash).map(|()| hash)
        })
        .collect::<Result<Vec<Hash>, _>>()
        .map_err(|_| ReceiptError::Inclusion)?;
    let leaf = merkle::leaf_hash(&bytes);
    if !merkle::verify_inclusion(
        receipt.leaf_index,
        checkpoint.head.size,
        &leaf,
        &proof,
        &checkpoint.head.root,
    ) {
        return Err(ReceiptError::Inclusion);
    }
    Ok(VerifiedReceipt {
        leaf_index: receipt.leaf_index,
        tree_size: checkpoint.head.size,
    })
}
