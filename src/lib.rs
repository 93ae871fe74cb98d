//! Brobygger: a federation gateway that lets municipalities and NGOs exchange small, consented
//! summaries about vulnerable children over mutual TLS, with every access audited.
//!
//! See `ARCHITECTURE.md` for the map of modules and the path a message takes.

pub mod admission;
pub mod api;
pub mod audit;
pub mod audited;
pub mod boundary;
pub mod cli;
pub mod config;
pub mod config_reference;
pub mod consent;
pub mod cpr;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod failpoint;
pub mod federation;
pub mod identity;
pub mod jwt;
pub mod log_reader;
pub mod manifest;
pub mod node;
pub mod peer_logs;
pub mod pki;
pub mod policy;
pub mod problem;
pub mod receipt;
pub mod retention;
pub mod schema;
pub mod signed_note;
pub mod storage;
pub mod strict_json;
pub mod wire;
pub mod write_path;
