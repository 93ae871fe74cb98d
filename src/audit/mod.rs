//! The tamper-evident audit log.
//!
//! So far: the RFC 6962 Merkle tree (`merkle`), a pure core with no storage imports, so that the
//! offline verifier can reuse it without a database. The entry encoding, checkpoints and the
//! group-commit writer follow (issue "The write path and the tamper-evident audit log").

pub mod merkle;
