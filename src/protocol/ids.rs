//! Room and user ids: validated once at the edge, then cheap to clone everywhere.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Longest id in bytes (PROTOCOL.md).
pub const MAX_ID_BYTES: usize = 128;

/// A validated id: 1..=128 bytes of `[A-Za-z0-9._:@-]`. `K` says what it names, so a user id
/// cannot be passed where a room id is expected.
pub struct Id<K> {
    text: Arc<str>,
    kind: PhantomData<fn() -> K>,
}

#[derive(Debug)]
pub enum RoomKindTag {}
#[derive(Debug)]
pub enum UserKindTag {}

pub type RoomId = Id<RoomKindTag>;
pub type UserId = Id<UserKindTag>;

fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'@' | b'-')
}

impl<K> Id<K> {
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() || text.len() > MAX_ID_BYTES || !text.bytes().all(allowed) {
            return Err(Error::BadRequest(format!(
                "invalid id {:?}: 1..={MAX_ID_BYTES} bytes of [A-Za-z0-9._:@-]",
                truncate(text, 40)
            )));
        }
        Ok(Self {
            text: text.into(),
            kind: PhantomData,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self {
            text: self.text.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl<K> Eq for Id<K> {}

impl<K> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<K> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

impl<K> Borrow<str> for Id<K> {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

/// In the OpenAPI document: a string following the id rules.
impl<K> utoipa::PartialSchema for Id<K> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_BYTES))
            .pattern(Some("^[A-Za-z0-9._:@-]+$"))
            .examples(["route-42"])
            .into()
    }
}

impl<K> utoipa::ToSchema for Id<K> {
    fn name() -> std::borrow::Cow<'static, str> {
        "Id".into()
    }
}

impl<K> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, K> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Id::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_id_alphabet() {
        for ok in [
            "route-42",
            "a",
            "user@example.com",
            "x.y_z:1",
            &"a".repeat(128),
        ] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "has space",
            "slash/",
            "é",
            "a\u{0}",
            &"a".repeat(129),
            "quote\"",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<RoomId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"not ok\"").is_err());
        assert!(serde_json::from_str::<RoomId>("7").is_err());
    }
}
