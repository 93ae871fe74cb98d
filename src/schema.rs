//! The JSON Schemas of `schemas/v1/`, compiled once, and validation of an envelope and its body.
//!
//! The schemas are embedded in the binary, so what the repository documents is what the node
//! enforces. A failure names the JSON pointer of the offending value.

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;
use std::collections::BTreeMap;

/// The schema files, by message type (the envelope under `envelope`).
const SCHEMAS: [(&str, &str); 7] = [
    (
        "envelope",
        include_str!("../schemas/v1/envelope.schema.json"),
    ),
    (
        "activity-summary",
        include_str!("../schemas/v1/activity-summary.schema.json"),
    ),
    (
        "referral",
        include_str!("../schemas/v1/referral.schema.json"),
    ),
    (
        "referral-response",
        include_str!("../schemas/v1/referral-response.schema.json"),
    ),
    (
        "consent.granted",
        include_str!("../schemas/v1/consent.granted.schema.json"),
    ),
    (
        "consent.withdrawn",
        include_str!("../schemas/v1/consent.withdrawn.schema.json"),
    ),
    ("ack", include_str!("../schemas/v1/ack.schema.json")),
];

/// Why a document does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct SchemaViolation {
    /// JSON pointer into the envelope, e.g. `/body/programme`; for an unknown field, the field.
    pub pointer: String,
    /// The schema keyword that failed, e.g. `enum` or `additionalProperties`.
    pub keyword: String,
    /// The validator's message; it may quote the value, so it is for logs, not for peers.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("schema `{name}` does not compile: {message}")]
pub struct SchemaCompileError {
    pub name: &'static str,
    pub message: String,
}

/// The compiled v1 schemas.
pub struct Schemas {
    envelope: Validator,
    bodies: BTreeMap<&'static str, Validator>,
}

impl Schemas {
    pub fn compile() -> Result<Self, SchemaCompileError> {
        let mut envelope = None;
        let mut bodies = BTreeMap::new();
        for (name, text) in SCHEMAS {
            let fail = |message: String| SchemaCompileError { name, message };
            let value: Value = serde_json::from_str(text).map_err(|e| fail(e.to_string()))?;
            // The `regex` engine (finite automata, linear time) rather than the backtracking
            // default: no v1 pattern needs look-around, and the engine runs for every
            // identifier of every message.
            let validator = jsonschema::draft202012::options()
                .with_pattern_options(jsonschema::PatternOptions::regex())
                .build(&value)
                .map_err(|e| fail(e.to_string()))?;
            if name == "envelope" {
                envelope = Some(validator);
            } else {
                bodies.insert(name, validator);
            }
        }
        let envelope = envelope.ok_or(SchemaCompileError {
            name: "envelope",
            message: "missing".into(),
        })?;
        Ok(Self { envelope, bodies })
    }

    /// Validates an envelope and then its body against the schema of its type.
    pub fn validate_envelope(&self, envelope: &Value) -> Result<(), SchemaViolation> {
        first_violation(&self.envelope, envelope, "")?;
        let message_type = envelope
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let body = envelope.get("body").unwrap_or(&Value::Null);
        match self.bodies.get(message_type) {
            Some(validator) => first_violation(validator, body, "/body"),
            None => Err(SchemaViolation {
                pointer: "/type".into(),
                keyword: "enum".into(),
                message: format!("`{message_type}` is not a v1 message type"),
            }),
        }
    }
}

fn first_violation(
    validator: &Validator,
    instance: &Value,
    prefix: &str,
) -> Result<(), SchemaViolation> {
    // The common case first: checking validity alone is much cheaper than collecting errors.
    if validator.is_valid(instance) {
        return Ok(());
    }
    match validator.iter_errors(instance).next() {
        None => Ok(()),
        Some(error) => {
            let mut pointer = format!("{prefix}{}", error.instance_path());
            // An unknown field is named by its own pointer, not its parent object's.
            if let ValidationErrorKind::AdditionalProperties { unexpected } = error.kind()
                && let Some(field) = unexpected.first()
            {
                pointer = format!("{pointer}/{}", field.replace('~', "~0").replace('/', "~1"));
            }
            Err(SchemaViolation {
                pointer,
                keyword: error.kind().keyword().to_owned(),
                message: error.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{OrgId, PurposeId};

    /// The schema's rule for organisation and purpose ids (written without look-ahead, for the
    /// `regex` engine) accepts exactly what the domain types parse: every string of up to six
    /// characters over letters, a digit, a hyphen and two characters never allowed, and every
    /// length around the limit.
    #[test]
    fn the_schemas_id_rule_is_the_domains_slug_rule() {
        let envelope: serde_json::Value =
            serde_json::from_str(super::SCHEMAS[0].1).expect("the envelope schema is JSON");
        let rule = envelope["$defs"]["org_id"].clone();
        assert_eq!(
            envelope["properties"]["purpose"]["properties"]["id"], rule,
            "purpose ids follow the same rule"
        );
        let validator = jsonschema::draft202012::options()
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(&rule)
            .expect("the rule compiles");
        let mut candidates = vec![String::new()];
        let alphabet = ['a', 'z', '7', '-', 'A', '_'];
        let mut frontier = vec![String::new()];
        for _ in 0..6 {
            frontier = frontier
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |c| format!("{prefix}{c}")))
                .collect();
            candidates.extend(frontier.iter().cloned());
        }
        for length in 60..=66 {
            candidates.push("a".repeat(length));
            candidates.push(format!("a{}", "-b".repeat(length / 2)));
            candidates.push(format!("{}-", "a".repeat(length)));
        }
        for candidate in candidates {
            let schema_says = validator.is_valid(&serde_json::Value::String(candidate.clone()));
            assert_eq!(
                schema_says,
                candidate.parse::<OrgId>().is_ok(),
                "organisation id `{candidate}`"
            );
            assert_eq!(
                schema_says,
                candidate.parse::<PurposeId>().is_ok(),
                "purpose id `{candidate}`"
            );
        }
    }
}
