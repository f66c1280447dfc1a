//! The library's errors in one place: [`Error`], what a client is told, with its mapping to
//! protocol codes and HTTP statuses; [`StorageError`], what storage reports, and how it maps
//! to [`Error`]; and the constructors of the errors several modules raise.

/// Every failure a client can be told about. The variant decides the protocol `code` and the
/// HTTP status (PROTOCOL.md, "Error codes"); the text is the human-readable `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not a member of room {0}")]
    NotMember(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    /// Storage (or, in cluster mode, Redis) cannot take writes now; nothing was stored.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The protocol's `code` string.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotMember(_) => "not_member",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::TooLarge(_) => "too_large",
            Error::RateLimited(_) => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status REST answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) | Error::NotMember(_) => 403,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::TooLarge(_) => 413,
            Error::RateLimited(_) => 429,
            Error::Unavailable(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// Every `code` there is, for the API documents' schemas.
    pub const CODES: [&'static str; 10] = [
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_member",
        "not_found",
        "conflict",
        "too_large",
        "rate_limited",
        "unavailable",
        "internal",
    ];

    pub fn room_not_found(room_id: &str) -> Error {
        Error::NotFound(format!("no room {room_id}"))
    }

    pub fn message_not_found(room_id: &str, seq: u64) -> Error {
        Error::NotFound(format!("no message {seq} in room {room_id}"))
    }

    pub fn not_member(room_id: &str) -> Error {
        Error::NotMember(room_id.to_owned())
    }

    /// A create of an existing room with another owner (or kind).
    pub fn owner_conflict(room_id: &str) -> Error {
        Error::Conflict(format!("room {room_id} exists with another owner"))
    }

    /// A create of a room that was closed.
    pub fn closed_id_reused(room_id: &str) -> Error {
        Error::Conflict(format!(
            "room {room_id} was closed; closed room ids are not reused"
        ))
    }

    /// A close of, or a membership change in, a direct room.
    pub fn direct_unchangeable() -> Error {
        Error::Forbidden("direct rooms cannot be closed, and their members cannot change".into())
    }

    /// A direct room refused by `direct.policy = "shared_room"`.
    pub fn no_shared_room(user: &str, other: &str) -> Error {
        Error::Forbidden(format!("{user} and {other} share no route room"))
    }
}

/// An error's `code` in the OpenAPI and AsyncAPI documents: one of [`Error::CODES`].
pub struct ErrorCode;

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Error::CODES))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Redis(String),
}

/// What storage reports. Everything but a full or failing disk means the data directory is
/// not one this build can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Db(String),
    #[error("corrupt record in column family {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("record in column family {cf} has format version {version}, which this build does not know (written by a newer chat-engine?)")]
    UnknownFormat { cf: &'static str, version: u8 },
    #[error("data directory has schema version {found}; this build knows up to {known} (written by a newer chat-engine?)")]
    NewerSchema { found: u32, known: u32 },
    /// The write was built on in-memory state that an earlier failed write rolled back.
    #[error("an earlier write failed; retry")]
    Superseded,
    #[error("storage is shutting down")]
    Closed,
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Db(_) | StorageError::Superseded | StorageError::Closed => {
                Error::Unavailable(format!("storage unavailable: {e}"))
            }
            _ => Error::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_match_the_protocol_table() {
        let s = String::new;
        let table = [
            (Error::BadRequest(s()), "bad_request", 400),
            (Error::Unauthorized(s()), "unauthorized", 401),
            (Error::Forbidden(s()), "forbidden", 403),
            (Error::NotMember(s()), "not_member", 403),
            (Error::NotFound(s()), "not_found", 404),
            (Error::Conflict(s()), "conflict", 409),
            (Error::TooLarge(s()), "too_large", 413),
            (Error::RateLimited(s()), "rate_limited", 429),
            (Error::Unavailable(s()), "unavailable", 503),
            (Error::Internal(s()), "internal", 500),
        ];
        for (error, code, status) in &table {
            assert_eq!((error.code(), error.http_status()), (*code, *status));
        }
        let codes: Vec<&str> = table.iter().map(|(_, code, _)| *code).collect();
        assert_eq!(codes, Error::CODES, "CODES lists every code once");
    }
}
