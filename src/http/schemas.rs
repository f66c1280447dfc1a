//! Schemas in the OpenAPI document for rules the REST edge enforces beyond the protocol's
//! types: ids as a URL path can carry them, whole numbers up to `u64::MAX`, history cursors
//! (at most one), and the backup target. Each pattern is tested here against the code that
//! enforces the rule, so a request valid by the document is never refused as malformed.

use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::protocol::{HistoryQuery, MAX_ID_BYTES};

/// A room or user id in a path: the id rules, except `.` and `..`, which a URL cannot carry
/// as a segment (clients and servers resolve them as "this" and "parent" directory).
pub const PATH_ID_PATTERN: &str =
    r"^(?:[A-Za-z0-9_:@-]|\.[A-Za-z0-9_:@-]|\.\.[A-Za-z0-9._:@-])[A-Za-z0-9._:@-]*$";

/// The id of a route room to create: a path id that does not start with `dm:` (the prefix
/// of direct rooms).
pub const ROUTE_ROOM_PATTERN: &str = concat!(
    r"^(?:[A-Za-ce-z0-9_:@-][A-Za-z0-9._:@-]*",
    r"|d(?:[A-Za-ln-z0-9._:@-][A-Za-z0-9._:@-]*|m(?:[A-Za-z0-9._@-][A-Za-z0-9._:@-]*)?)?",
    r"|\.[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*|\.\.[A-Za-z0-9._:@-]+)$"
);

/// An absolute path with no NUL byte (which no file name can hold).
pub const BACKUP_DIR_PATTERN: &str = r"^/[^\x00]*$";

fn id_in_path(pattern: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_BYTES))
        .pattern(Some(pattern))
        .description(Some(description))
        .examples(["route-42"])
        .into()
}

/// A room or user id as a path parameter.
pub struct PathId;

impl PartialSchema for PathId {
    fn schema() -> RefOr<Schema> {
        id_in_path(
            PATH_ID_PATTERN,
            "1..=128 bytes of [A-Za-z0-9._:@-]; `.` and `..` cannot be a path segment",
        )
    }
}

impl ToSchema for PathId {}

/// The id of the route room `PUT /v1/rooms/{room_id}` creates.
pub struct RouteRoomId;

impl PartialSchema for RouteRoomId {
    fn schema() -> RefOr<Schema> {
        id_in_path(
            ROUTE_ROOM_PATTERN,
            "1..=128 bytes of [A-Za-z0-9._:@-], not starting with `dm:` (direct rooms' \
             prefix); `.` and `..` cannot be a path segment",
        )
    }
}

impl ToSchema for RouteRoomId {}

/// A whole number from `min` to `u64::MAX`, as the server parses it.
fn whole_number(min: u64, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(u64::MAX))
        .description(Some(description))
}

/// A message's seq as a path parameter.
pub struct Seq;

impl PartialSchema for Seq {
    fn schema() -> RefOr<Schema> {
        whole_number(0, "A message's seq").into()
    }
}

impl ToSchema for Seq {}

/// The query of `GET /v1/rooms/{room_id}/messages`: at most one cursor, and a limit.
pub struct HistoryCursor;

impl PartialSchema for HistoryCursor {
    fn schema() -> RefOr<Schema> {
        // utoipa has no `not` keyword; JSON Schema's goes in through the map of extra keys,
        // which is written into the object as it is.
        let two_cursors = Extensions::from_iter([("not", HistoryQuery::two_cursors())]);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "since_ts",
                whole_number(0, "Messages with a later ts, oldest first"),
            )
            .property(
                "since_seq",
                whole_number(0, "Messages after this seq, oldest first"),
            )
            .property(
                "before_seq",
                whole_number(0, "The messages just before this seq"),
            )
            .property(
                "limit",
                whole_number(1, "At most this many messages; above 500 is taken as 500"),
            )
            .description(Some(
                "At most one of `since_ts`, `since_seq` and `before_seq`; none: the last \
                 `history.default_last` messages",
            ))
            .extensions(Some(two_cursors))
            .into()
    }
}

impl ToSchema for HistoryCursor {}

/// The `to` of `POST /v1/admin/backup`.
pub struct BackupDir;

impl PartialSchema for BackupDir {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(BACKUP_DIR_PATTERN))
            .description(Some(
                "An absolute directory that does not exist yet (409 if it does), writable by the server",
            ))
            .examples(["/var/lib/chat-engine/backups/2026-11-24"])
            .into()
    }
}

impl ToSchema for BackupDir {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomId;

    /// Every string over `alphabet` of up to `max` characters.
    fn strings(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    fn matches(pattern: &str, text: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(text)
    }

    /// The characters that decide the patterns: dots, the `dm:` prefix, one of the other
    /// allowed characters, and two that are not allowed.
    const ALPHABET: [char; 7] = ['.', 'd', 'm', ':', 'x', ' ', '/'];

    #[test]
    fn path_ids_are_the_ids_a_path_can_carry() {
        for text in strings(&ALPHABET, 4) {
            let addressable = RoomId::parse(&text).is_ok() && text != "." && text != "..";
            assert_eq!(matches(PATH_ID_PATTERN, &text), addressable, "{text:?}");
        }
    }

    #[test]
    fn route_room_ids_are_path_ids_not_starting_with_dm() {
        for text in strings(&ALPHABET, 5) {
            let creatable = matches(PATH_ID_PATTERN, &text) && !text.starts_with("dm:");
            assert_eq!(matches(ROUTE_ROOM_PATTERN, &text), creatable, "{text:?}");
        }
        assert!(
            matches(ROUTE_ROOM_PATTERN, "DM:x"),
            "the prefix is lower case"
        );
    }

    #[test]
    fn backup_dirs_are_absolute_without_nul() {
        for (text, ok) in [
            ("/var/b", true),
            ("/", true),
            ("rel/b", false),
            ("", false),
            ("/a\0b", false),
        ] {
            assert_eq!(matches(BACKUP_DIR_PATTERN, text), ok, "{text:?}");
        }
    }
}
