//! Test harness: an in-process server (`TestServer`), a subprocess server (`Process`), a REST
//! helper and a blocking WebSocket client, all written only from PROTOCOL.md.
#![allow(dead_code)]

pub mod receiver;
pub mod redis_server;
pub mod room_script;
pub mod tmpfs;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Whether `probe` (a command that succeeds when `tool` is installed) succeeds. Outside CI a
/// missing tool skips the test with a message; under `CI=true` it fails it, because
/// `.ci/run` installs every tool the tests need.
pub fn tool_available(test: &str, tool: &str, mut probe: Command) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing, and CI=true: {test} cannot be skipped"
        );
        eprintln!("skipping {test}: {tool} is not installed (see .ci/run)");
    }
    found
}

/// Timeout for a frame the test expects to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched.
pub const SILENCE: Duration = Duration::from_millis(300);

pub const TEST_JWT_SECRET: &str = "integration-test-jwt-secret";
pub const TEST_API_KEY: &str = "integration-test-api-key";

/// Where `.ci/run` installs the npm packages the tests use, unless NODE_PATH says otherwise.
pub fn node_path() -> PathBuf {
    std::env::var_os("NODE_PATH").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/chat-engine-ci/node/node_modules")
        },
        PathBuf::from,
    )
}

// ---------------------------------------------------------------------------------------------
// Endpoint: what a client needs to talk to one server (address, secrets).
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub jwt_secret: String,
    pub api_key: String,
    agent: ureq::Agent,
}

/// An HTTP agent that reports 4xx/5xx as responses. It opens a fresh connection per request:
/// keep-alive reuse is tested on its own (rest.rs, `keep_alive_survives_early_error_replies`),
/// so that one server bug there does not make every REST test flaky.
pub fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build();
    ureq::Agent::new_with_config(config)
}

