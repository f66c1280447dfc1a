//! REST for RouteAPI (`/v1/rooms/...`): API-key auth, bounded JSON bodies, and the calls of
//! docs/protocol.md with their exact statuses.

use std::future::Future;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use smol::io::AsyncReadExt;
use tide::{Response, Server, StatusCode};

use super::schemas::{BackupDir, HistoryCursor, PathId, RouteRoomId, Seq};
use super::{bearer, error_response, json, ErrorBody, Req, Resource};
use crate::engine::membership::Outcome;
use crate::engine::Engine;
use crate::error::Error;
use crate::protocol::{HistoryQuery, Message, NewChange, NewMessage, RoomId, RoomView, UserId};

pub fn routes(app: &mut Server<Engine>) {
    Resource::new("/v1/rooms/:room_id")
        .put(rest(put_room))
        .get(rest(get_room))
        .delete(rest(delete_room))
        .serve(app);
    Resource::new("/v1/rooms/:room_id/members/:user_id")
        .put(rest(put_member))
        .delete(rest(delete_member))
        .serve(app);
    Resource::new("/v1/rooms/:room_id/messages")
        .post(rest(post_message))
        .get(rest(get_messages))
        .serve(app);
    Resource::new("/v1/rooms/:room_id/messages/:seq")
        .get(rest(get_message))
        .patch(rest(patch_message))
        .delete(rest(delete_message))
        .serve(app);
    Resource::new("/v1/admin/backup")
        .post(rest(post_backup))
        .serve(app);
    Resource::new("/v1/users/:user_id/disconnect")
        .post(rest(post_disconnect))
        .serve(app);
}

/// Wraps a handler with API-key auth and the protocol's error bodies.
fn rest<F, Fut>(handler: F) -> impl tide::Endpoint<Engine>
where
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, Error>> + Send + 'static,
{
    move |req: Req| {
        let handler = handler.clone();
        async move {
            let authorized = bearer(&req).is_some_and(|key| req.state().auth().is_api_key(&key));
            if !authorized {
                log::warn!(
                    "REST {} {} refused: missing or wrong API key (from {})",
                    req.method(),
                    req.url().path(),
                    req.peer_addr().unwrap_or("unknown peer")
                );
                return Ok(error_response(&Error::Unauthorized(
                    "missing or wrong API key".into(),
                )));
            }
            Ok(handler(req)
                .await
                .unwrap_or_else(|error| error_response(&error)))
        }
    }
}

/// A path parameter as the client meant it: tide hands it over percent-encoded, and a
/// client may encode characters ids allow (`:` as `%3A`, `@` as `%40`).
fn path_param(req: &Req, name: &str) -> Result<String, Error> {
    let raw = req.param(name).unwrap_or_default();
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| Error::BadRequest(format!("{name} is not UTF-8 once percent-decoded")))
}

fn room_param(req: &Req) -> Result<RoomId, Error> {
    RoomId::parse(&path_param(req, "room_id")?)
}

fn user_param(req: &Req) -> Result<UserId, Error> {
    UserId::parse(&path_param(req, "user_id")?)
}

fn seq_param(req: &Req) -> Result<u64, Error> {
    let seq = req.param("seq").unwrap_or_default();
    seq.parse()
        .map_err(|_| Error::BadRequest(format!("seq {seq:?} is not a whole number")))
}

/// Reads a JSON body of at most `limits.max_body_bytes`.
pub(super) async fn body_json<T: DeserializeOwned>(req: &mut Req) -> Result<T, Error> {
    parse_body(&body_bytes(req).await?)
}

/// [`body_json`] for a body that may be left out: none is `T::default()`.
/// A body that may be left out: no body, or JSON `null` (as the document's optional body
/// allows), is `T::default()`.
async fn optional_body_json<T: DeserializeOwned + Default>(req: &mut Req) -> Result<T, Error> {
    let bytes = body_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(parse_body::<Option<T>>(&bytes)?.unwrap_or_default())
}

async fn body_bytes(req: &mut Req) -> Result<Vec<u8>, Error> {
    let limit = req.state().config().limits.max_body_bytes;
    let too_large = || Error::TooLarge(format!("request body over {limit} bytes"));
    if req.len().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    req.take_body()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Error::BadRequest(format!("cannot read body: {e}")))?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

