//! The tamper-evident audit log.
//!
//! The pure core (`entry`, `merkle`, `checkpoint`) imports no storage, so the offline verifier
//! (`audit verify-export`) needs no database. The group-commit writer builds on it.

pub mod checkpoint;
pub mod entry;
pub mod merkle;
pub mod tiles;
pub mod verify;
