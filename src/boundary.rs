//! Admission of an envelope's bytes: size, strict JSON, the CPR guard, the schema, and the
//! conversion to wire types (the part of DESIGN §5 step 3 that needs no database).
//!
//! The order matters and is fixed: a CPR number is refused as `cpr-detected` before the schema
//! could call it merely invalid, and nothing downstream ever sees a document that a stricter or
//! laxer parser would read differently. Identity, replay and the policy decision wrap around
//! this when envelopes are exchanged.

use crate::cpr;
use crate::schema::Schemas;
use crate::strict_json;
use crate::wire::EnvelopeV1;
use serde_json::Value;

/// The largest envelope a node reads.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Top-level body fields that hold identifiers (UUIDs): they are not scanned for CPR numbers,
/// since an identifier can contain a date-like run of digits; the schema constrains them instead.
const ID_FIELDS: [&str; 2] = ["in_reply_to", "binding_code_hash"];

/// A refusal with its stable reason code and, where one value is at fault, its JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub pointer: Option<String>,
    /// Safe to show to the sender: it repeats nothing of the document's content.
    pub detail: String,
}

impl Refusal {
    fn new(reason: &'static str, pointer: Option<String>, detail: impl Into<String>) -> Self {
        Self {
            reason,
            pointer,
            detail: detail.into(),
        }
    }
}

/// Appends one JSON pointer reference token (RFC 6901), escaped.
fn push_token(pointer: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Whether a string (key or value) in `value` holds a CPR number. `pointer` is the path of
/// `value`; on `true` it is left pointing at the first such string. The path is one buffer,
/// grown and cut back on the way, so a clean document allocates nothing.
fn find_cpr(value: &Value, pointer: &mut String) -> bool {
    use std::fmt::Write as _;
    let at = pointer.len();
    match value {
        Value::String(text) => cpr::contains_cpr(text),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let _ = write!(pointer, "/{i}");
            find_cpr(item, pointer) || {
                pointer.truncate(at);
                false
            }
        }),
        Value::Object(map) => {
            let in_body = pointer == "/body";
            map.iter().any(|(key, item)| {
                pointer.push('/');
                push_token(pointer, key);
                if cpr::contains_cpr(key) {
                    return true;
                }
                let skipped = in_body && ID_FIELDS.contains(&key.as_str());
                !skipped && find_cpr(item, pointer) || {
                    pointer.truncate(at);
                    false
                }
            })
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Checks an envelope's bytes and returns it as wire types, or the first refusal.
pub fn check_document(bytes: &[u8], schemas: &Schemas) -> Result<EnvelopeV1, Refusal> {
    check_parsed(parse_document(bytes)?, schemas)
}

/// Checks an envelope this node built itself, as [`check_document`] checks its bytes: `document`
/// is the value that was serialized into `len` bytes. Parsing those bytes again would give the
/// same value (a map has no duplicate keys to write), so only the size limit and the later
/// steps remain.
pub fn check_serialized(
    document: Value,
    len: usize,
    schemas: &Schemas,
) -> Result<EnvelopeV1, Refusal> {
    if len > MAX_ENVELOPE_BYTES {
        return Err(too_large());
    }
    check_parsed(document, schemas)
}

fn too_large() -> Refusal {
    Refusal::new(
        "body-too-large",
        None,
        format!("an envelope may have at most {MAX_ENVELOPE_BYTES} bytes"),
    )
}

/// The size limit and strict parsing: the document that every later step reads.
pub fn parse_document(bytes: &[u8]) -> Result<Value, Refusal> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(too_large());
    }
    // Details name where, never what: a refused document may hold exactly what must not spread.
    strict_json::parse(bytes).map_err(|e| {
        Refusal::new(
            "malformed-json",
            None,
            format!(
                "not a single strict JSON document (line {}, column {}): {}",
                e.line(),
                e.column(),
                strict_json::describe(&e)
            ),
        )
    })
}

/// The CPR guard, the schema and the conversion to wire types, on a parsed document.
pub fn check_parsed(document: Value, schemas: &Schemas) -> Result<EnvelopeV1, Refusal> {
    let mut pointer = String::from("/body");
    if document
        .get("body")
        .is_some_and(|body| find_cpr(body, &mut pointer))
    {
        return Err(Refusal::new(
            "cpr-detected",
            Some(pointer),
            "a value looks like a CPR number; CPR numbers never cross the boundary",
        ));
    }
    schemas.validate_envelope(&document).map_err(|v| {
        Refusal::new(
            "schema-invalid",
            Some(v.pointer),
            format!(
                "the value does not satisfy the schema's `{}` rule",
                v.keyword
            ),
        )
    })?;
    EnvelopeV1::from_value(document).map_err(|_| {
        Refusal::new(
            "schema-invalid",
            None,
            "the document does not fit the v1 wire types",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::find_cpr;
    use serde_json::json;

    fn pointer_of_cpr(body: serde_json::Value) -> Option<String> {
        let mut pointer = String::from("/body");
        find_cpr(&body, &mut pointer).then_some(pointer)
    }

    /// The pointer names the first CPR-shaped string, through arrays and escaped keys; a clean
    /// sibling before it leaves no trace, and identifiers directly in the body are not scanned.
    #[test]
    fn the_cpr_guard_points_at_the_first_cpr_shaped_string() {
        assert_eq!(
            pointer_of_cpr(json!({"a": ["clean", {"b/c~": "010190-1234"}], "z": "clean"})),
            Some("/body/a/1/b~1c~0".into())
        );
        assert_eq!(
            pointer_of_cpr(json!({"a": {"x": "clean"}, "b": ["0101901234"]})),
            Some("/body/b/0".into())
        );
        assert_eq!(
            pointer_of_cpr(json!({"010190-1234": "clean"})),
            Some("/body/010190-1234".into())
        );
        assert_eq!(pointer_of_cpr(json!({"in_reply_to": "010190-1234"})), None);
        assert_eq!(
            pointer_of_cpr(json!({"k": {"in_reply_to": "010190-1234"}})),
            Some("/body/k/in_reply_to".into())
        );
        assert_eq!(pointer_of_cpr(json!({"a": ["clean", 7, null]})), None);
    }
}