fn created_or_ok(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::Created,
        Outcome::Unchanged => StatusCode::Ok,
    }
}

/// `PUT /v1/rooms/{room_id}` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct PutRoom {
    /// The driver: the room's owner and first member.
    owner_id: UserId,
}

/// Creates the route's room with its driver, who joins it and gets `joined`; a repeat
/// with the same owner confirms it.
#[utoipa::path(
    put,
    path = "/v1/rooms/{room_id}",
    tag = "rooms",
    params(("room_id" = inline(RouteRoomId), Path, description = "The room to create")),
    request_body = PutRoom,
    responses(
        (status = 201, description = "Created", body = RoomView),
        (status = 200, description = "It exists with this owner already", body = RoomView),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 409, description = "Conflict (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over `limits.max_body_bytes` (`too_large`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn put_room(mut req: Req) -> Result<Response, Error> {
    let room_id = room_param(&req)?;
    let body: PutRoom = body_json(&mut req).await?;
    let (outcome, room) = req
        .state()
        .create_route_room(room_id, body.owner_id)
        .await?;
    Ok(json(created_or_ok(outcome), &room))
}

/// The room and its members.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}",
    tag = "rooms",
    params(("room_id" = inline(PathId), Path, description = "The room")),
    responses(
        (status = 200, description = "The room", body = RoomView),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such open room (`not_found`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage cannot be read now (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn get_room(req: Req) -> Result<Response, Error> {
    let room = req.state().room_view(&room_param(&req)?).await?;
    Ok(json(StatusCode::Ok, &room))
}

/// Closes the room: every member gets `left`. Its history stays readable here.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room_id}",
    tag = "rooms",
    params(("room_id" = inline(PathId), Path, description = "The room")),
    responses(
        (status = 204, description = "Closed, also when it was closed or never existed"),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not allowed on a direct room (`forbidden`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn delete_room(req: Req) -> Result<Response, Error> {
    req.state().close_room(room_param(&req)?).await?;
    Ok(Response::new(StatusCode::NoContent))
}

/// Joins the user (who gets `joined`; the others get `member_joined`).
#[utoipa::path(
    put,
    path = "/v1/rooms/{room_id}/members/{user_id}",
    tag = "rooms",
    params(("room_id" = inline(PathId), Path, description = "The room"), ("user_id" = inline(PathId), Path, description = "The user")),
    responses(
        (status = 201, description = "Joined (also a re-join after leaving)", body = RoomView),
        (status = 200, description = "Already a member", body = RoomView),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not allowed on a direct room (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such open room (`not_found`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn put_member(req: Req) -> Result<Response, Error> {
    let (room_id, user_id) = (room_param(&req)?, user_param(&req)?);
    let (outcome, room) = req.state().join(&room_id, &user_id).await?;
    Ok(json(created_or_ok(outcome), &room))
}

/// Removes the user (who gets `left`; the others get `member_left`).
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room_id}/members/{user_id}",
    tag = "rooms",
    params(("room_id" = inline(PathId), Path, description = "The room"), ("user_id" = inline(PathId), Path, description = "The user")),
    responses(
        (status = 204, description = "Removed, also when not a member"),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not allowed on a direct room (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such open room (`not_found`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn delete_member(req: Req) -> Result<Response, Error> {
    let (room_id, user_id) = (room_param(&req)?, user_param(&req)?);
    req.state().leave(&room_id, &user_id).await?;
    Ok(Response::new(StatusCode::NoContent))
}

/// The message a `POST .../messages` stored (or found, on a repeat).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct MessageReply<'a> {
    #[schema(value_type = Message)]
    message: &'a Message,
}

/// Posts a `system` message from RouteAPI.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/messages",
    tag = "rooms",
    params(("room_id" = inline(PathId), Path, description = "The room")),
    request_body = NewMessage,
    responses(
        (status = 201, description = "Stored and pushed", body = MessageReply),
        (status = 200, description = "A repeated `client_msg_id`: the first message", body = MessageReply),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such open room (`not_found`)", body = ErrorBody),
        (status = 413, description = "Body over `limits.max_body_bytes` (65536), or text and data over `limits.max_message_bytes` (16384) (`too_large`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn post_message(mut req: Req) -> Result<Response, Error> {
    let room_id = room_param(&req)?;
    let message: NewMessage = body_json(&mut req).await?;
    let engine = req.state();
    let sent = engine.send(&room_id, None, message).await?;
    let status = if sent.created {
        StatusCode::Created
    } else {
        StatusCode::Ok
    };
    let message = engine.message_at(&room_id, sent.stamp.seq).await?;
    Ok(json(status, &MessageReply { message: &message }))
}

/// One message in its current state: `edited_ts`, `deleted` and `reactions` as changes left
/// it.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}/messages/{seq}",
    tag = "rooms",
    params(
        ("room_id" = inline(PathId), Path, description = "The room"),
        ("seq" = inline(Seq), Path, description = "The message's seq")
    ),
    responses(
        (status = 200, description = "The message", body = MessageReply),
        (status = 400, description = "Bad id or seq (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such room or message (`not_found`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage cannot be read now (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn get_message(req: Req) -> Result<Response, Error> {
    let (room_id, seq) = (room_param(&req)?, seq_param(&req)?);
    let message = req.state().message_at(&room_id, seq).await?;
    Ok(json(StatusCode::Ok, &MessageReply { message: &message }))
}

/// `PATCH /v1/rooms/{room_id}/messages/{seq}` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct EditBody {
    /// The new text.
    text: String,
    /// The new data; an edit without it removes the message's data.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    data: Option<Box<serde_json::value::RawValue>>,
}

/// Edits a `system` message; the edit is a message of its own (`kind: "edit"`), pushed to
/// the members.
#[utoipa::path(
    patch,
    path = "/v1/rooms/{room_id}/messages/{seq}",
    tag = "rooms",
    params(
        ("room_id" = inline(PathId), Path, description = "The room"),
        ("seq" = inline(Seq), Path, description = "The seq of the system message to edit")
    ),
    request_body = EditBody,
    responses(
        (status = 200, description = "The edit; on a repeat that changes nothing, the latest edit (or the message itself if never edited)", body = MessageReply),
        (status = 400, description = "Bad id or body, or the message is itself a change (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "A user's message (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such open room or message (`not_found`)", body = ErrorBody),
        (status = 409, description = "The message was deleted (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over `limits.max_body_bytes`, or text and data over `limits.max_message_bytes` (`too_large`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn patch_message(mut req: Req) -> Result<Response, Error> {
    let (room_id, seq) = (room_param(&req)?, seq_param(&req)?);
    let body: EditBody = body_json(&mut req).await?;
    let engine = req.state();
    let change = NewChange::Edit {
        seq,
        message: NewMessage {
            text: body.text,
            data: body.data,
            client_msg_id: None,
        },
    };
    let sent = engine
        .accept_change(&room_id, None, change)
        .await?
        .durable()
        .await?;
    let message = match sent {
        Some(sent) => engine.message_at(&room_id, sent.stamp.seq).await?,
        None => {
            let target = engine.message_at(&room_id, seq).await?;
            match target.edit_seq {
                Some(edit) => engine.message_at(&room_id, edit).await?,
                None => target,
            }
        }
    };
    Ok(json(StatusCode::Ok, &MessageReply { message: &message }))
}

/// Deletes any message (moderation): its text and data are removed and it shows as deleted;
/// the deletion is a message of its own (`kind: "delete"`), pushed to the members.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room_id}/messages/{seq}",
    tag = "rooms",
    params(
        ("room_id" = inline(PathId), Path, description = "The room"),
        ("seq" = inline(Seq), Path, description = "The seq of the message to delete")
    ),
    responses(
        (status = 204, description = "Deleted, also when it was deleted already"),
        (status = 400, description = "Bad id, or the message is itself a change (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such open room or message (`not_found`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn delete_message(req: Req) -> Result<Response, Error> {
    let (room_id, seq) = (room_param(&req)?, seq_param(&req)?);
    let change = NewChange::Delete {
        seq,
        client_msg_id: None,
    };
    req.state()
        .accept_change(&room_id, None, change)
        .await?
        .durable()
        .await?;
    Ok(Response::new(StatusCode::NoContent))
}

/// A page of history, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct MessagesReply<'a> {
    #[schema(value_type = Vec<Message>)]
    messages: &'a [std::sync::Arc<Message>],
    /// Whether more messages lie beyond this page in the direction asked.
    has_more: bool,
    /// The history epoch, as in `sync` replies.
    #[schema(value_type = String)]
    epoch: &'a str,
}

/// History, as the WebSocket `sync`: at most one of `since_ts`, `since_seq` and
/// `before_seq`; none gives the last `history.default_last` messages.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}/messages",
    tag = "rooms",
    params(
        ("room_id" = inline(PathId), Path, description = "The room"),
        ("history" = Option<HistoryCursor>, Query, style = Form, explode,
            description = "At most one cursor (`since_ts`, `since_seq` or `before_seq`) and a `limit`, each a query parameter of its own")
    ),
    responses(
        (status = 200, description = "A page of history", body = MessagesReply),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such open room (`not_found`)", body = ErrorBody),
        (status = 500, description = "A bug, logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage cannot be read now (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn get_messages(req: Req) -> Result<Response, Error> {
    let room_id = room_param(&req)?;
    let query = HistoryQuery::from_query_string(req.url().query().unwrap_or(""))?;
    let engine = req.state();
    let page = engine.history(&room_id, &query, None).await?;
    Ok(json(
        StatusCode::Ok,
        &MessagesReply {
            messages: &page.messages,
            has_more: page.has_more,
            epoch: &engine.epoch(),
        },
    ))
}

/// `POST /v1/admin/backup` body: where the server writes the copy.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupRequest {
    /// An absolute directory that does not exist yet, writable by the server.
    #[schema(value_type = BackupDir)]
    to: std::path::PathBuf,
}

/// Writes a consistent copy of the data directory while serving.
#[utoipa::path(
    post,
    path = "/v1/admin/backup",
    tag = "operations",
    request_body = BackupRequest,
    responses(
        (status = 201, description = "Written", body = BackupRequest),
        (status = 400, description = "Bad body: `to` is not an absolute path (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 409, description = "The directory exists (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over `limits.max_body_bytes` (`too_large`)", body = ErrorBody),
        (status = 500, description = "The directory could not be written, or a bug; logged by the server (`internal`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn post_backup(mut req: Req) -> Result<Response, Error> {
    let body: BackupRequest = body_json(&mut req).await?;
    req.state().backup(body.to.clone()).await?;
    Ok(json(StatusCode::Created, &body))
}

/// `POST /v1/users/{user_id}/disconnect` body, which may be left out.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectRequest {
    /// Also refuse, from now on, every token of the user issued (`iat`) at or before now,
    /// and every token of the user without `iat`. Durable.
    #[serde(default)]
    revoke: bool,
}

/// Closes every connection of the user, on every node, with 4003 (a logout, a ban, a lost
/// phone); with `revoke`, the user's tokens issued until now are refused from now on.
#[utoipa::path(
    post,
    path = "/v1/users/{user_id}/disconnect",
    tag = "users",
    params(("user_id" = inline(PathId), Path, description = "The user")),
    request_body(content = Option<DisconnectRequest>, description = "Optional; without it, no revocation"),
    responses(
        (status = 204, description = "Disconnected everywhere (also when the user had no connection)"),
        (status = 400, description = "Bad id or body (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (`unauthorized`)", body = ErrorBody),
        (status = 413, description = "Body over `limits.max_body_bytes` (`too_large`)", body = ErrorBody),
        (status = 503, description = "Storage or Redis cannot take writes; nothing was changed (`unavailable`)", body = ErrorBody)
    ),
    security(("api_key" = []))
)]
pub(super) async fn post_disconnect(mut req: Req) -> Result<Response, Error> {
    let user = user_param(&req)?;
    let body: DisconnectRequest = optional_body_json(&mut req).await?;
    req.state().disconnect_user(&user, body.revoke).await?;
    Ok(Response::new(StatusCode::NoContent))
}
