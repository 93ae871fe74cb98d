//! The integration test binary: real nodes on loopback ports chosen by the OS, a fresh
//! development PKI per test, real SQLite files and a real PostgreSQL server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

mod audit;
mod audit_crosscheck;
mod audit_verify;
mod auditors;
mod cli;
mod config_errors;
mod crash;
mod delivery;
mod demo;
mod docs_examples;
mod exchange;
mod local_api_auth;
mod manifest_rules;
mod mtls;
mod policy_props;
mod storage;
mod tidy;
mod tlog_tiles_crosscheck;
mod transparency;
mod wire_goldens;
