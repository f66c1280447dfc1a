//! Who may be connected: an app token, verified and checked against its user's revocation
//! ([`Engine::authenticate`], at the upgrade and for every `auth` frame), and RouteAPI's
//! `disconnect`, which closes every connection of a user with 4003 on every node and, with
//! `revoke`, refuses from then on every token of the user issued until that moment.
//!
//! A disconnect is decided like any change: the authority names its moment (this node's
//! clock, or Redis's in cluster mode, whose log carries it to every node), and
//! [`Engine::apply_disconnect`] applies it on each node, the asking one included.

use serde::{Deserialize, Serialize};

use super::{Engine, Scope};
use crate::auth::Token;
use crate::error::Error;
use crate::protocol::UserId;
use crate::storage::Batch;

/// A decided disconnect: what every node applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub user_id: UserId,
    /// Its moment (Unix ms).
    pub at_ms: u64,
    /// Whether the user's tokens issued (`iat`) at or before the moment are refused for good.
    pub revoke: bool,
}

impl Engine {
    /// What `token` says, if it verifies and its user's tokens were not revoked since it
    /// was issued (a token without `iat` counts as issued before any revocation).
    pub async fn authenticate(&self, token: &str) -> Result<Token, Error> {
        let token = self.inner.auth.verify(token).await?;
        // A revocation made through another node is applied here first.
        self.caught_up(Scope::User(&token.user)).await?;
        let user = token.user.to_string();
        let revoked = self.read_storage(move |s| s.revoked(&user)).await?;
        match revoked {
            Some(moment) if token.iat.is_none_or(|iat| iat <= moment) => Err(Error::Unauthorized(
                "the user's tokens until this one were revoked".into(),
            )),
            _ => Ok(token),
        }
    }

    /// Disconnects `user` everywhere (and with `revoke`, for good); resolves once this node
    /// applied it.
    pub async fn disconnect_user(&self, user: &UserId, revoke: bool) -> Result<(), Error> {
        self.inner.authority.disconnect(self, user, revoke).await
    }

    /// Applies a decided disconnect on this node. The revocation is durable before any
    /// connection closes, so a client that reconnects at once is refused.
    pub async fn apply_disconnect(&self, disconnect: &Disconnect) -> Result<(), Error> {
        let Disconnect {
            user_id,
            at_ms,
            revoke,
        } = disconnect;
        let moment_s = at_ms / 1000;
        if *revoke {
            let mut batch = Batch::new();
            batch.revoke(user_id.as_str(), moment_s);
            self.persist(batch).await?;
        }
        let closed = self
            .inner
            .connections
            .disconnect(user_id, *at_ms, revoke.then_some(moment_s));
        log::info!(
            "disconnected {user_id}{}: {closed} connections closed here",
            if *revoke {
                " and revoked its tokens"
            } else {
                ""
            }
        );
        Ok(())
    }
}
