//! Types that hold secret bytes. Their `Debug` prints only a size, so a value cannot reach a log
//! line or an error through `{:?}`; they implement no `Display`.

use std::fmt;

/// A secret version's value as Secrets Manager returned it.
pub enum SecretValue {
    /// `SecretString`.
    Text(String),
    /// `SecretBinary`.
    Binary(Vec<u8>),
}

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

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contents(<redacted {} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_value() {
        let canary = "canary-7f3a9c";
        let shown = format!(
            "{:?} {:?} {:?}",
            SecretValue::Text(canary.into()),
            SecretValue::Binary(canary.as_bytes().to_vec()),
            Contents::new(canary.as_bytes().to_vec())
        );
        assert!(!shown.contains(canary), "{shown}");
        assert!(shown.contains("13 bytes"), "{shown}");
    }
}
