//! REST for RouteAPI (`/v1/rooms/...`): API-key auth, bounded JSON bodies, and the seven
//! calls of PROTOCOL.md with their exact statuses.

use std::future::Future;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use smol::io::AsyncReadExt;
use tide::{Response, Server, StatusCode};

use super::{bearer, counted, error_response, json, Req};
use crate::engine::membership::Outcome;
use crate::engine::Engine;
use crate::error::Error;
use crate::protocol::{HistoryQuery, Message, NewMessage, RoomId, UserId};

pub fn routes(app: &mut Server<Engine>) {
    const ROOM: &str = "/v1/rooms/:room_id";
    const MEMBER: &str = "/v1/rooms/:room_id/members/:user_id";
    const MESSAGES: &str = "/v1/rooms/:room_id/messages";
    const BACKUP: &str = "/v1/admin/backup";
    app.at(ROOM)
        .put(counted(ROOM, rest(put_room)))
        .get(counted(ROOM, rest(get_room)))
        .delete(counted(ROOM, rest(delete_room)));
    app.at(MEMBER)
        .put(counted(MEMBER, rest(put_member)))
        .delete(counted(MEMBER, rest(delete_member)));
    app.at(MESSAGES)
        .post(counted(MESSAGES, rest(post_message)))
        .get(counted(MESSAGES, rest(get_messages)));
    app.at(BACKUP).post(counted(BACKUP, rest(post_backup)));
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

fn room_param(req: &Req) -> Result<RoomId, Error> {
    RoomId::parse(req.param("room_id").unwrap_or_default())
}

fn user_param(req: &Req) -> Result<UserId, Error> {
    UserId::parse(req.param("user_id").unwrap_or_default())
}

/// Reads a JSON body of at most `limits.max_body_bytes`.
async fn body_json<T: DeserializeOwned>(req: &mut Req) -> Result<T, Error> {
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
    serde_json::from_slice(&bytes).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

fn created_or_ok(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::Created,
        Outcome::Unchanged => StatusCode::Ok,
    }
}

#[derive(Deserialize)]
struct PutRoom {
    owner_id: UserId,
}

async fn put_room(mut req: Req) -> Result<Response, Error> {
    let room_id = room_param(&req)?;
    let body: PutRoom = body_json(&mut req).await?;
    let (outcome, room) = req
        .state()
        .create_route_room(room_id, body.owner_id)
        .await?;
    Ok(json(created_or_ok(outcome), &room))
}

async fn get_room(req: Req) -> Result<Response, Error> {
    let room = req.state().room_view(&room_param(&req)?)?;
    Ok(json(StatusCode::Ok, &room))
}

async fn delete_room(req: Req) -> Result<Response, Error> {
    req.state().close_room(room_param(&req)?).await?;
    Ok(Response::new(StatusCode::NoContent))
}

async fn put_member(req: Req) -> Result<Response, Error> {
    let (room_id, user_id) = (room_param(&req)?, user_param(&req)?);
    let (outcome, room) = req.state().join(&room_id, &user_id).await?;
    Ok(json(created_or_ok(outcome), &room))
}

async fn delete_member(req: Req) -> Result<Response, Error> {
    let (room_id, user_id) = (room_param(&req)?, user_param(&req)?);
    req.state().leave(&room_id, &user_id).await?;
    Ok(Response::new(StatusCode::NoContent))
}

#[derive(Serialize)]
struct MessageBody<'a> {
    message: &'a Message,
}

async fn post_message(mut req: Req) -> Result<Response, Error> {
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
    Ok(json(status, &MessageBody { message: &message }))
}

#[derive(Serialize)]
struct MessagesBody<'a> {
    messages: &'a [std::sync::Arc<Message>],
    has_more: bool,
}

async fn get_messages(req: Req) -> Result<Response, Error> {
    let room_id = room_param(&req)?;
    let query = HistoryQuery::from_query_string(req.url().query().unwrap_or(""))?;
    let page = req.state().history(&room_id, &query, None).await?;
    Ok(json(
        StatusCode::Ok,
        &MessagesBody {
            messages: &page.messages,
            has_more: page.has_more,
        },
    ))
}

/// `POST /v1/admin/backup` body: where the server writes the copy.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// An absolute directory that does not exist yet, writable by the server.
    to: std::path::PathBuf,
}

/// `POST /v1/admin/backup`: an online, consistent copy of the data directory (what
/// `chat-engine backup` asks for). 201 `{"to": ...}`; 409 if the directory exists.
async fn post_backup(mut req: Req) -> Result<Response, Error> {
    let body: BackupRequest = body_json(&mut req).await?;
    req.state().backup(body.to.clone()).await?;
    Ok(json(StatusCode::Created, &body))
}
