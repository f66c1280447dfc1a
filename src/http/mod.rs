//! The HTTP edge (tide): routes, API-key auth, body limits, error bodies, operations
//! endpoints, and the WebSocket upgrade that hands the socket to [`crate::ws`].
//!
//! tide (and through it async-std) stays inside this module, so it can be replaced without
//! touching the engine.

mod demo;
pub mod docs;
mod rest;
mod upgrade;

use std::sync::Arc;

use serde::Serialize;
use tide::{Endpoint, Request, Response, StatusCode};

use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::{HttpLabels, CONTENT_TYPE};

type Req = Request<Engine>;

/// Serves HTTP and WebSocket on `listener` until the returned future is dropped.
pub async fn serve(listener: std::net::TcpListener, engine: Engine) -> std::io::Result<()> {
    // Accepted sockets inherit this on Linux. Without it Nagle's algorithm holds a small push
    // back until the client's delayed ACK, about 40 ms per message.
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    let mut app = tide::with_state(engine);
    app.at("/healthz").get(counted("/healthz", healthz));
    app.at("/readyz").get(counted("/readyz", readyz));
    app.at("/metrics").get(counted("/metrics", metrics));
    app.at("/openapi.json")
        .get(counted("/openapi.json", docs::openapi));
    app.at("/docs").get(counted("/docs", docs::swagger_ui));
    app.at("/docs/").get(counted("/docs", docs::swagger_ui));
    app.at("/docs/*").get(counted("/docs", docs::swagger_ui));
    app.at("/v1/ws").get(counted("/v1/ws", upgrade::websocket));
    demo::routes(&mut app);
    rest::routes(&mut app);
    app.listen(listener).await
}

/// Wraps an endpoint so its requests are counted by route pattern, method and status.
fn counted(route: &'static str, endpoint: impl Endpoint<Engine>) -> impl Endpoint<Engine> {
    let endpoint = Arc::new(endpoint);
    move |req: Req| {
        let endpoint = endpoint.clone();
        async move {
            let method = req.method().to_string();
            let engine = req.state().clone();
            let response = endpoint.call(req).await?;
            let labels = HttpLabels {
                method,
                route,
                status: response.status().into(),
            };
            engine.metrics().http_requests.get_or_create(&labels).inc();
            Ok(response)
        }
    }
}

/// 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Running", body = Status))
)]
async fn healthz(_req: Req) -> tide::Result {
    Ok(json(StatusCode::Ok, &Status { status: "ok" }))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics(req: Req) -> tide::Result {
    let mut response = Response::new(StatusCode::Ok);
    response.set_body(req.state().metrics().encode());
    response.insert_header("Content-Type", CONTENT_TYPE);
    Ok(response)
}

#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    status: &'static str,
}

/// 200 when storage takes writes and, in cluster mode, Redis is reachable and this node
/// has caught up; else 503.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready", body = Status)
    )
)]
async fn readyz(req: Req) -> tide::Result {
    Ok(if req.state().is_ready() {
        json(StatusCode::Ok, &Status { status: "ready" })
    } else {
        json(
            StatusCode::ServiceUnavailable,
            &Status {
                status: "not ready",
            },
        )
    })
}

/// A JSON response.
fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let mut response = Response::new(status);
    match serde_json::to_string(body) {
        Ok(text) => {
            response.set_body(text);
            response.set_content_type(tide::http::mime::JSON);
        }
        Err(e) => {
            log::error!("cannot encode response body: {e}");
            response.set_status(StatusCode::InternalServerError);
        }
    }
    response
}

/// Every error's body (PROTOCOL.md, "Error codes").
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_member`, `not_found`, `conflict`,
    /// `too_large`, `rate_limited`, `unavailable` or `internal`.
    code: &'static str,
    message: String,
}

/// The protocol's error body, with the status the protocol gives the error.
///
/// It also closes the connection: an error may be answered before the request body was read,
/// and a client that sends the body after the reply would otherwise lose its next request on
/// the kept-alive connection.
fn error_response(error: &Error) -> Response {
    let status =
        StatusCode::try_from(error.http_status()).unwrap_or(StatusCode::InternalServerError);
    let body = ErrorBody {
        code: error.code(),
        message: error.to_string(),
    };
    let mut response = json(status, &body);
    response.insert_header("Connection", "close");
    response
}

/// The bearer token of a request, if it has one.
fn bearer(req: &Req) -> Option<String> {
    let value = req.header("Authorization")?.last().as_str().trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}
