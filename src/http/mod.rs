//! The HTTP edge (tide): routes (with the `Allow` answers of RFC 9110 for the methods a path
//! lacks), API-key auth, body limits, error bodies, operations endpoints, and the WebSocket
//! upgrade that hands the socket to [`crate::ws`].
//!
//! tide stays inside this module, so it can be replaced without touching the engine. Its
//! listener is not used: connections are accepted here and served on smol's executor, the
//! one the WebSocket connections and the engine run on, rather than on async-std's own
//! threads, which on a small machine share the core and hand every wake-up across.

pub mod asyncapi;
mod demo;
pub mod docs;
mod rest;
mod schemas;
mod upgrade;

use std::sync::Arc;

use serde::Serialize;
use tide::http::Method;
use tide::{Endpoint, Request, Response, Server, StatusCode};

use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::{HttpLabels, CLASSIC_CONTENT_TYPE, CONTENT_TYPE};

type Req = Request<Engine>;

/// Serves HTTP and WebSocket on `listener` until the returned future is dropped.
pub async fn serve(listener: std::net::TcpListener, engine: Engine) -> std::io::Result<()> {
    // Accepted sockets inherit this on Linux. Without it Nagle's algorithm holds a small push
    // back until the client's delayed ACK, about 40 ms per message.
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    let mut app = tide::with_state(engine);
    Resource::new("/healthz").get(healthz).serve(&mut app);
    Resource::new("/readyz").get(readyz).serve(&mut app);
    Resource::new("/metrics").get(metrics).serve(&mut app);
    Resource::new("/openapi.json")
        .get(docs::openapi)
        .serve(&mut app);
    Resource::new("/asyncapi.json")
        .get(docs::asyncapi)
        .serve(&mut app);
    for path in ["/docs", "/docs/", "/docs/*"] {
        Resource::new(path)
            .counted_as("/docs")
            .get(docs::swagger_ui)
            .serve(&mut app);
    }
    Resource::new("/v1/ws")
        .get(upgrade::websocket)
        .serve(&mut app);
    demo::routes(&mut app);
    rest::routes(&mut app);
    // Any other path gets the protocol's error body, not an empty 404.
    for path in ["/", "/*"] {
        app.at(path).all(|req: Req| async move {
            let path = req.url().path().to_owned();
            Ok(error_response(&Error::NotFound(format!(
                "no endpoint at {path}"
            ))))
        });
    }
    accept(app, listener).await
}

/// Accepts connections forever, each served by async-h1 (tide's HTTP/1.1) in a task of its
/// own. A client that goes away mid-request is its own business, so that is logged at debug.
async fn accept(app: Server<Engine>, listener: std::net::TcpListener) -> std::io::Result<()> {
    let listener = smol::net::TcpListener::try_from(listener)?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                // Out of file descriptors, say: pause rather than spin on the error.
                log::error!("cannot accept a connection: {e}; pausing 500 ms");
                smol::Timer::after(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let (app, local) = (app.clone(), stream.local_addr().ok());
        smol::spawn(async move {
            let served = async_h1::accept(stream, |mut req| async {
                req.set_peer_addr(Some(peer));
                req.set_local_addr(local);
                app.respond(req).await
            })
            .await;
            if let Err(e) = served {
                log::debug!("HTTP connection from {peer} ended: {e}");
            }
        })
        .detach();
    }
}

/// Accept errors that concern one connection only, not the listener.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The endpoints of one path, registered together so that the path answers the methods it
/// lacks as RFC 9110 asks: 405 with `Allow`, and OPTIONS with 204 and `Allow`. HEAD is served
/// by GET (the HTTP layer leaves the body out), as tide would do by itself.
struct Resource {
    path: &'static str,
    /// The route label of its requests in the metrics.
    label: &'static str,
    endpoints: Vec<(Method, Arc<dyn Endpoint<Engine>>)>,
}

impl Resource {
    fn new(path: &'static str) -> Self {
        Resource {
            path,
            label: path,
            endpoints: Vec::new(),
        }
    }

    /// Counts its requests under `label` instead of the path.
    fn counted_as(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    fn method(mut self, method: Method, endpoint: impl Endpoint<Engine>) -> Self {
        self.endpoints.push((method, Arc::new(endpoint)));
        self
    }

    fn get(self, endpoint: impl Endpoint<Engine>) -> Self {
        self.method(Method::Get, endpoint)
    }

    fn put(self, endpoint: impl Endpoint<Engine>) -> Self {
        self.method(Method::Put, endpoint)
    }

    fn post(self, endpoint: impl Endpoint<Engine>) -> Self {
        self.method(Method::Post, endpoint)
    }

    fn patch(self, endpoint: impl Endpoint<Engine>) -> Self {
        self.method(Method::Patch, endpoint)
    }

    fn delete(self, endpoint: impl Endpoint<Engine>) -> Self {
        self.method(Method::Delete, endpoint)
    }

    fn serve(self, app: &mut Server<Engine>) {
        let mut route = app.at(self.path);
        let mut allowed = Vec::new();
        for (method, endpoint) in self.endpoints {
            route.method(method, counted(self.label, shared(endpoint.clone())));
            allowed.push(method);
            if method == Method::Get {
                route.method(Method::Head, counted(self.label, shared(endpoint)));
                allowed.push(Method::Head);
            }
        }
        allowed.push(Method::Options);
        let allow: Arc<str> = allowed
            .iter()
            .map(Method::to_string)
            .collect::<Vec<_>>()
            .join(", ")
            .into();
        route.all(counted(self.label, move |req: Req| {
            let allow = allow.clone();
            async move {
                let mut response = match req.method() {
                    Method::Options => Response::new(StatusCode::NoContent),
                    // With the body every refusal has.
                    method => {
                        let why = format!("{method} is not allowed here; allowed: {allow}");
                        let mut refused = error_response(&Error::BadRequest(why));
                        refused.set_status(StatusCode::MethodNotAllowed);
                        refused
                    }
                };
                response.insert_header("Allow", &*allow);
                // The body was not read: as for errors, the next request on this connection
                // could be lost behind it.
                response.insert_header("Connection", "close");
                Ok(response)
            }
        }));
    }
}

/// An endpoint that several routes share.
fn shared(endpoint: Arc<dyn Endpoint<Engine>>) -> impl Endpoint<Engine> {
    move |req: Req| {
        let endpoint = endpoint.clone();
        async move { endpoint.call(req).await }
    }
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

/// Prometheus metrics: OpenMetrics text when the scraper accepts it (Prometheus does),
/// else the classic Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics", content(
        (String = "text/plain"),
        (String = "application/openmetrics-text")
    )))
)]
async fn metrics(req: Req) -> tide::Result {
    let metrics = req.state().metrics();
    let open = req
        .header("Accept")
        .is_some_and(|accept| accept.as_str().contains("application/openmetrics-text"));
    let mut response = Response::new(StatusCode::Ok);
    if open {
        response.set_body(metrics.encode());
        response.insert_header("Content-Type", CONTENT_TYPE);
    } else {
        response.set_body(metrics.encode_classic());
        response.insert_header("Content-Type", CLASSIC_CONTENT_TYPE);
    }
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
    #[schema(value_type = crate::error::ErrorCode)]
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
