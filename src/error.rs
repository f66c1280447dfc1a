//! The one error type of the library, and its mapping to protocol error codes and HTTP statuses.

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

    pub fn room_not_found(room_id: &str) -> Error {
        Error::NotFound(format!("no room {room_id}"))
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
        for (error, code, status) in table {
            assert_eq!((error.code(), error.http_status()), (code, status));
        }
    }
}
