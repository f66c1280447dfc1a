//! The seam between deciding a change and applying it. An [`Authority`] decides every
//! [`Proposal`]: [`super::Local`] under the room's lock on this node, or, in cluster mode,
//! the cluster module's implementation, which asks Redis. lib.rs picks one at start-up; the
//! engine never knows which.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::change::{Decision, Proposal};
use super::Engine;
use crate::error::Error;
use crate::protocol::{RoomId, UserId};

/// What a read is about, for [`Authority::caught_up`].
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// One room: its messages, members and markers.
    Room(&'a RoomId),
    /// One user's sessions: disconnects and revocations.
    User(&'a UserId),
    /// Every room (a user's room list).
    Everything,
}

/// How far webhook events were delivered in one event stream: the events of one kind about
/// one room (or one member's read marker in it), which every node writes in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub stream: String,
    /// The last seq of the stream the endpoint acknowledged.
    pub seq: u64,
}

/// Who decides changes, and what comes with that duty.
pub trait Authority: Send + Sync + 'static {
    /// Decides `proposal` and sees that `engine` applies it. Resolves once it is decided,
    /// or queued in order behind what the caller proposed before; the decision's `durable`
    /// resolves once the change is durable and visible here.
    fn decide<'a>(
        &'a self,
        engine: &'a Engine,
        proposal: Proposal,
    ) -> BoxFuture<'a, Result<Decision, Error>>;

    /// Decides a disconnect of `user` (with `revoke`, of their tokens too) and sees that
    /// every node applies it with [`Engine::apply_disconnect`]; resolves once this node has.
    fn disconnect<'a>(
        &'a self,
        engine: &'a Engine,
        user: &'a UserId,
        revoke: bool,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Tells the other members of `room_id` that `user` is typing, best effort.
    fn typing(&self, engine: &Engine, room_id: &RoomId, user: &UserId);

    /// Tells every node that `user`'s app received `room_id` up to `seq` (what spares them
    /// a `notify`, whichever node decides it), best effort.
    fn received(&self, engine: &Engine, room_id: &RoomId, user: &UserId, seq: u64);

    /// Resolves once this node shows every change in `scope` that was acknowledged, on any
    /// node, before the call: what reads wait for, so that a read on any node sees what
    /// another node acknowledged. On one node every acknowledged change is already here.
    fn caught_up<'a>(
        &'a self,
        _engine: &'a Engine,
        _scope: Scope<'a>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether this node sends the webhook events now. Every node writes every event to its
    /// outbox, but one sends at a time (cluster mode: the holder of a lease in Redis), so
    /// the endpoint gets each room's events in commit order even when the room's changes
    /// came through several nodes, and a node that dies loses none. On one node, always.
    fn sends_webhooks(&self) -> bool {
        true
    }

    /// Called by the sending node once the endpoint acknowledged events: how far it got in
    /// each event stream ([`Delivered`]), so that the other nodes drop their copies.
    fn webhooks_delivered<'a>(
        &'a self,
        _delivered: &'a [Delivered],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// For a node that does not send: how far the sending node got in each of `streams`
    /// (`None` for a stream it has sent nothing of).
    fn webhooks_delivered_elsewhere<'a>(
        &'a self,
        streams: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, Error>> {
        Box::pin(std::future::ready(Ok(vec![None; streams.len()])))
    }

    /// Whether it can decide now (`/readyz`).
    fn is_ready(&self) -> bool;

    /// Its background work, run for as long as the server runs; never returns.
    fn duties<'a>(&'a self, engine: &'a Engine) -> BoxFuture<'a, ()>;

    /// The history epoch, when the authority names it (cluster mode: the cluster's data
    /// set, the same on every node); otherwise the data directory's.
    fn epoch(&self) -> Option<Arc<str>> {
        None
    }
}
