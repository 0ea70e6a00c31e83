//! Types that hold secret bytes. Their `Debug` prints only a size, so a value cannot reach a log
//! line or an error through `{:?}`; they implement no `Display`.
//!
//! They also wipe their bytes (the `zeroize` crate: volatile writes over the whole buffer, not
//! optimised away) when dropped, and `dso-init` drops them as soon as the files are written, so
//! a value does not linger in freed memory for the rest of the process — nor in a core dump.
//! [`WipedObject`] does the same for the JSON a value is parsed into (`jsonKey`, `expand`).
//! Copies this crate does not own are out of reach: the HTTP response buffer inside the AWS SDK,
//! and serde_json's scratch buffer for strings with escapes.

use serde_json::{Map, Value};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret version's value as Secrets Manager returned it.
pub enum SecretValue {
    /// `SecretString`.
    Text(String),
    /// `SecretBinary`.
    Binary(Vec<u8>),
}

impl Zeroize for SecretValue {
    fn zeroize(&mut self) {
        match self {
            SecretValue::Text(s) => s.zeroize(),
            SecretValue::Binary(b) => b.zeroize(),
        }
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for SecretValue {}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Text(s) => write!(f, "SecretValue::Text(<redacted {} bytes>)", s.len()),
            SecretValue::Binary(b) => {
                write!(f, "SecretValue::Binary(<redacted {} bytes>)", b.len())
            }
        }
    }
}

/// The bytes of one file to write.
#[derive(Clone, PartialEq, Eq)]
pub struct Contents(Vec<u8>);

impl Contents {
    pub fn new(bytes: Vec<u8>) -> Self {
        Contents(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Zeroize for Contents {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Contents {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Contents {}

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contents(<redacted {} bytes>)", self.0.len())
    }
}

/// A JSON object parsed from a secret value (for `jsonKey`, `expand`), wiped when dropped:
/// every string (keys included) is zeroized, every number overwritten with 0.
pub struct WipedObject(pub Map<String, Value>);

impl Zeroize for WipedObject {
    fn zeroize(&mut self) {
        wipe_map(&mut self.0);
    }
}

impl Drop for WipedObject {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for WipedObject {}

impl fmt::Debug for WipedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WipedObject(<redacted {} keys>)", self.0.len())
    }
}

/// Wipes a parsed JSON value in place (what [`WipedObject`] does on drop).
pub fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Number(_) => *v = Value::from(0u64),
        Value::Bool(b) => b.zeroize(),
        Value::Null => {}
        Value::Array(items) => {
            items.iter_mut().for_each(wipe);
            items.clear();
        }
        Value::Object(map) => wipe_map(map),
    }
}

fn wipe_map(map: &mut Map<String, Value>) {
    for (mut key, mut value) in std::mem::take(map) {
        key.zeroize();
        wipe(&mut value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-7f3a9c";

    #[test]
    fn debug_output_never_shows_the_value() {
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            SecretValue::Text(CANARY.into()),
            SecretValue::Binary(CANARY.as_bytes().to_vec()),
            Contents::new(CANARY.as_bytes().to_vec()),
            WipedObject(Map::from_iter([("k".to_string(), Value::from(CANARY))])),
        );
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(shown.contains("13 bytes"), "{shown}");
        assert!(shown.contains("1 keys"), "{shown}");
    }

    /// Dropping is wiping: every type that holds a value says so to the compiler, so removing
    /// the wipe from one of them breaks this test.
    #[test]
    fn every_value_holder_wipes_itself_when_dropped() {
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<SecretValue>();
        wipes_on_drop::<Contents>();
        wipes_on_drop::<WipedObject>();
    }

    #[test]
    fn zeroizing_empties_every_holder() {
        let mut text = SecretValue::Text(CANARY.into());
        let mut binary = SecretValue::Binary(CANARY.as_bytes().to_vec());
        let mut contents = Contents::new(CANARY.as_bytes().to_vec());
        text.zeroize();
        binary.zeroize();
        contents.zeroize();
        assert!(matches!(&text, SecretValue::Text(s) if s.is_empty()));
        assert!(matches!(&binary, SecretValue::Binary(b) if b.is_empty()));
        assert!(contents.is_empty());
    }

    #[test]
    fn wiping_json_reaches_nested_strings_numbers_and_keys() {
        let json = serde_json::json!({
            "password": CANARY,
            "nested": {"list": [CANARY, 4242, {CANARY: true}]},
            "port": 5432,
        });
        let mut object = WipedObject(json.as_object().cloned().unwrap_or_default());
        let mut nested = json["nested"].clone();
        wipe(&mut nested);
        assert_eq!(nested, serde_json::json!({}));
        object.zeroize();
        assert!(object.0.is_empty());
        let mut list = json["nested"]["list"].clone();
        if let Value::Array(items) = &mut list {
            items.iter_mut().for_each(wipe);
        }
        assert_eq!(list, serde_json::json!(["", 0, {}]));
        let mut number = serde_json::json!(5432);
        wipe(&mut number);
        assert_eq!(number, serde_json::json!(0));
    }
}