/// Parses a response body: empty is `Null`, JSON is parsed, anything else is a JSON string.
fn parse_body(text: &str) -> Value {
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

impl Endpoint {
    /// The history epoch `room`'s Room object names.
    pub fn epoch(&self, room: &str) -> String {
        let (status, body) = self.rest("GET", &format!("/v1/rooms/{room}"), None);
        assert_eq!(status, 200, "GET /v1/rooms/{room}: {body}");
        body["epoch"]
            .as_str()
            .expect("a Room has an epoch")
            .to_owned()
    }

    pub fn new(addr: SocketAddr, jwt_secret: &str, api_key: &str) -> Self {
        Endpoint {
            addr,
            jwt_secret: jwt_secret.to_owned(),
            api_key: api_key.to_owned(),
            agent: agent(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A REST call with the API key. `body` is sent as JSON when given.
    #[track_caller]
    pub fn rest(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.api_key);
        let body = body.map(|b| b.to_string());
        self.rest_raw(method, path, Some(&auth), body.as_deref())
    }

    /// A REST call with an explicit `Authorization` header (or none) and a raw body.
    #[track_caller]
    pub fn rest_raw(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, text) = self.rest_text(method, path, authorization, body);
        (status, parse_body(&text))
    }

    /// Like `rest_raw`, returning the body as text.
    #[track_caller]
    pub fn rest_text(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(auth) = authorization {
            builder = builder.header("Authorization", auth);
        }
        let result = match body {
            Some(body) => self.agent.run(
                builder
                    .header("Content-Type", "application/json")
                    .body(body.to_owned())
                    .unwrap(),
            ),
            None => self.agent.run(builder.body(()).unwrap()),
        };
        let mut response =
            result.unwrap_or_else(|e| panic!("{method} {path}: HTTP request failed: {e}"));
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: reading body failed: {e}"));
        (status, text)
    }

    /// Creates a route room owned by `owner`, asserting 201.
    #[track_caller]
    pub fn create_room(&self, room: &str, owner: &str) -> Value {
        let (status, body) = self.rest(
            "PUT",
            &format!("/v1/rooms/{room}"),
            Some(json!({ "owner_id": owner })),
        );
        assert_eq!(status, 201, "PUT /v1/rooms/{room}: {body}");
        body
    }

    /// Joins `user` to `room`, asserting 201.
    #[track_caller]
    pub fn add_member(&self, room: &str, user: &str) {
        let (status, body) = self.rest("PUT", &format!("/v1/rooms/{room}/members/{user}"), None);
        assert_eq!(status, 201, "PUT member {user} into {room}: {body}");
    }

    /// Removes `user` from `room`, asserting 204.
    #[track_caller]
    pub fn remove_member(&self, room: &str, user: &str) {
        let (status, body) = self.rest("DELETE", &format!("/v1/rooms/{room}/members/{user}"), None);
        assert_eq!(status, 204, "DELETE member {user} from {room}: {body}");
    }

    /// Posts a system message, asserting 201; returns the message object.
    #[track_caller]
    pub fn post_message(&self, room: &str, body: Value) -> Value {
        let (status, reply) = self.rest("POST", &format!("/v1/rooms/{room}/messages"), Some(body));
        assert_eq!(status, 201, "POST message into {room}: {reply}");
        reply["message"].clone()
    }

    /// An app token for `user`, valid for an hour.
    /// Posts `per_thread` messages to `room` from each of `threads` threads over REST,
    /// asserting 201 for each; `text(thread, i)` is the text, and `{tag}{thread}-{i}` the
    /// `client_msg_id`.
    pub fn post_in_parallel(
        &self,
        room: &str,
        tag: &str,
        threads: usize,
        per_thread: usize,
        text: impl Fn(usize, usize) -> String + Send + Sync + 'static,
    ) {
        let text = Arc::new(text);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (endpoint, text) = (self.clone(), text.clone());
                let path = format!("/v1/rooms/{room}/messages");
                let tag = format!("{tag}{t}");
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let id = format!("{tag}-{i}");
                        let body = json!({"text": text(t, i), "client_msg_id": id});
                        let (status, reply) = endpoint.rest("POST", &path, Some(body));
                        let reply: String = reply.to_string().chars().take(300).collect();
                        assert_eq!(status, 201, "{id}: {reply}");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("poster thread");
        }
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, text) = self.rest_text("GET", "/metrics", None, None);
        assert_eq!(status, 200, "/metrics: {text}");
        text
    }

    /// One series of `/metrics` (name with its labels, as printed), or 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    pub fn token(&self, user: &str) -> String {
        token_with_secret(&self.jwt_secret, user)
    }

    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/v1/ws?token={}", self.addr, t),
            None => format!("ws://{}/v1/ws", self.addr),
        }
    }

    /// Connects `user` with a token in the query string; panics when refused.
    #[track_caller]
    pub fn ws(&self, user: &str) -> Client {
        let token = self.token(user);
        match Client::connect(self.addr, &self.ws_url(Some(&token)), None) {
            Ok(mut c) => {
                c.user = user.to_owned();
                c
            }
            Err(e) => panic!("WebSocket connect for {user} failed: {e:?}"),
        }
    }

    /// Connects `user` with a token in the query string; returns the HTTP status when refused.
    pub fn try_ws(&self, user: &str) -> Result<Client, ConnectError> {
        let token = self.token(user);
        self.try_ws_token(&token).map(|mut c| {
            c.user = user.to_owned();
            c
        })
    }

    /// Connects with `token`; returns the HTTP status when refused.
    pub fn try_ws_token(&self, token: &str) -> Result<Client, ConnectError> {
        Client::connect(self.addr, &self.ws_url(Some(token)), None)
    }

    /// An HS256 token with `claims`, signed with this server's secret.
    pub fn token_with(&self, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).expect("sign")
    }
}

/// The value of `series` in a Prometheus text exposition, or 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad metric line for {series}: {value}"))
        })
}

pub fn token_with_secret(secret: &str, user: &str) -> String {
    let user = chat_engine::protocol::UserId::parse(user).expect("valid user id");
    let auth = chat_engine::config::AuthConfig {
        jwt_secret: secret.into(),
        ..Default::default()
    };
    chat_engine::auth::issue_token(&auth, &user, Duration::from_secs(3600)).expect("issue token")
}

// ---------------------------------------------------------------------------------------------
// In-process server.
// ---------------------------------------------------------------------------------------------

pub struct TestServer {
    endpoint: Endpoint,
    pub config: chat_engine::Config,
    stop: Option<async_channel::Sender<()>>,
    done: Option<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
    pub dir: tempfile::TempDir,
    /// In cluster mode ([`cluster_mode`]), the Redis this server is a node on.
    redis: Option<redis_server::RedisServer>,
}

