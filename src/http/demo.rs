//! `/demo`: a small web chat client (plain HTML, CSS and JS compiled into the binary) for
//! trying chat-engine in a browser, and, in development mode only, a token minter for it.
//!
//! Development mode is the built-in development JWT secret: anyone who knows it can mint
//! tokens anyway, so minting them for the page gives nothing away. With a real secret the
//! page asks for a pasted token and `/demo/token` answers 404.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tide::{Response, Server, StatusCode};

use super::{error_response, json, Req, Resource};
use crate::engine::Engine;
use crate::error::Error;
use crate::protocol::UserId;

const INDEX: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/demo.js");
const STYLE: &str = include_str!("demo/demo.css");
/// How long a minted demo token lasts.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

pub fn routes(app: &mut Server<Engine>) {
    Resource::new("/demo")
        .get(|_| asset(INDEX, "text/html; charset=utf-8"))
        .serve(app);
    Resource::new("/demo/demo.js")
        .counted_as("/demo")
        .get(|_| asset(SCRIPT, "text/javascript; charset=utf-8"))
        .serve(app);
    Resource::new("/demo/demo.css")
        .counted_as("/demo")
        .get(|_| asset(STYLE, "text/css; charset=utf-8"))
        .serve(app);
    Resource::new("/demo/config").get(config).serve(app);
    Resource::new("/demo/token").post(token).serve(app);
}

async fn asset(body: &'static str, content_type: &'static str) -> tide::Result {
    let mut response = Response::new(StatusCode::Ok);
    response.set_body(body);
    response.insert_header("Content-Type", content_type);
    Ok(response)
}

fn dev_mode(engine: &Engine) -> bool {
    engine
        .config()
        .development_secrets()
        .contains(&"auth.jwt_secret")
}

#[derive(Serialize)]
struct DemoConfig {
    dev_mode: bool,
}

async fn config(req: Req) -> tide::Result {
    Ok(json(
        StatusCode::Ok,
        &DemoConfig {
            dev_mode: dev_mode(req.state()),
        },
    ))
}

#[derive(Deserialize)]
struct TokenRequest {
    user_id: UserId,
    /// Seconds the token lasts, at most [`TOKEN_TTL`] (a short one shows the page
    /// refreshing it).
    ttl_s: Option<u64>,
}

#[derive(Serialize)]
struct TokenReply {
    token: String,
}

async fn token(mut req: Req) -> tide::Result {
    if !dev_mode(req.state()) {
        return Ok(error_response(&Error::NotFound(
            "tokens are minted here only on the development secret".into(),
        )));
    }
    let minted = match super::rest::body_json::<TokenRequest>(&mut req).await {
        Ok(body) => {
            let auth = &req.state().config().auth;
            let ttl = body
                .ttl_s
                .map_or(TOKEN_TTL, |s| Duration::from_secs(s).min(TOKEN_TTL));
            crate::auth::issue_token(auth, &body.user_id, ttl)
                .map_err(|e| Error::Internal(format!("cannot sign a token: {e}")))
        }
        Err(error) => Err(error),
    };
    Ok(match minted {
        Ok(token) => json(StatusCode::Ok, &TokenReply { token }),
        Err(error) => error_response(&error),
    })
}
