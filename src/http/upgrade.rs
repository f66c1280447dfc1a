//! `GET /v1/ws`: authenticates, registers the connection (so pushes start at once), and
//! upgrades to WebSocket.

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use tide::{Response, StatusCode};

use super::{bearer, error_response, Req};
use crate::error::Error;

/// Opens the app's WebSocket; its frames are in the AsyncAPI document `/asyncapi.json`. The
/// token is a JWT (`sub` = user id; HS256, RS256, ES256 or EdDSA) in `Authorization: Bearer`
/// or in `?token=`; a revoked one is refused.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching to WebSocket"),
        (status = 401, description = "Missing, bad, expired or revoked token (`unauthorized`)", body = super::ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request (`bad_request`)", body = super::ErrorBody),
        (status = 429, description = "Over `limits.max_connections_per_user` (`rate_limited`)", body = super::ErrorBody)
    ),
    security(("app_token" = []), ("app_token_query" = []))
)]
pub async fn websocket(req: Req) -> tide::Result {
    let engine = req.state().clone();
    let token = bearer(&req).or_else(|| {
        req.url()
            .query_pairs()
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into_owned())
    });
    let token = match token {
        Some(token) => engine.authenticate(&token).await,
        None => Err(Error::Unauthorized(
            "a token is required: Authorization: Bearer <token> or ?token=".into(),
        )),
    };
    let token = match token {
        Ok(token) => token,
        Err(error) => {
            engine.metrics().count_error(error.code());
            return Ok(error_response(&error));
        }
    };
    let wants_upgrade =
        header_has(&req, "Connection", "upgrade") && header_has(&req, "Upgrade", "websocket");
    let key = req
        .header("Sec-WebSocket-Key")
        .map(|k| k.last().as_str().to_owned());
    let (true, Some(key)) = (wants_upgrade, key) else {
        let mut response =
            error_response(&Error::BadRequest("expected a WebSocket upgrade".into()));
        response.set_status(StatusCode::UpgradeRequired);
        response.insert_header("Upgrade", "websocket");
        return Ok(response);
    };
    let (connection, queues) = match engine.connect(&token) {
        Ok(registered) => registered,
        Err(error) => return Ok(error_response(&error)),
    };
    let mut response = Response::new(StatusCode::SwitchingProtocols);
    response.insert_header("Upgrade", "websocket");
    response.insert_header("Connection", "Upgrade");
    response.insert_header("Sec-WebSocket-Accept", derive_accept_key(key.as_bytes()));
    let http_response: &mut tide::http::Response = response.as_mut();
    let upgraded = http_response.recv_upgrade().await;
    smol::spawn(async move {
        match upgraded.await {
            Some(socket) => crate::ws::serve(engine, connection, queues, socket).await,
            None => engine.disconnect(&connection),
        }
    })
    .detach();
    Ok(response)
}

fn header_has(req: &Req, name: &str, token: &str) -> bool {
    req.header(name).is_some_and(|values| {
        values.iter().any(|v| {
            v.as_str()
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}