/// Whether the in-process servers run as cluster nodes, each on a Redis of its own:
/// `CHAT_ENGINE_TEST_CLUSTER=1 cargo test --all-features` runs the protocol's tests in
/// cluster mode.
pub fn cluster_mode() -> bool {
    let on = std::env::var("CHAT_ENGINE_TEST_CLUSTER").is_ok_and(|v| v == "1");
    assert!(
        !on || cfg!(feature = "redis"),
        "CHAT_ENGINE_TEST_CLUSTER=1 needs the redis feature (cargo test --all-features)"
    );
    on
}

impl Deref for TestServer {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(configure: impl FnOnce(&mut chat_engine::Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = chat_engine::Config::default();
        config.storage.path = dir.path().join("data");
        config.auth.jwt_secret = TEST_JWT_SECRET.to_owned();
        config.auth.api_keys = vec![TEST_API_KEY.to_owned()];
        let redis = cluster_mode().then(redis_server::RedisServer::start);
        if let Some(redis) = &redis {
            config.cluster.redis_url = Some(redis.url());
            config.cluster.shards = 4;
        }
        configure(&mut config);
        Self::launch(config, dir, redis)
    }

    /// Stops the server and starts it again with the same config and data (and in cluster
    /// mode on the same Redis), on a new port.
    pub fn restart(mut self) -> TestServer {
        self.shutdown();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Self::launch(self.config.clone(), dir, self.redis.take())
    }

    fn launch(
        mut config: chat_engine::Config,
        dir: tempfile::TempDir,
        redis: Option<redis_server::RedisServer>,
    ) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        config.server.listen = addr.to_string();
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let (done_tx, done_rx) = mpsc::channel();
        let run_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("chat-engine-server".into())
            .spawn(move || {
                let result = smol::block_on(chat_engine::run(listener, run_config, async move {
                    let _ = stop_rx.recv().await;
                }));
                let _ = done_tx.send(());
                if let Err(e) = result {
                    panic!("chat_engine::run failed: {e}");
                }
            })
            .expect("spawn server thread");
        let endpoint = Endpoint::new(addr, &config.auth.jwt_secret, &config.auth.api_keys[0]);
        let server = TestServer {
            endpoint,
            config,
            stop: Some(stop_tx),
            done: Some(done_rx),
            thread: Some(thread),
            dir,
            redis,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(done) = &self.done {
                if done.try_recv().is_ok() {
                    panic!("server stopped during start-up");
                }
            }
            // A cluster node serves once it has found Redis and read the logs.
            let probe = if self.redis.is_some() {
                "/readyz"
            } else {
                "/healthz"
            };
            let ok = self
                .endpoint
                .agent
                .get(self.url(probe))
                .call()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not answer {probe} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server and waits for `run` to return.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.try_send(());
            stop.close();
        }
        if let Some(done) = self.done.take() {
            let finished = done.recv_timeout(Duration::from_secs(20));
            if finished.is_err() && !std::thread::panicking() {
                panic!("server did not stop within 20 s of the shutdown signal");
            }
        }
        if let Some(thread) = self.thread.take() {
            if thread.is_finished() || !std::thread::panicking() {
                let joined = thread.join();
                if joined.is_err() && !std::thread::panicking() {
                    panic!("server thread panicked");
                }
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade request with this HTTP status.
    Http(u16),
    Other(String),
}

/// What one read from the socket produced.
#[derive(Debug)]
pub enum Incoming {
    Frame(Value),
    /// A close frame with its code (None: closed without a close frame or without a code).
    Closed(Option<u16>),
    Timeout,
}

pub struct Client {
    ws: WebSocket<TcpStream>,
    pub user: String,
    /// Frames read while looking for something else, oldest first.
    buffer: VecDeque<Value>,
    next_id: u64,
    closed: bool,
    /// Why the connection ended without a close frame, for diagnostics.
    pub end_reason: Option<String>,
    /// Every frame read from the socket, once [`Client::record`] turned it on.
    recorded: Option<Vec<Value>>,
}

impl Client {
    pub fn connect(
        addr: SocketAddr,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<Client, ConnectError> {
        let stream = TcpStream::connect(addr).map_err(|e| ConnectError::Other(e.to_string()))?;
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tungstenite::client::client(request, stream) {
            Ok((ws, _response)) => Ok(Client {
                ws,
                user: String::new(),
                buffer: VecDeque::new(),
                next_id: 0,
                closed: false,
                end_reason: None,
                recorded: None,
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(ConnectError::Http(response.status().as_u16()))
            }
            Err(e) => Err(ConnectError::Other(e.to_string())),
        }
    }

    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .unwrap_or_else(|e| panic!("{}: sending a frame failed: {e}", self.user));
    }

    /// Sends a text frame; returns false when the connection is gone instead of panicking.
    pub fn try_send_json(&mut self, frame: &Value) -> bool {
        self.try_send(Message::text(frame.to_string()))
    }

    /// Sends any frame; returns false when the connection is gone instead of panicking.
    pub fn try_send(&mut self, message: Message) -> bool {
        match self.ws.send(message) {
            Ok(()) => true,
            Err(e) => {
                self.end_reason = Some(format!("send: {e}"));
                false
            }
        }
    }

    #[track_caller]
    pub fn send_json(&mut self, frame: &Value) {
        self.send_text(&frame.to_string());
    }

    pub fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .unwrap_or_else(|e| panic!("{}: sending a binary frame failed: {e}", self.user));
    }

    /// Reads one thing from the socket (not from the buffer), waiting at most `timeout`.
    pub fn read_socket(&mut self, timeout: Duration) -> Incoming {
        if self.closed {
            return Incoming::Closed(None);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Incoming::Timeout;
            }
            self.ws
                .get_mut()
                .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))
                .unwrap();
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!(
                            "{}: server sent a non-JSON text frame ({e}): {text}",
                            self.user
                        )
                    });
                    if let Some(recorded) = &mut self.recorded {
                        recorded.push(value.clone());
                    }
                    return Incoming::Frame(value);
                }
                Ok(Message::Close(frame)) => {
                    self.closed = true;
                    return Incoming::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Message::Binary(b)) => {
                    panic!(
                        "{}: server sent a binary frame ({} bytes)",
                        self.user,
                        b.len()
                    )
                }
                Ok(_) => continue, // ping/pong/raw frames
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    self.closed = true;
                    self.end_reason = Some(e.to_string());
                    return Incoming::Closed(None);
                }
            }
        }
    }

    /// The next frame (buffered first), waiting at most `timeout`.
    #[track_caller]
    pub fn try_recv_json(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.buffer.pop_front() {
            return Some(v);
        }
        match self.read_socket(timeout) {
            Incoming::Frame(v) => Some(v),
            Incoming::Timeout => None,
            Incoming::Closed(code) => {
                panic!(
                    "{}: connection closed (code {code:?}) while waiting for a frame",
                    self.user
                )
            }
        }
    }

    /// The next frame; panics after RECV_TIMEOUT.
    #[track_caller]
    pub fn recv_json(&mut self) -> Value {
        match self.try_recv_json(RECV_TIMEOUT) {
            Some(v) => v,
            None => panic!(
                "{}: no frame within {:?} (buffered: {:?})",
                self.user, RECV_TIMEOUT, self.buffer
            ),
        }
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-q{}", self.user, self.next_id)
    }

    /// Sends `frame` with a fresh string `id` (unless it has one) and returns the frame that
    /// carries that id, buffering the pushes that arrive before it.
    #[track_caller]
    pub fn request(&mut self, mut frame: Value) -> Value {
        if frame.get("id").is_none() {
            let id = self.fresh_id();
            frame["id"] = json!(id);
        }
        let id = frame["id"].clone();
        self.send_json(&frame);
        self.wait_reply(&id)
    }

    /// Reads until the frame whose `id` equals `id`, buffering others.
    #[track_caller]
    pub fn wait_reply(&mut self, id: &Value) -> Value {
        if let Some(pos) = self.buffer.iter().position(|f| f.get("id") == Some(id)) {
            return self.buffer.remove(pos).unwrap();
        }
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.read_socket(remaining) {
                Incoming::Frame(v) if v.get("id") == Some(id) => return v,
                Incoming::Frame(v) => self.buffer.push_back(v),
                Incoming::Timeout => panic!(
                    "{}: no reply with id {id} within {RECV_TIMEOUT:?} (buffered: {:?})",
                    self.user, self.buffer
                ),
                Incoming::Closed(code) => panic!(
                    "{}: connection closed (code {code:?}) while waiting for reply {id}",
                    self.user
                ),
            }
        }
    }

    /// A request whose reply must have type `reply_type`; returns the reply.
    #[track_caller]
    pub fn request_ok(&mut self, frame: Value, reply_type: &str) -> Value {
        let reply = self.request(frame.clone());
        assert_eq!(
            reply["type"], reply_type,
            "{}: request {frame} got {reply}",
            self.user
        );
        reply
    }

    /// A request that must fail with an `error` frame of `code`; returns the error frame.
    #[track_caller]
    pub fn request_err(&mut self, frame: Value, code: &str) -> Value {
        let reply = self.request(frame.clone());
        assert_eq!(
            reply["type"], "error",
            "{}: request {frame} should fail with {code}, got {reply}",
            self.user
        );
        assert_eq!(
            reply["code"], code,
            "{}: request {frame} got {reply}",
            self.user
        );
        assert!(
            reply["message"].is_string(),
            "error frame without a message string: {reply}"
        );
        reply
    }

    /// The next push of type `ty` (searching the buffer first), buffering other frames.
    #[track_caller]
    pub fn expect_push(&mut self, ty: &str) -> Value {
        match self.try_push(ty, RECV_TIMEOUT) {
            Some(v) => v,
            None => panic!(
                "{}: no `{ty}` push within {RECV_TIMEOUT:?} (buffered: {:?})",
                self.user, self.buffer
            ),
        }
    }

    #[track_caller]
    pub fn try_push(&mut self, ty: &str, timeout: Duration) -> Option<Value> {
        if let Some(pos) = self.buffer.iter().position(|f| f["type"] == ty) {
            return self.buffer.remove(pos);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.read_socket(remaining) {
                Incoming::Frame(v) if v["type"] == ty => return Some(v),
                Incoming::Frame(v) => self.buffer.push_back(v),
                Incoming::Timeout => return None,
                Incoming::Closed(code) => panic!(
                    "{}: connection closed (code {code:?}) while waiting for a `{ty}` push",
                    self.user
                ),
            }
        }
    }

    /// Asserts that no `ty` frame is buffered or arrives within `duration`.
    #[track_caller]
    pub fn expect_no(&mut self, ty: &str, duration: Duration) {
        if let Some(v) = self.try_push(ty, duration) {
            panic!("{}: unexpected `{ty}` frame: {v}", self.user);
        }
    }

    /// Asserts that nothing is buffered and nothing arrives within `duration`.
    #[track_caller]
    pub fn expect_silence(&mut self, duration: Duration) {
        if let Some(v) = self.buffer.pop_front() {
            panic!(
                "{}: expected silence, but had a frame buffered: {v}",
                self.user
            );
        }
        match self.read_socket(duration) {
            Incoming::Timeout => {}
            Incoming::Frame(v) => panic!("{}: expected silence, got {v}", self.user),
            Incoming::Closed(code) => {
                panic!(
                    "{}: expected silence, connection closed ({code:?})",
                    self.user
                )
            }
        }
    }

    /// Reads (and discards) frames until the server's close frame; returns its code.
    /// Panics if the connection stays open for `timeout`.
    #[track_caller]
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.read_socket(remaining) {
                Incoming::Frame(v) => self.buffer.push_back(v),
                Incoming::Closed(code) => return code,
                Incoming::Timeout => panic!(
                    "{}: connection still open after {timeout:?} (buffered: {:?})",
                    self.user, self.buffer
                ),
            }
        }
    }

    /// From now on, keeps every frame the server sends (see [`Client::recorded`]).
    pub fn record(&mut self) {
        self.recorded.get_or_insert_with(Vec::new);
    }

    /// Every frame the server sent since [`Client::record`], in order, whoever consumed it.
    pub fn recorded(&self) -> &[Value] {
        self.recorded.as_deref().unwrap_or_default()
    }

    /// Frames buffered so far (taken).
    pub fn take_buffer(&mut self) -> Vec<Value> {
        self.buffer.drain(..).collect()
    }

    /// Drops buffered frames of type `ty`.
    pub fn discard(&mut self, ty: &str) {
        self.buffer.retain(|f| f["type"] != ty);
    }

    /// Closes the connection politely (best effort).
    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }));
        let _ = self.ws.flush();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Incoming::Closed(_) = self.read_socket(Duration::from_millis(200)) {
                break;
            }
        }
    }

    /// Convenience: the `rooms` reply's room list.
    #[track_caller]
    pub fn rooms(&mut self) -> Vec<Value> {
        let reply = self.request_ok(json!({"type": "rooms"}), "rooms");
        reply["rooms"].as_array().expect("rooms array").clone()
    }

    /// Convenience: one `send`, asserting `sent`; returns the reply.
    #[track_caller]
    pub fn send_msg(&mut self, room: &str, text: &str) -> Value {
        let reply = self.request_ok(
            json!({"type": "send", "room_id": room, "text": text}),
            "sent",
        );
        assert_eq!(reply["room_id"], room);
        reply
    }

    /// Convenience: one `sync`, asserting `messages`; returns the reply.
    #[track_caller]
    pub fn sync(&mut self, query: Value) -> Value {
        let mut frame = query;
        frame["type"] = json!("sync");
        let room = frame["room_id"].clone();
        let reply = self.request_ok(frame, "messages");
        assert_eq!(reply["room_id"], room, "sync reply room_id");
        assert!(reply["messages"].is_array(), "messages array: {reply}");
        assert!(reply["has_more"].is_boolean(), "has_more bool: {reply}");
        reply
    }

    /// Pages with `since_seq` from `from` to the end; returns every message.
    #[track_caller]
    pub fn sync_all_since_seq(&mut self, room: &str, from: u64, limit: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = from;
        loop {
            let reply = self.sync(json!({"room_id": room, "since_seq": cursor, "limit": limit}));
            let page = reply["messages"].as_array().unwrap().clone();
            assert!(page.len() as u64 <= limit, "page larger than limit");
            if let Some(last) = page.last() {
                cursor = last["seq"].as_u64().unwrap();
            }
            let more = reply["has_more"].as_bool().unwrap();
            out.extend(page.iter().cloned());
            if !more {
                break;
            }
            assert!(!page.is_empty(), "has_more with an empty page");
        }
        out
    }
}

