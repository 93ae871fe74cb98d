//! Architecture invariants checked by reading the source (ARCHITECTURE.md lists them).

use std::path::Path;

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn all_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    for (path, text) in all_sources() {
        assert!(
            text.starts_with("//!"),
            "{path} must start with a //! comment saying what it is for"
        );
    }
}

#[test]
fn the_pure_modules_do_no_io() {
    for file in [
        "src/domain.rs",
        "src/signed_note.rs",
        "src/manifest.rs",
        "src/audit/merkle.rs",
        "src/audit/checkpoint.rs",
        "src/audit/entry.rs",
        "src/audit/verify.rs",
        "src/policy.rs",
        "src/consent.rs",
        "src/cpr.rs",
        "src/strict_json.rs",
        "src/boundary.rs",
    ] {
        // Comments may name what the module avoids; only code counts.
        let code: String = source(file)
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for forbidden in [
            "sqlx",
            "rusqlite",
            "actix",
            "reqwest",
            "tokio",
            "std::fs",
            "std::net",
            "std::env",
            "crate::storage",
        ] {
            assert!(!code.contains(forbidden), "{file} must not use {forbidden}");
        }
    }
}

/// `wire` knows nothing of storage.
#[test]
fn the_wire_types_know_nothing_of_storage() {
    let text = source("src/wire.rs");
    for forbidden in ["sqlx", "rusqlite", "crate::storage"] {
        assert!(
            !text.contains(forbidden),
            "src/wire.rs must not use {forbidden}"
        );
    }
}

/// The decision core takes plain values: no serde either (house rule 2).
#[test]
fn the_policy_core_knows_no_serde() {
    let code: String = source("src/policy.rs")
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!code.contains("serde"), "src/policy.rs must not use serde");
}

#[test]
fn only_storage_speaks_sql() {
    for (path, text) in all_sources() {
        if path.contains("/src/storage/") {
            continue;
        }
        for driver in ["sqlx::", "rusqlite::"] {
            assert!(
                !text.contains(driver),
                "{path} uses {driver}; only storage may"
            );
        }
        for keyword in ["SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM"] {
            assert!(!text.contains(keyword), "{path} contains SQL (`{keyword}`)");
        }
    }
}

#[test]
fn every_reason_code_is_in_the_documentation_table_with_its_own_title() {
    let docs = source("docs/reason-codes.md");
    let policy_codes = brobygger::policy::DenyReason::ALL.map(|r| r.code());
    for code in brobygger::problem::REFUSAL_CODES
        .iter()
        .chain(policy_codes.iter())
    {
        assert!(
            docs.contains(&format!("| `{code}` |")),
            "docs/reason-codes.md must list `{code}`"
        );
        let problem = brobygger::problem::Problem::refused(code, "", None);
        assert_ne!(
            problem.title, "The request was refused",
            "{code} needs its own title"
        );
    }
}

/// `docs/openapi.json` is the document the code generates (`brobygger::api::openapi_json`). With
/// `BROBYGGER_UPDATE_OPENAPI=1` the test rewrites the file instead of failing.
#[test]
fn the_committed_openapi_document_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let generated = format!("{}\n", brobygger::api::openapi_json());
    if std::env::var("BROBYGGER_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the document the code generates: run \
         `BROBYGGER_UPDATE_OPENAPI=1 cargo test --test it tidy` and commit the file"
    );
}
