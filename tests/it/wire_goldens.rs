//! The v1 golden examples in `schemas/v1/examples/`: each passes the boundary's document checks
//! and round-trips through the wire types; altered copies fail with the right reason.

use brobygger::boundary::{MAX_ENVELOPE_BYTES, check_document};
use brobygger::schema::Schemas;
use serde_json::{Value, json};
use std::path::PathBuf;

fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/v1/examples");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn golden(name: &str) -> Value {
    let bytes = examples().into_iter().find(|(n, _)| n == name).unwrap().1;
    serde_json::from_slice(&bytes).unwrap()
}

fn check(value: &Value) -> Result<(), (&'static str, Option<String>)> {
    let schemas = Schemas::compile().unwrap();
    check_document(&serde_json::to_vec(value).unwrap(), &schemas)
        .map(drop)
        .map_err(|r| (r.reason, r.pointer))
}

#[test]
fn every_golden_example_passes_and_round_trips_through_the_wire_types() {
    let schemas = Schemas::compile().unwrap();
    let all = examples();
    let types: Vec<&str> = all
        .iter()
        .map(|(n, _)| n.trim_end_matches(".json"))
        .collect();
    assert_eq!(
        types,
        // File-name order: "referral-response.json" sorts before "referral.json".
        [
            "ack",
            "activity-summary",
            "consent.granted",
            "consent.withdrawn",
            "referral-response",
            "referral"
        ]
    );
    for (name, bytes) in all {
        let envelope = check_document(&bytes, &schemas)
            .unwrap_or_else(|r| panic!("{name}: {} at {:?}: {}", r.reason, r.pointer, r.detail));
        assert_eq!(format!("{}.json", envelope.message_type), name);
        let original: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&envelope).unwrap(),
            original,
            "{name} round-trips"
        );
    }
}

#[test]
fn an_unknown_field_free_text_a_duplicated_key_and_a_cpr_number_each_fail_with_their_reason() {
    // An unknown field in the body.
    let mut doc = golden("activity-summary.json");
    doc["body"]["notes"] = json!("continue");
    assert_eq!(
        check(&doc),
        Err(("schema-invalid", Some("/body/notes".into())))
    );
    // An unknown field in the envelope.
    let mut doc = golden("activity-summary.json");
    doc["priority"] = json!("high");
    assert_eq!(
        check(&doc),
        Err(("schema-invalid", Some("/priority".into())))
    );
    // Free text where an enumeration belongs.
    let mut doc = golden("activity-summary.json");
    doc["body"]["programme"] = json!("Hjemmebesøg hos familien");
    assert_eq!(
        check(&doc),
        Err(("schema-invalid", Some("/body/programme".into())))
    );
    // A duplicated key: the validator and the parser could otherwise see different documents.
    let text = String::from_utf8(serde_json::to_vec(&golden("activity-summary.json")).unwrap())
        .unwrap()
        .replace(
            r#""month":"2026-10""#,
            r#""month":"2026-10","month":"2026-09""#,
        );
    let schemas = Schemas::compile().unwrap();
    let refusal = check_document(text.as_bytes(), &schemas).unwrap_err();
    assert_eq!(refusal.reason, "malformed-json");
    assert!(
        refusal.detail.contains("a key appears twice"),
        "{}",
        refusal.detail
    );
    assert!(
        !refusal.detail.contains("month"),
        "details never repeat content"
    );
    // Free text is refused without being repeated back.
    let mut doc = golden("activity-summary.json");
    doc["body"]["programme"] = json!("Hjemmebesøg hos familien");
    let refusal = check_document(&serde_json::to_vec(&doc).unwrap(), &schemas).unwrap_err();
    assert!(
        !refusal.detail.contains("Hjemmebesøg"),
        "{}",
        refusal.detail
    );
    // A whole number written as a fraction does not slip past as an integer.
    let text = String::from_utf8(serde_json::to_vec(&golden("activity-summary.json")).unwrap())
        .unwrap()
        .replace(r#""sessions_offered":8"#, r#""sessions_offered":8.0"#);
    assert_eq!(
        check_document(text.as_bytes(), &schemas)
            .unwrap_err()
            .reason,
        "malformed-json"
    );
    // An identifier's name deeper in the body is scanned like any other field.
    let mut doc = golden("activity-summary.json");
    doc["body"]["extra"] = json!({"in_reply_to": "010100-0000"});
    assert_eq!(
        check(&doc),
        Err(("cpr-detected", Some("/body/extra/in_reply_to".into())))
    );
    // A CPR-shaped value (an obviously fake one) is refused before the schema looks.
    let mut doc = golden("activity-summary.json");
    doc["body"]["programme"] = json!("barnet 010100-0000");
    assert_eq!(
        check(&doc),
        Err(("cpr-detected", Some("/body/programme".into())))
    );
    let mut doc = golden("referral.json");
    doc["body"]["0101000000"] = json!(1);
    assert_eq!(
        check(&doc),
        Err(("cpr-detected", Some("/body/0101000000".into())))
    );
}

#[test]
fn identifiers_are_not_scanned_so_uuids_and_hex_ids_cause_no_false_positive() {
    // A UUID whose first group ends in six digits that read as a date, followed by four digits:
    // CPR-shaped if scanned, but identifiers are not scanned.
    let mut doc = golden("referral-response.json");
    doc["body"]["in_reply_to"] = json!("ab010190-1234-4abc-8def-0123456789ab");
    doc["message_id"] = json!("cd311299-5678-4abc-8def-0123456789ab");
    doc["subject_ref"] = json!("0101901234abcdef0101901234abcdef");
    assert_eq!(check(&doc), Ok(()));
}

#[test]
fn an_oversize_or_malformed_envelope_is_refused() {
    let mut doc = golden("activity-summary.json");
    doc["padding"] = json!("x".repeat(MAX_ENVELOPE_BYTES));
    assert_eq!(check(&doc), Err(("body-too-large", None)));
    let schemas = Schemas::compile().unwrap();
    assert_eq!(
        check_document(b"{\"v\":1", &schemas).unwrap_err().reason,
        "malformed-json"
    );
    let mut doc = golden("activity-summary.json");
    doc["type"] = json!("referral");
    assert_eq!(check(&doc).unwrap_err().0, "schema-invalid");
}