/// Finds the room with `room_id` in a room list.
pub fn find_room<'a>(rooms: &'a [Value], room_id: &str) -> Option<&'a Value> {
    rooms.iter().find(|r| r["room_id"] == room_id)
}

/// Sorted member list of a Room object.
pub fn members(room: &Value) -> Vec<String> {
    let mut m: Vec<String> = room["members"]
        .as_array()
        .unwrap_or_else(|| panic!("room without members array: {room}"))
        .iter()
        .map(|v| v.as_str().expect("member id string").to_owned())
        .collect();
    m.sort();
    m
}

pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

pub fn seqs_of(reply: &Value) -> Vec<u64> {
    seqs(reply["messages"].as_array().expect("messages array"))
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

// ---------------------------------------------------------------------------------------------
// Subprocess server.
// ---------------------------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chat-engine")
}

/// A config file with the test secrets and the given extra TOML (sections appended).
pub fn config_toml(extra: &str) -> String {
    format!(
        "[auth]\njwt_secret = \"{TEST_JWT_SECRET}\"\napi_keys = [\"{TEST_API_KEY}\"]\n{extra}\n"
    )
}

pub struct Process {
    endpoint: Endpoint,
    child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl Deref for Process {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Process {
    /// Spawns `chat-engine serve --listen 127.0.0.1:0 --data DIR --config FILE` and waits for
    /// its "listening on" line. `config_toml` must set `[auth]` to the test secrets
    /// (see `config_toml`).
    pub fn start(data_dir: &Path, config_toml: &str) -> Process {
        Self::start_with_env(data_dir, config_toml, &[])
    }

    /// [`Process::start`] with extra environment variables.
    pub fn start_with_env(data_dir: &Path, config_toml: &str, env: &[(&str, &str)]) -> Process {
        let config_dir = tempfile::tempdir().unwrap();
        let config_path = config_dir.path().join("chat-engine.toml");
        std::fs::write(&config_path, config_toml).unwrap();
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data_dir)
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chat-engine");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(pos) = line.find("listening on ") {
                        let rest = &line[pos + "listening on ".len()..];
                        let addr_text: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')')
                            .collect();
                        let addr_text = addr_text.trim_start_matches("http://");
                        break addr_text
                            .parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "chat-engine did not log `listening on` within 30 s; stderr: {:?}",
                        lines.lock().unwrap()
                    );
                }
            }
        };
        Process {
            endpoint: Endpoint::new(addr, TEST_JWT_SECRET, TEST_API_KEY),
            child,
            stderr: lines,
            config_path,
            _config_dir: config_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill_9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL failed");
    }

    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait(&mut self) -> ExitStatus {
        match self.wait_timeout(Duration::from_secs(30)) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                panic!("chat-engine did not exit within 30 s");
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary with `args`, waiting at most `timeout`; returns (status, stdout, stderr).
pub fn run_bin(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat-engine");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chat-engine {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}
