//! Strict JSON parsing: a document with a duplicated key in any object is refused.
//!
//! serde_json keeps the last of two equal keys, while other parsers keep the first; refusing
//! duplicates means the schema validator, the wire types and a peer's parser can never see
//! different documents. Pure: no I/O.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

const DUPLICATE_KEY: &str = "a key appears twice in one object";
const FRACTIONAL: &str = "a number with a fraction or exponent";

/// What is wrong with a refused document, without repeating any of its content (a key or value
/// could be exactly what must not spread).
pub fn describe(error: &serde_json::Error) -> &'static str {
    let text = error.to_string();
    if text.starts_with(DUPLICATE_KEY) {
        DUPLICATE_KEY
    } else if text.starts_with(FRACTIONAL) {
        FRACTIONAL
    } else {
        match error.classify() {
            serde_json::error::Category::Eof => "the document ends too early",
            serde_json::error::Category::Syntax => "not valid JSON syntax",
            serde_json::error::Category::Io => "the document could not be read",
            serde_json::error::Category::Data => "a value of the wrong shape",
        }
    }
}

/// Parses `bytes` as JSON, refusing duplicate keys, fractional numbers, trailing data and
/// invalid UTF-8.
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = deserializer.deserialize_any(StrictVisitor)?;
    deserializer.end()?;
    Ok(value)
}

struct StrictVisitor;

/// One value, parsed strictly (used for nested values).
struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Value, E> {
        // No v1 field is fractional; `8.0` would pass a schema's `integer` but not the wire
        // types, so it is refused here with the other shape errors.
        Err(E::custom(FRACTIONAL))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert!(parse(br#"{"a":1,"b":{"c":[1,{"d":true}]}}"#).is_ok());
        assert!(parse(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse(br#"{"x":{"a":1,"a":1}}"#).is_err());
        assert!(parse(br#"[{"a":1,"a":2}]"#).is_err());
        assert!(parse(br#"{"a":1} trailing"#).is_err());
        let error = parse(br#"{"month":"2026-10","month":"2026-11"}"#).unwrap_err();
        assert_eq!(describe(&error), "a key appears twice in one object");
        let error = parse(br#"{"sessions_offered":8.0}"#).unwrap_err();
        assert_eq!(describe(&error), "a number with a fraction or exponent");
        assert_eq!(
            describe(&parse(b"{").unwrap_err()),
            "the document ends too early"
        );
    }
}
